// Bearer API key -> tenant. Keys are compared as SHA-256 digests in constant time; the key itself
// is never stored, logged or echoed.
import type { MiddlewareHandler } from "hono";
import { parseKeyHashes, tenantForKey, type KeyEntry } from "../auth/keys";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";

let parsed: { source: string; entries: KeyEntry[] } | null = null;

function entriesFor(value: string | undefined): KeyEntry[] {
  if (!value) throw new ApiError(500, "Server misconfigured: API_KEY_HASHES is not set.", { code: "server_misconfigured", type: "server_error" });
  if (parsed?.source !== value) {
    try {
      parsed = { source: value, entries: parseKeyHashes(value) };
    } catch (err) {
      throw new ApiError(500, `Server misconfigured: ${(err as Error).message}.`, { code: "server_misconfigured", type: "server_error" });
    }
  }
  return parsed.entries;
}

const invalidKey = () =>
  new ApiError(401, "Incorrect API key provided. Send 'Authorization: Bearer <key>'.", { code: "invalid_api_key" });

export function auth(): MiddlewareHandler<AppEnv> {
  return async function auth(c, next) {
    const entries = entriesFor(c.env.API_KEY_HASHES);
    const header = c.req.header("authorization") ?? "";
    if (header.trim() === "") {
      throw new ApiError(401, "Missing API key. Send 'Authorization: Bearer <key>'.", { code: "missing_api_key" });
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw invalidKey(); // a header was sent, just not one key after "Bearer"
    const tenant = await tenantForKey(m[1]!, entries);
    if (tenant === null) throw invalidKey();
    c.set("tenant", tenant);
    await next();
  };
}
