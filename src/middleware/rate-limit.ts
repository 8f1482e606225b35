// 429 with Retry-After once a tenant exceeds its requests per minute (RATE_LIMIT_RPM, or its
// RATE_LIMIT_OVERRIDES entry).
import type { MiddlewareHandler } from "hono";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";

export function rateLimit(): MiddlewareHandler<AppEnv> {
  return async function rateLimit(c, next) {
    const cfg = loadConfig(c.env);
    const tenant = c.get("tenant");
    const rpm = cfg.rateLimitOverrides.get(tenant) ?? cfg.rateLimitRpm;
    const stub = c.env.RATE_LIMITER.get(c.env.RATE_LIMITER.idFromName(tenant));
    const r = await stub.take(rpm);
    if (!r.allowed) {
      // rendered here (not thrown) so the 429 carries the limit headers too, as OpenAI's does
      const res = new ApiError(429, `Rate limit of ${rpm} requests per minute reached; retry after ${r.retryAfterSeconds}s.`, {
        code: "rate_limit_exceeded", retryAfter: r.retryAfterSeconds,
      }).toResponse();
      res.headers.set("x-ratelimit-limit-requests", String(rpm));
      res.headers.set("x-ratelimit-remaining-requests", "0");
      res.headers.set("x-ratelimit-reset-requests", `${r.resetSeconds}s`);
      return res;
    }
    await next();
    c.header("x-ratelimit-limit-requests", String(rpm));
    c.header("x-ratelimit-remaining-requests", String(r.remaining));
    c.header("x-ratelimit-reset-requests", `${r.resetSeconds}s`);
  };
}
