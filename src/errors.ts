// One error path: ApiError carries OpenAI's {type, param, code} and renders itself as
// {"error": {...}}; toApiError turns anything thrown (Hono's HTTPException from built-in middleware
// included) into one. middleware/on-error.ts is the app's error handler.
import { HTTPException } from "hono/http-exception";

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "rate_limit_error"
  | "server_error";

export interface ErrorBody {
  message: string;
  type: ErrorType;
  param: string | null;
  code: string | null;
}

export interface ApiErrorInit {
  param?: string | null;
  code?: string | null;
  type?: ErrorType;
  retryAfter?: number; // seconds
  shouldRetry?: boolean; // false => x-should-retry: false (OpenAI SDK then does not retry)
}

const DEFAULT_TYPE: Record<number, ErrorType> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "invalid_request_error",
  405: "invalid_request_error",
  409: "invalid_request_error",
  413: "invalid_request_error",
  415: "invalid_request_error",
  429: "rate_limit_error",
};

export class ApiError extends Error {
  readonly status: number;
  readonly type: ErrorType;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfter: number | undefined;
  readonly shouldRetry: boolean | undefined;

  constructor(status: number, message: string, init: ApiErrorInit = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = init.type ?? DEFAULT_TYPE[status] ?? "server_error";
    this.param = init.param ?? null;
    this.code = init.code ?? null;
    this.retryAfter = init.retryAfter;
    this.shouldRetry = init.shouldRetry;
  }

  toBody(): { error: ErrorBody } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  toResponse(): Response {
    return new Response(JSON.stringify(this.toBody()), { status: this.status, headers: errorHeaders(this) });
  }

  /** Plain data for crossing Durable Object RPC (custom Error fields do not survive it). */
  toJSON(): SerializedApiError {
    return { status: this.status, message: this.message, type: this.type, param: this.param,
      code: this.code, retryAfter: this.retryAfter, shouldRetry: this.shouldRetry };
  }

  static from(e: SerializedApiError): ApiError {
    return new ApiError(e.status, e.message, e);
  }
}

export interface SerializedApiError {
  status: number;
  message: string;
  type: ErrorType;
  param: string | null;
  code: string | null;
  retryAfter?: number | undefined;
  shouldRetry?: boolean | undefined;
}

/** A client-supplied value as echoed in an error message: at most `max` characters. */
export const clip = (value: string, max: number): string => (value.length > max ? `${value.slice(0, max)}…` : value);

export function errorHeaders(err: ApiError): Record<string, string> {
  const h: Record<string, string> = { "content-type": "application/json" };
  if (err.retryAfter !== undefined) h["retry-after"] = String(Math.max(1, Math.ceil(err.retryAfter)));
  if (err.shouldRetry === false) h["x-should-retry"] = "false";
  return h;
}

/** Normalize anything thrown into an ApiError; unknown errors become a sanitized 500. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof HTTPException) {
    const status = err.status;
    if (status === 413) return new ApiError(413, "Request body too large.", { code: "request_too_large" });
    const message = status >= 500 ? "Internal server error." : err.message || "Bad request.";
    return new ApiError(status, message, { code: status === 400 ? "invalid_request" : null });
  }
  return new ApiError(500, "Internal server error.", { code: "internal_error" });
}
