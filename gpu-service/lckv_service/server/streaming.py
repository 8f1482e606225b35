"""Write one generation as response frames; a caller that goes away aborts the request in the engine."""
from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..engine.request import Request
from ..errors import http_error
from . import protocol as P
from .access_log import FIELDS

log = logging.getLogger(__name__)


async def stream_generation(request: web.Request, service, req: Request, echo_id: str,
                            queue: "asyncio.Queue", metrics) -> web.StreamResponse:
    t0 = time.monotonic()
    resp = web.StreamResponse(status=200, headers={"Content-Type": P.CONTENT_TYPE, "Cache-Control": "no-store"})
    outcome = "disconnected"
    completion_tokens = 0          # ids sent so far; at done, the engine's count (end-of-turn included)
    try:
        await resp.prepare(request)
        await resp.write(P.json_frame(P.start_event(echo_id, service.model_id,
                                                    req.cached_tokens + len(req.prompt_ids),
                                                    req.cached_tokens, int(time.time()))))
        held = None
        while True:
            ev, held = held or await queue.get(), None
            if ev.type == "delta":
                # deltas that queued up while the last frame was written go out as one frame
                text, ids = [ev.text], list(ev.token_ids)
                while not queue.empty():
                    nxt = queue.get_nowait()
                    if nxt.type != "delta":
                        held = nxt
                        break
                    text.append(nxt.text)
                    ids += nxt.token_ids
                completion_tokens += len(ids)
                await resp.write(P.json_frame(P.delta_event("".join(text), ids)))
                continue
            if ev.type == "done":
                completion_tokens = ev.completion_tokens
                data = await asyncio.to_thread(service.encode_blob, ev.state) if ev.state is not None else []
                prompt_tokens = req.cached_tokens + len(req.prompt_ids)
                frames = [P.json_frame(P.done_event(ev.finish_reason, prompt_tokens, ev.completion_tokens,
                                                    req.cached_tokens, sum(map(len, data)), ev.tokens_seen,
                                                    ev.cache_len))]
                frames += P.blob_frames(data)
                frames.append(P.end_frame())
                outcome = ev.finish_reason
            else:
                status, type_, param, code, message = http_error(ev.error)
                if status >= 500:
                    log.error("request %s failed after start: %s", echo_id, type(ev.error).__name__)
                frames = [P.json_frame(P.error_event(type_, message, param, code)), P.end_frame()]
                outcome = "error"
            for f in frames:
                await resp.write(f)
            await resp.write_eof()
            return resp
    except (ConnectionResetError, asyncio.CancelledError) as e:
        # the caller went away: stop the work and free the slot at the engine's next step
        service.async_engine.abort(req.request_id)
        if isinstance(e, asyncio.CancelledError):
            raise
        return resp
    except Exception as e:  # a failure of ours after the 200 went out: report it in-band
        service.async_engine.abort(req.request_id)
        log.exception("request %s: streaming failed", echo_id)
        outcome = "error"
        _, type_, param, code, message = http_error(e)
        try:
            await resp.write(P.json_frame(P.error_event(type_, message, param, code)) + P.end_frame())
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp
    finally:
        metrics.requests.labels(outcome=outcome).inc()
        # the request's one log line (access_log) carries the generation's outcome
        request.setdefault(FIELDS, {}).update(
            request_id=echo_id, outcome=outcome, prompt_tokens=req.cached_tokens + len(req.prompt_ids),
            cached_tokens=req.cached_tokens, completion_tokens=completion_tokens,
            stream_ms=round((time.monotonic() - t0) * 1000, 1))
