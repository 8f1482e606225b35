// The GPU service's errors, mapped onto ours. Its 4xx about the request are the client's fault and
// keep their type/code/param (params are renamed to the public field names); auth, 5xx and broken
// streams are our side's failure and become 502/503.
import { ApiError, type ErrorType } from "../errors";
import type { ErrorEventBody } from "./types";

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
}

const PUBLIC_TYPES = new Set<string>(["invalid_request_error", "authentication_error", "permission_error",
  "not_found_error", "rate_limit_error", "server_error"]);

/** Service param names -> public request field names. */
export function publicParam(param: string | null): string | null {
  if (param === null) return null;
  if (param.startsWith("sampling.")) return param.slice("sampling.".length);
  return param;
}

export function upstreamToApiError(err: UpstreamError | ErrorEventBody, status?: number): ApiError {
  const body = err instanceof UpstreamError ? err.body : err;
  const st = err instanceof UpstreamError ? err.status : status ?? 500;
  const retryAfter = err instanceof UpstreamError ? err.retryAfter : undefined;
  if (st === 401 || st === 403) {
    return new ApiError(502, "The model service rejected the gateway's credentials.", { code: "upstream_auth_failed", type: "server_error" });
  }
  if (st === 503) {
    return new ApiError(503, "The model service is overloaded; retry shortly.", { code: body.code ?? "overloaded", type: "server_error", retryAfter: retryAfter ?? 1 });
  }
  if (st >= 500) {
    return new ApiError(502, "The model service failed to complete the request.", { code: "upstream_error", type: "server_error" });
  }
  const type = (PUBLIC_TYPES.has(body.type) ? body.type : "invalid_request_error") as ErrorType;
  // the message names the field as the service knows it ("sampling.max_tokens must be ..."); use the public name
  const message = body.message.replace(/\bsampling\.(?=[a-z_]+)/g, "");
  return new ApiError(st, message, { type, param: publicParam(body.param), code: body.code });
}

/** Parse a non-2xx service response into an UpstreamError (tolerating non-JSON bodies). */
export async function readUpstreamError(res: Response): Promise<UpstreamError> {
  const retry = Number(res.headers.get("retry-after"));
  let body: ErrorEventBody = { message: `model service returned HTTP ${res.status}`, type: "server_error", param: null, code: null };
  try {
    const parsed = (await res.json()) as { error?: Partial<ErrorEventBody> };
    const e = parsed?.error;
    if (e && typeof e.message === "string") {
      body = { message: e.message, type: String(e.type ?? "server_error"), param: e.param ?? null, code: e.code ?? null };
    }
  } catch {
    // keep the generic body
  }
  return new UpstreamError(res.status, body, Number.isFinite(retry) && retry > 0 ? retry : undefined);
}
