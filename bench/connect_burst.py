"""How long a burst of new connections waits to reach the real server (issue 14: a burst's TTFT stragglers).

    .venv/bin/python bench/connect_burst.py --out bench/results/serving/cpu-connect-burst.jsonl

Starts `python -m lckv_service serve` (the demo model, CPU by default) once per listen backlog, and per burst
size opens that many connections at once, each sending GET /healthz, then reads its answer. A connect the
listen socket's accept queue has no room for is dropped by the kernel and retried by the client's TCP after
1 s (the initial SYN retransmit timeout), so the rows count the requests that took ≥ 0.9 s. Backlog 128 is
aiohttp's default, which the server used before `--listen-backlog`; the other row is the server's default.
One JSONL row per (backlog, burst size) over --repeats bursts: latency p50/p95/max, the requests over 0.9 s
and the bursts that had any.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gpu-service"))

from lckv_bench.common import BenchError, parse_ints  # noqa: E402
from lckv_bench.service import SERVICE_SRC, ServerProcess, free_port  # noqa: E402
from lckv_bench.suites.serving import pct  # noqa: E402

DEMO_MODEL = SERVICE_SRC / "models" / "lckv-tiny"


async def burst(url: str, n: int) -> list[float]:
    import aiohttp

    async def one(s) -> float:
        t = time.perf_counter()
        async with s.get(url + "/healthz") as r:
            await r.read()
        return time.perf_counter() - t

    # a new connection per request (force_close), none held back by the client (limit=0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as s:
        return await asyncio.gather(*(one(s) for _ in range(n)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEMO_MODEL))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bursts", default="256,1024", help="comma list of connections opened at once")
    ap.add_argument("--backlogs", default="128,default", help="comma list: numbers, or `default` (the server's)")
    ap.add_argument("--repeats", type=int, default=10, help="bursts per (backlog, size): whether the accept "
                    "queue overflows depends on how the client's connects and the server's accepts interleave")
    ap.add_argument("--out", default=None, help="JSONL file to append the rows to (default: print only)")
    a = ap.parse_args(argv)
    backlogs = [x.strip() for x in a.backlogs.split(",")]
    try:
        bursts = parse_ints(a.bursts, "bursts")
        parse_ints(",".join(x for x in backlogs if x != "default"), "backlogs")   # the numbers among them
    except BenchError as e:
        ap.error(str(e))
    if not bursts or not backlogs or a.repeats < 1:
        ap.error("--bursts and --backlogs must be non-empty and --repeats >= 1")
    rows = []
    for backlog in backlogs:
        flags = [] if backlog == "default" else ["--listen-backlog", backlog]
        log = Path(tempfile.gettempdir()) / "connect-burst-server.log"
        server = ServerProcess(Path(a.model), a.device, free_port(), flags, SERVICE_SRC, log)
        try:
            server.wait_ready(timeout=300)
            asyncio.run(burst(server.url, 8))   # warm the handler path
            for n in bursts:
                runs = [asyncio.run(burst(server.url, n)) for _ in range(a.repeats)]
                lat = [x for run in runs for x in run]
                rows.append({"suite": "connect_burst", "device": a.device, "host_cpus": os.cpu_count(),
                             "listen_backlog": backlog, "connections": n, "bursts": a.repeats,
                             "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95), "max_s": round(max(lat), 5),
                             "over_0_9_s": sum(x >= 0.9 for x in lat),
                             "bursts_with_a_retransmit": sum(max(run) >= 0.9 for run in runs),
                             "time_unix": round(time.time(), 1)})
                print(json.dumps(rows[-1]))
        finally:
            server.stop()
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
