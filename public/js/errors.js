// API failures in plain words. The API answers {"error": {message, type, param, code}} (OpenAI's shape).

export class PlaygroundError extends Error {
  constructor(message, { status = 0, code = null, type = null, param = null, detail = null } = {}) {
    super(message);
    this.name = "PlaygroundError";
    Object.assign(this, { status, code, type, param, detail });
  }
}

/** Builds the user-facing message for an HTTP error status and the API's error object (may be null). */
export function describeApiError(status, error, retryAfter = null) {
  const detail = typeof error?.message === "string" ? error.message : null;
  const code = error?.code ?? null;
  const param = error?.param ?? null;
  const because = detail ? ` (${detail})` : "";
  let message;
  if (status === 401) message = "The API key was not accepted. Check the key and paste it again.";
  else if (status === 403) message = `This API key is not allowed to do that${because}.`;
  else if (status === 404 && code === "model_not_found") message = `The model is not available on this server${because}.`;
  else if (status === 404) message = `Not found${because}.`;
  else if (status === 409) message = `The session is busy or out of date${because}. Wait for the running reply, then try again.`;
  else if (status === 413) message = "The message is too large for the server.";
  else if (status === 429) message = `Too many requests${retryAfter ? `; try again in ${retryAfter} s` : "; wait a moment and try again"}.`;
  else if (status === 400 && code === "context_length_exceeded") message = `The prompt is too long for the model${because}.`;
  else if (status >= 400 && status < 500) message = `The request was rejected${param ? ` (field "${param}")` : ""}: ${detail ?? `HTTP ${status}`}.`;
  else if (status === 503) message = `The server is busy or still starting${because}. Try again shortly.`;
  else if (status >= 500) message = `The server had a problem${because}. Try again.`;
  else message = detail ?? "The request failed.";
  return new PlaygroundError(message, { status, code, type: error?.type ?? null, param, detail });
}

/** fetch() itself failed: the server could not be reached at all. */
export function describeNetworkError(url, cause) {
  return new PlaygroundError(`Could not reach the API at ${url}. Is the server running?`, { detail: String(cause?.message ?? cause) });
}

export function isAbort(e) {
  return e?.name === "AbortError";
}
