// Bearer API key -> tenant. Keys are compared as SHA-256 digests in constant time; the key itself
// is never stored, logged or echoed.
import type { MiddlewareHandler } from "hono";
import { tenantForKey } from "../auth/keys";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";

const invalidKey = () =>
  new ApiError(401, "Incorrect API key provided. Send 'Authorization: Bearer <key>'.", { code: "invalid_api_key" });

export function auth(): MiddlewareHandler<AppEnv> {
  return async function auth(c, next) {
    const { apiKeys } = loadConfig(c.env);
    const header = c.req.header("authorization") ?? "";
    if (header.trim() === "") {
      throw new ApiError(401, "Missing API key. Send 'Authorization: Bearer <key>'.", { code: "missing_api_key" });
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw invalidKey(); // a header was sent, just not one key after "Bearer"
    const tenant = await tenantForKey(m[1]!, apiKeys);
    if (tenant === null) throw invalidKey();
    c.set("tenant", tenant);
    await next();
  };
}
