"""One structured log line per request: the caller's request id (X-Request-Id, which the edge Worker
sends on every internal call), route, status, latency, and what the handler adds (a generation's
outcome and token counts). Health probes are not logged; no body, secret or text ever is."""
from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web

log = logging.getLogger("lckv_service.access")

FIELDS = web.RequestKey("access_fields", dict)  # filled in by the handler
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/ping", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(request: web.Request) -> str | None:
    rid = request.headers.get("X-Request-Id", "")
    return rid if _REQUEST_ID.match(rid) else None


@web.middleware
async def access_log(request: web.Request, handler):
    if request.path in QUIET_PATHS:
        return await handler(request)
    t0 = time.monotonic()
    fields: dict = {"request_id": request_id(request)}
    request[FIELDS] = fields
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the caller went away
        raise
    finally:
        log.info("request", extra={"fields": {"event": "request", **fields, "method": request.method,
                                              "path": request.path, "status": status,
                                              "ms": round((time.monotonic() - t0) * 1000, 1)}})
