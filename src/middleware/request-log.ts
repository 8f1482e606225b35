// Request id on every response (x-request-id) and one structured log line per request: id,
// tenant, route, status, latency. Streaming routes log their stream outcome separately.
import type { MiddlewareHandler } from "hono";
import type { AppEnv } from "../env";
import { logEvent } from "../log";

export function requestLog(): MiddlewareHandler<AppEnv> {
  return async function requestLog(c, next) {
    const started = Date.now();
    const requestId = `req_${crypto.randomUUID().replaceAll("-", "")}`;
    c.set("requestId", requestId);
    await next();
    // set on the final response (error responses are built outside the context, with immutable headers)
    c.res = new Response(c.res.body, c.res);
    c.res.headers.set("x-request-id", requestId);
    logEvent("info", {
      request_id: requestId,
      tenant: c.get("tenant") ?? null,
      method: c.req.method,
      route: c.get("route") ?? c.req.routePath,
      session: c.get("sessionId") ? true : undefined,
      status: c.res.status,
      latency_ms: Date.now() - started,
    });
  };
}
