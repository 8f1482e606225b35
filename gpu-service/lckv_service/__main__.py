"""`python -m lckv_service <subcommand> ...`

Subcommands live in SUBCOMMANDS as "module:function" (imported only when used); each function takes the
remaining argv and returns an exit code. Other parts register theirs by adding a line here, e.g.
"train": "lckv_service.train.train:main", "bench": "lckv_service.bench:main".
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

SUBCOMMANDS: dict[str, str] = {
    "serve": "lckv_service.__main__:serve",
    "make-test-model": "lckv_service.testmodel:main",
    "train": "lckv_service.train.train:main",
    "evaluate": "lckv_service.train.evaluate:main",
    "report": "lckv_service.train.report:main",
}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, for platforms that index structured logs."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextLogFormatter(logging.Formatter):
    """Plain lines; a record's structured fields (the access log's) follow as key=value."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        return line + "".join(f" {k}={v}" for k, v in fields.items()) if fields else line


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else TextLogFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lckv_service serve",
                                 description="Serve a model folder over the internal protocol. "
                                             "The shared secret comes from env GPU_SERVICE_SECRET.")
    ap.add_argument("--model", default=os.environ.get("MODEL_DIR", "/models/default"), help="model folder")
    ap.add_argument("--model-id", default=os.environ.get("MODEL_ID") or None,
                    help="id clients use (env MODEL_ID; default: the folder's name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    ap.add_argument("--max-slots", type=int, default=8, help="K/V pool slots (CPU: exactly; CUDA: at most)")
    ap.add_argument("--mem-fraction", type=float, default=0.85, help="CUDA: free memory share for the K/V pool")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=None, help="recent tokens kept (default: max positions - sinks)")
    ap.add_argument("--evict-step", type=int, default=0, help="tokens dropped per eviction (0: window/8)")
    ap.add_argument("--prefill-mode", default="exact", choices=["exact", "iterative", "adaptive"])
    ap.add_argument("--prefill-chunk", type=int, default=16, help="exact mode: tokens per chunk")
    ap.add_argument("--decode", default=os.environ.get("LCKV_DECODE", "fast"), choices=["fast", "reference"],
                    help="decode step: fast (FastDecode; Triton kernel on CUDA) or reference (model.decode)")
    ap.add_argument("--decode-graphs", action="store_true", help="CUDA: graphs for contiguous decode batches")
    ap.add_argument("--max-batched-tokens", type=int, default=512)
    ap.add_argument("--max-waiting", type=int, default=64, help="admission queue bound (beyond: 503)")
    ap.add_argument("--max-prompt-tokens", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=4096, help="largest sampling.max_tokens")
    ap.add_argument("--max-request-bytes", type=int, default=64 * 2**20)
    ap.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    ap.add_argument("--log-format", default=os.environ.get("LOG_FORMAT", "text"), choices=["text", "json"])
    a = ap.parse_args(argv)
    setup_logging(a.log_level, a.log_format)

    from aiohttp import web

    from .errors import ConfigError
    from .server.app import create_app
    from .server.service import ServeConfig

    try:
        cfg = ServeConfig(model=a.model, secret=os.environ.get("GPU_SERVICE_SECRET", ""), model_id=a.model_id,
                          host=a.host, port=a.port, device=a.device, dtype=a.dtype, max_slots=a.max_slots,
                          mem_fraction=a.mem_fraction, sinks=a.sinks, window=a.window, evict_step=a.evict_step,
                          prefill_mode=a.prefill_mode, prefill_chunk=a.prefill_chunk,
                          decode=a.decode, decode_graphs=a.decode_graphs,
                          max_batched_tokens=a.max_batched_tokens, max_waiting=a.max_waiting,
                          max_prompt_tokens=a.max_prompt_tokens, max_tokens=a.max_tokens,
                          max_request_bytes=a.max_request_bytes)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    web.run_app(create_app(cfg, exit_on_load_failure=True), host=cfg.host, port=cfg.port,
                handler_cancellation=True, access_log=None, print=None)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: python -m lckv_service {{{','.join(SUBCOMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[argv[0]].split(":")
    return getattr(importlib.import_module(module), func)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
