// The error responses a route declares: every status it can return, each with OpenAI's error body
// and the codes it carries (docs/edge.md, "Errors", says when each happens).
import { ErrorResponse } from "./response-schemas";

const REQUEST_ID = { $ref: "#/components/headers/RequestId" };
const RETRY_AFTER = { $ref: "#/components/headers/RetryAfter" };
const SHOULD_RETRY = { $ref: "#/components/headers/ShouldRetry" };

const ERRORS = {
  400: ["Invalid request; `param` names the offending field or header (codes invalid_value, missing_required_parameter, "
    + "unknown_parameter, unsupported_parameter, invalid_json, invalid_header, context_length_exceeded, chat_template_missing).", {}],
  401: ["Missing or wrong API key (codes missing_api_key, invalid_api_key).", {}],
  404: ["Unknown model (model_not_found), session (session_not_found), response (response_not_found), conversation "
    + "(conversation_not_found) or item (item_not_found); another tenant's id is the same 404.", {}],
  409: ["Another turn of this session, response chain or conversation is running (code session_busy). Not retried by the SDK.",
    { "x-should-retry": SHOULD_RETRY }],
  413: ["Body over MAX_BODY_BYTES (code request_too_large).", { "x-should-retry": SHOULD_RETRY }],
  415: ["Content-Type is not JSON (code unsupported_media_type).", {}],
  429: ["The tenant's requests-per-minute limit is reached (code rate_limit_exceeded).", { "retry-after": RETRY_AFTER }],
  500: ["Our failure (codes internal_error, server_misconfigured).", {}],
  502: ["The model service failed (codes upstream_error, upstream_unavailable, upstream_protocol_error, upstream_auth_failed).", {}],
  503: ["The model service is overloaded (overloaded), no model service replica is reachable (upstream_unavailable), "
    + "or a session is briefly unavailable (session_unavailable).", { "retry-after": RETRY_AFTER }],
  504: ["The model service stopped responding (code upstream_timeout).", {}],
} as const;

export type ErrorStatus = keyof typeof ERRORS;

export function errorResponses<S extends ErrorStatus>(...statuses: S[]) {
  return Object.fromEntries(statuses.map((status) => {
    const [description, headers] = ERRORS[status];
    return [status, {
      description,
      headers: { "x-request-id": REQUEST_ID, ...headers },
      content: { "application/json": { schema: ErrorResponse } },
    }];
  })) as unknown as Record<S, { description: string; headers: Record<string, { $ref: string }>; content: { "application/json": { schema: typeof ErrorResponse } } }>;
}

/** What every authenticated route can answer besides its own errors. */
export const AUTHENTICATED = [401, 429, 500] as const;
