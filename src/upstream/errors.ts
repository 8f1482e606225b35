// The GPU service's failures as public errors, in one place. Its 4xx about the request are the
// client's fault and keep their type/code/param (params renamed to the public field names); auth,
// 5xx and broken streams are our side's failure and become 502/503/504.
import { ApiError, toApiError, type ErrorType } from "../errors";
import type { ErrorEvent, ErrorEventBody, PromptLimits } from "./types";

export class UpstreamError extends Error {
  override name = "UpstreamError";
  constructor(
    readonly status: number,
    readonly body: ErrorEventBody,
    readonly retryAfter?: number,
  ) {
    super(body.message);
  }
  get code(): string | null {
    return this.body.code;
  }
  /** For context_length_exceeded: the prompt's size and the limit, as the service measured them. */
  get limits(): PromptLimits | undefined {
    return this.body.limits;
  }
}

/** An error event inside the service's stream, as the HTTP error it would have been before the start. */
export function inBandUpstreamError(body: ErrorEventBody): UpstreamError {
  return new UpstreamError(body.type === "invalid_request_error" ? 400 : 500, body);
}

const PUBLIC_TYPES = new Set<string>(["invalid_request_error", "authentication_error", "permission_error",
  "not_found_error", "rate_limit_error", "server_error"]);

/** Service param names -> public request field names. */
export function publicParam(param: string | null): string | null {
  if (param === null) return null;
  if (param.startsWith("sampling.")) return param.slice("sampling.".length);
  return param;
}

/**
 * The one map from anything an upstream call can throw to the error the client sees: the service's
 * HTTP or in-band errors (UpstreamError), our transport errors (already ApiError), anything else a
 * sanitized 500.
 */
export function toPublicError(err: unknown): ApiError {
  if (!(err instanceof UpstreamError)) return toApiError(err);
  const { status, body } = err;
  if (status === 401 || status === 403) {
    return new ApiError(502, "The model service rejected the gateway's credentials.", { code: "upstream_auth_failed", type: "server_error" });
  }
  if (status === 503) {
    return new ApiError(503, "The model service is overloaded; retry shortly.", { code: body.code ?? "overloaded", type: "server_error", retryAfter: err.retryAfter ?? 1 });
  }
  if (status >= 500) {
    return new ApiError(502, "The model service failed to complete the request.", { code: "upstream_error", type: "server_error" });
  }
  const type = (PUBLIC_TYPES.has(body.type) ? body.type : "invalid_request_error") as ErrorType;
  // the message names the field as the service knows it ("sampling.max_tokens must be ..."); use the public name
  const message = body.message.replace(/\bsampling\.(?=[a-z_]+)/g, "");
  return new ApiError(status, message, { type, param: publicParam(body.param), code: body.code });
}

/** A public error as a stream event (what a turn yields instead of throwing once it has started). */
export function errorEvent(err: ApiError): ErrorEvent {
  return { type: "error", status: err.status, error: err.toBody().error };
}

/** The public error an error event carries. */
export function eventError(ev: ErrorEvent): ApiError {
  return ApiError.from({ status: ev.status, ...ev.error });
}

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function readLimits(v: unknown): PromptLimits | undefined {
  const l = v as Partial<PromptLimits> | null | undefined;
  return l && isCount(l.prompt_tokens) && isCount(l.max_prompt_tokens)
    ? { prompt_tokens: l.prompt_tokens, max_prompt_tokens: l.max_prompt_tokens } : undefined;
}

/** A service error body (HTTP or in-band), tolerating missing or mistyped fields. */
export function readErrorBody(e: unknown, fallback: string): ErrorEventBody {
  const o = e as Partial<Record<keyof ErrorEventBody, unknown>> | null | undefined;
  if (!o || typeof o.message !== "string") return { message: fallback, type: "server_error", param: null, code: null };
  const limits = readLimits(o.limits);
  return { message: o.message, type: String(o.type ?? "server_error"), param: typeof o.param === "string" ? o.param : null,
    code: typeof o.code === "string" ? o.code : null, ...(limits ? { limits } : {}) };
}

/** Parse a non-2xx service response into an UpstreamError (tolerating non-JSON bodies). */
export async function readUpstreamError(res: Response): Promise<UpstreamError> {
  const retry = Number(res.headers.get("retry-after"));
  const parsed = (await res.json().catch(() => null)) as { error?: unknown } | null;
  const body = readErrorBody(parsed?.error, `model service returned HTTP ${res.status}`);
  return new UpstreamError(res.status, body, Number.isFinite(retry) && retry > 0 ? retry : undefined);
}
