// Session ids come from OpenAI's prompt_cache_key or an x-session-id header. The Durable Object is
// derived from "tenant:session", so a tenant can only ever address its own sessions (tenant ids
// cannot contain ':').
import { ApiError } from "../errors";
import type { Env } from "../env";

export const SESSION_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

export function validateSessionId(value: string, param: string): string {
  if (!SESSION_ID_RE.test(value)) {
    throw new ApiError(400, `Invalid ${param}: use 1-128 characters of A-Z a-z 0-9 . _ : -`, { param, code: "invalid_value" });
  }
  return value;
}

/** prompt_cache_key wins; both present and different is ambiguous and rejected. */
export function resolveSessionId(bodyKey: string | undefined, header: string | null): string | undefined {
  const fromBody = bodyKey !== undefined ? validateSessionId(bodyKey, "prompt_cache_key") : undefined;
  const fromHeader = header !== null ? validateSessionId(header, "x-session-id") : undefined;
  if (fromBody !== undefined && fromHeader !== undefined && fromBody !== fromHeader) {
    throw new ApiError(400, "prompt_cache_key and the x-session-id header name different sessions.", { param: "prompt_cache_key", code: "invalid_value" });
  }
  return fromBody ?? fromHeader;
}

export function sessionStub(env: Env, tenant: string, sessionId: string) {
  return env.SESSIONS.get(env.SESSIONS.idFromName(`${tenant}:${sessionId}`));
}
