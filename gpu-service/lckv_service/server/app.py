"""HTTP app factory: routes, shared-secret auth, error rendering, request size cap, engine start/stop."""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal

from aiohttp import web

from ..errors import AuthError, ContextLengthError, OverloadedError, RequestTooLargeError, http_error
from . import metrics as M
from .access_log import access_log
from . import protocol as P
from .service import ModelService, ServeConfig, describe_config
from .metrics import AppState
from .streaming import stream_generation

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/ping"})
SECRET_HEADER = "X-Service-Secret"


CONFIG = web.AppKey("config", ServeConfig)
METRICS = M.METRICS
STATE = M.STATE


def _error_response(exc: BaseException) -> web.Response:
    status, type_, param, code, message = http_error(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, OverloadedError) else None
    limits = exc.limits if isinstance(exc, ContextLengthError) else None
    return web.json_response(P.error_body(type_, message, param, code, limits), status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as e:  # aiohttp's own (404 route, 405 method): same error body
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        body = P.error_body("invalid_request_error", e.reason, None, code)
        return web.json_response(body, status=e.status)
    except Exception as e:
        if http_error(e)[0] >= 500:
            log.error("%s %s failed: %s", request.method, request.path, type(e).__name__, exc_info=e)
        return _error_response(e)


def auth_middleware(secret: str):
    """`Authorization: Bearer <secret>`, or `X-Service-Secret: <secret>` behind a gateway (RunPod, NVCF)
    that takes the Authorization header for its own API key."""
    bearer, raw = f"Bearer {secret}".encode(), secret.encode()

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path not in PUBLIC_PATHS:
            alt = request.headers.get(SECRET_HEADER)
            ok = hmac.compare_digest(alt.encode(), raw) if alt is not None else \
                hmac.compare_digest(request.headers.get("Authorization", "").encode(), bearer)
            if not ok:
                raise AuthError("missing or invalid service secret", param=None)
        return await handler(request)

    return auth


async def read_body(request: web.Request, limit: int) -> bytes:
    too_large = RequestTooLargeError(f"request body over {limit} bytes", param="body")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise too_large
    return bytes(buf)


def _service(request: web.Request) -> ModelService:
    state: AppState = request.app[STATE]
    if not state.ready:
        if state.failure is not None:
            raise OverloadedError("this replica's engine has stopped; it is restarting", retry_after=5)
        raise OverloadedError("the model is still loading", retry_after=5)
    return state.service


async def models(request: web.Request) -> web.Response:
    return web.json_response({"models": [_service(request).info()]})


async def generate(request: web.Request) -> web.StreamResponse:
    svc = _service(request)
    cfg: ServeConfig = request.app[CONFIG]
    payload, blob = P.parse_frames(await read_body(request, cfg.max_request_bytes))
    g = P.parse_generate_request(payload, cfg.max_tokens)
    state = await asyncio.to_thread(svc.decode_blob, blob) if blob is not None and g.model == svc.model_id else None
    req = svc.make_request(g, state)
    queue = await svc.async_engine.add(req)  # OverloadedError (503) when the admission queue is full
    return await stream_generation(request, svc, req, g.request_id or req.request_id, queue,
                                   request.app[METRICS])


def create_app(cfg: ServeConfig, exit_on_failure: bool = False) -> web.Application:
    metrics = M.ServiceMetrics()
    app = web.Application(middlewares=[access_log, error_middleware, auth_middleware(cfg.secret)],
                          client_max_size=cfg.max_request_bytes + 1)
    app[CONFIG], app[METRICS], app[STATE] = cfg, metrics, AppState()
    app.router.add_get("/healthz", M.healthz)
    app.router.add_get("/readyz", M.readyz)
    app.router.add_get("/ping", M.ping)
    app.router.add_get("/metrics", M.metrics)
    app.router.add_get("/v1/internal/models", models)
    app.router.add_post("/v1/internal/generate", generate)

    async def load(app: web.Application) -> None:
        state: AppState = app[STATE]
        try:
            log.info("loading model: %s", describe_config(cfg))
            state.service = svc = await asyncio.to_thread(ModelService, cfg, metrics)
            metrics.bind_engine(svc.async_engine)
            loop = asyncio.get_running_loop()
            svc.async_engine.on_death = lambda code: loop.call_soon_threadsafe(engine_died, code)
            svc.async_engine.start()
            await svc.warmup()
            state.ready = True
            log.info("ready: model=%s", svc.model_id)
        except Exception as e:
            log.critical("model load failed: %s", e, exc_info=e)
            fail(e)

    def engine_died(code: int | None) -> None:
        fail(RuntimeError(f"the engine process exited (exit code {code})"))

    def fail(e: BaseException) -> None:
        """The replica can serve nothing now: not ready, and under `serve` it exits for its platform to
        restart it."""
        state: AppState = app[STATE]
        state.ready, state.failure = False, e
        if exit_on_failure:
            os.kill(os.getpid(), signal.SIGTERM)

    async def on_startup(app: web.Application) -> None:
        app[STATE].load_task = asyncio.create_task(load(app))

    async def on_cleanup(app: web.Application) -> None:
        state: AppState = app[STATE]
        if state.load_task is not None and not state.load_task.done():
            state.load_task.cancel()
        if state.service is not None:
            await asyncio.to_thread(state.service.async_engine.stop)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
