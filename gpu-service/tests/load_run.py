"""Short load run against the real server (used by scripts/gpu_service_suite.sh; not a pytest file).

Builds a random-weight model folder (make_test_model, any preset), serves it on 127.0.0.1, opens N
concurrent streams and writes one JSON object: tokens/s, client-side time to first token, and
whether every stream delivered exactly its usage.completion_tokens ids (nothing lost or duplicated).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from service_fixtures import SECRET, ServerThread, chat, request_body, serve_config, split_frames  # noqa: E402

from lckv_service.testmodel import CORPUS, make_test_model  # noqa: E402


async def one_stream(session, url, body):
    t0 = time.monotonic()
    ttft, ids, done = None, [], None
    async with session.post(url + "/v1/internal/generate", data=body,
                            headers={"Authorization": f"Bearer {SECRET}"}) as r:
        if r.status != 200:
            return {"status": r.status}
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            if ttft is None and b'"type":"delta"' in buf:
                ttft = time.monotonic() - t0
    for kind, payload in split_frames(buf):
        if kind == b"J":
            ev = json.loads(payload)
            if ev["type"] == "delta":
                ids += ev["token_ids"]
            elif ev["type"] == "done":
                done = ev
    return {"status": 200, "ttft": ttft, "ids": len(ids), "done": done, "seconds": time.monotonic() - t0}


async def run(url, bodies):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        return await asyncio.gather(*(one_stream(s, url, b) for b in bodies))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--preset", default="tiny-test")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=40)
    ap.add_argument("--max-slots", type=int, default=64)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--prefill-mode", default="auto")
    ap.add_argument("--decode", choices=("fast", "reference"), default="fast",
                    help="the engine's decode step: FastDecode (Triton on CUDA) or model.decode")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        # the tiny model's wide init makes its outputs varied; a deep model wants the usual 0.02
        folder = make_test_model(Path(tmp) / "model", preset=a.preset,
                                 init_std=0.1 if a.preset == "tiny-test" else 0.02)
        build_s = time.monotonic() - t
        words = " ".join(CORPUS).split()
        bodies = []
        for i in range(a.streams):
            text = " ".join(words[(7 * i + j) % len(words)] for j in range(a.prompt_words + i % 16))
            bodies.append(request_body(chat([{"role": "user", "content": text}], max_tokens=a.max_tokens,
                                            request_id=f"load-{i}", return_blob=i % 2 == 0)))
        cfg = serve_config(folder, device=a.device, dtype=a.dtype, max_slots=a.max_slots,
                           max_waiting=max(64, a.streams), window=a.window, prefill_mode=a.prefill_mode,
                           max_tokens=max(512, a.max_tokens), max_prompt_tokens=None, max_batched_tokens=2048,
                           decode=a.decode)
        with ServerThread(cfg) as srv:
            asyncio.run(run(srv.url, bodies[:4]))   # warm up the prefill and decode paths
            t0 = time.monotonic()
            results = asyncio.run(run(srv.url, bodies))
            wall = time.monotonic() - t0
            slots = srv.service.sched_cfg.num_slots
    ok = [r for r in results if r["status"] == 200 and r["done"] is not None]
    exact = all(r["ids"] + (1 if r["done"]["finish_reason"] == "stop" and
                            r["ids"] < r["done"]["usage"]["completion_tokens"] else 0)
                == r["done"]["usage"]["completion_tokens"] for r in ok)
    gen = sum(r["done"]["usage"]["completion_tokens"] for r in ok)
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    report = {"preset": a.preset, "device": a.device, "dtype": a.dtype, "streams": a.streams, "slots": slots,
              "max_tokens": a.max_tokens, "prefill_mode": a.prefill_mode, "decode": a.decode, "model_build_s": round(build_s, 2),
              "completed": len(ok), "all_tokens_delivered_once": exact, "generated_tokens": gen,
              "wall_s": round(wall, 3), "tokens_per_s": round(gen / wall, 1),
              "ttft_p50_s": round(statistics.median(ttfts), 4) if ttfts else None,
              "ttft_p95_s": round(ttfts[int(0.95 * (len(ttfts) - 1))], 4) if ttfts else None}
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0 if len(ok) == a.streams and exact else 1


if __name__ == "__main__":
    sys.exit(main())
