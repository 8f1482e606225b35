// Session ids come from OpenAI's prompt_cache_key or an x-session-id header. The Durable Object is
// derived from "tenant:session", so a tenant can only ever address its own sessions (tenant ids
// cannot contain ':').
import { ApiError } from "../errors";
import type { Env } from "../env";
import { hasLoneSurrogate } from "../text";

// Like OpenAI's prompt_cache_key, any text (an e-mail address, "conv/123", non-Latin scripts), bounded,
// without control characters or unpaired surrogates. A header value carries printable ASCII only.
const MAX_SESSION_ID = 256;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const HEADER_ID = /^[\x20-\x7e]+$/;

export function validateSessionId(value: string, param: string): string {
  if (value === "." || value === "..") {
    // a URL path normalises them away: GET/DELETE /v1/sessions/{id} could never reach such a session
    throw new ApiError(400, `Invalid ${param}: "." and ".." cannot name a session.`, { param, code: "invalid_value" });
  }
  const ok = value.length >= 1 && value.length <= MAX_SESSION_ID && !CONTROL.test(value) && !hasLoneSurrogate(value)
    && (param !== "x-session-id" || HEADER_ID.test(value));
  if (!ok) {
    const what = param === "x-session-id" ? "printable ASCII" : "text without control characters";
    throw new ApiError(400, `Invalid ${param}: use 1-${MAX_SESSION_ID} characters of ${what}.`, { param, code: "invalid_value" });
  }
  return value;
}

/**
 * The id as a response header value, when a header can carry it exactly (printable ASCII without
 * leading or trailing spaces, which HTTP trims); otherwise null and no echo: an encoded form could
 * not be told apart from an id that is that encoding.
 */
export function sessionIdHeader(id: string): string | null {
  return HEADER_ID.test(id) && id.trim() === id ? id : null;
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
