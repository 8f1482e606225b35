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


SOMAXCONN = "/proc/sys/net/core/somaxconn"


def check_listen_backlog(requested: int, somaxconn_path: str = SOMAXCONN) -> str | None:
    """Linux caps a listen socket's queue at net.core.somaxconn, silently: a warning saying so, or None."""
    try:
        with open(somaxconn_path) as f:
            cap = int(f.read())
    except (OSError, ValueError):
        return None
    if cap >= requested:
        return None
    return (f"--listen-backlog {requested} is capped at net.core.somaxconn = {cap}: in a burst, connects past "
            f"{cap} waiting to be accepted wait for the client's SYN retransmit (1 s); raise net.core.somaxconn")


def serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lckv_service serve",
                                 description="Serve a model folder over the internal protocol. "
                                             "The shared secret comes from env GPU_SERVICE_SECRET.")
    from .errors import ConfigError
    from .server.service import ServeConfig
    try:
        ServeConfig.add_arguments(ap)     # reads the options' environment variables
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ap.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    ap.add_argument("--log-format", default=os.environ.get("LOG_FORMAT", "text"), choices=["text", "json"])
    a = ap.parse_args(argv)
    setup_logging(a.log_level, a.log_format)

    from aiohttp import web

    from .server.app import STATE, create_app

    try:
        cfg = ServeConfig.from_args(a, secret=os.environ.get("GPU_SERVICE_SECRET", ""))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warning = check_listen_backlog(cfg.listen_backlog)
    if warning:
        logging.getLogger("lckv_service.serve").warning(warning)
    app = create_app(cfg, exit_on_failure=True)
    web.run_app(app, host=cfg.host, port=cfg.port, backlog=cfg.listen_backlog, handler_cancellation=True,
                access_log=None, print=None)
    return 1 if app[STATE].failure is not None else 0   # a failed load or engine is a failed process


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: python -m lckv_service {{{','.join(SUBCOMMANDS)}}} [args...]", file=sys.stderr)
        return 2
    module, func = SUBCOMMANDS[argv[0]].split(":")
    return getattr(importlib.import_module(module), func)(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
