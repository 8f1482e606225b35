// Session ids come from OpenAI's prompt_cache_key, an x-session-id header, or the path of
// /v1/sessions/{session_id}. The Durable Object is derived from "tenant:session", so a tenant can
// only ever address its own sessions (tenant ids cannot contain ':').
import { z } from "zod";
import type { Env } from "../env";
import { ApiError } from "../errors";
import { hasLoneSurrogate } from "../text";

// Like OpenAI's prompt_cache_key, any text (an e-mail address, "conv/123", non-Latin scripts), bounded,
// without control characters or unpaired surrogates. A header value carries printable ASCII only.
const MAX_SESSION_ID = 256;
// eslint-disable-next-line no-control-regex
const TEXT_ID = /^[^\u0000-\u001f\u007f-\u009f]+$/;
const HEADER_ID = /^[\x20-\x7e]+$/;

/** A session id in a body field or the URL path. */
export const sessionIdSchema = z.string()
  .min(1, `use 1-${MAX_SESSION_ID} characters of text without control characters`)
  .max(MAX_SESSION_ID, `use 1-${MAX_SESSION_ID} characters of text without control characters`)
  .regex(TEXT_ID, `use 1-${MAX_SESSION_ID} characters of text without control characters`)
  .refine((s) => !hasLoneSurrogate(s), "the id contains an unpaired UTF-16 surrogate")
  // a URL path normalises them away: GET/DELETE /v1/sessions/{id} could never reach such a session
  .refine((s) => s !== "." && s !== "..", '"." and ".." cannot name a session')
  .meta({ id: "SessionId", description: "Any text without control characters (in the x-session-id header, printable ASCII)." });

/** A session id in the x-session-id header. */
export const sessionIdHeaderSchema = z.string()
  .min(1, `use 1-${MAX_SESSION_ID} characters of printable ASCII`)
  .max(MAX_SESSION_ID, `use 1-${MAX_SESSION_ID} characters of printable ASCII`)
  .regex(HEADER_ID, `use 1-${MAX_SESSION_ID} characters of printable ASCII`)
  .refine((s) => s !== "." && s !== "..", '"." and ".." cannot name a session')
  .meta({ description: "Session to continue (alternative to prompt_cache_key; both must agree if both are sent)." });

export function validateSessionId(value: string, param: string): string {
  const r = (param === "x-session-id" ? sessionIdHeaderSchema : sessionIdSchema).safeParse(value);
  if (!r.success) throw new ApiError(400, `Invalid ${param}: ${r.error.issues[0]!.message}.`, { param, code: "invalid_value" });
  return r.data;
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
