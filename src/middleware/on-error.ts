// The app's error handler: every failure as OpenAI's {"error": {...}}; unexpected ones are logged
// (class and message, for operators) and reach the client as a sanitized 500, never a stack.
import type { Context } from "hono";
import type { AppEnv } from "../env";
import { ApiError, toApiError } from "../errors";
import { logEvent } from "../log";

export function onError(err: unknown, c: Context<AppEnv>): Response {
  const apiErr = toApiError(err);
  if (apiErr.status >= 500 && !(err instanceof ApiError)) {
    logEvent("error", { request_id: c.get("requestId"), error: err instanceof Error ? err.name : typeof err,
      message: err instanceof Error ? err.message.slice(0, 200) : undefined });
  }
  return apiErr.toResponse();
}
