// The public OpenAI-compatible API, as an unmodified client would call it: Bearer key, JSON, SSE.
import { describeApiError, describeNetworkError, PlaygroundError } from "./errors.js";
import { sseEvents } from "./sse.js";

// A mid-stream error has no HTTP status of its own; its type says which family it belongs to.
const STATUS_OF_TYPE = { invalid_request_error: 400, authentication_error: 401, permission_error: 403, not_found_error: 404, rate_limit_error: 429 };

export class ApiClient {
  /** baseUrl: the API root without "/v1" (the page's own origin by default). */
  constructor({ baseUrl, apiKey }) {
    if (!apiKey) throw new PlaygroundError("Paste an API key first.", { param: "apiKey" });
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.apiKey = apiKey;
  }

  async #request(path, init) {
    const url = `${this.baseUrl}${path}`;
    let res;
    try {
      res = await fetch(url, { ...init, headers: { authorization: `Bearer ${this.apiKey}`, ...init.headers } });
    } catch (e) {
      if (e?.name === "AbortError") throw e;
      throw describeNetworkError(url, e);
    }
    if (!res.ok) {
      let error = null;
      try {
        error = (await res.json())?.error ?? null;
      } catch {
        // not JSON (a proxy's page): the status alone decides the message
      }
      throw describeApiError(res.status, error, res.headers.get("retry-after"));
    }
    return res;
  }

  async listModels(signal) {
    const res = await this.#request("/v1/models", { method: "GET", signal });
    return (await res.json()).data?.map((m) => m.id) ?? [];
  }

  async deleteSession(sessionId, signal) {
    await this.#request(`/v1/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE", signal });
  }

  /**
   * Streams one chat completion. Yields {type:"delta", text}, {type:"finish", reason} and
   * {type:"usage", usage}; throws PlaygroundError for HTTP errors and for errors sent mid-stream.
   */
  async *chat({ model, messages, sessionId, maxTokens, temperature, signal }) {
    const body = {
      model,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      max_completion_tokens: maxTokens,
      temperature,
    };
    if (sessionId) body.prompt_cache_key = sessionId;
    const res = await this.#request("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
    let sawDone = false;
    for await (const data of sseEvents(res.body, signal)) {
      if (data === "[DONE]") {
        sawDone = true;
        break;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new PlaygroundError("The server sent a malformed stream event.", { detail: data.slice(0, 200) });
      }
      if (chunk.error) throw describeApiError(STATUS_OF_TYPE[chunk.error.type] ?? 500, chunk.error);
      for (const choice of chunk.choices ?? []) {
        const text = choice.delta?.content;
        if (text) yield { type: "delta", text };
        if (choice.finish_reason) yield { type: "finish", reason: choice.finish_reason };
      }
      if (chunk.usage) yield { type: "usage", usage: chunk.usage };
    }
    if (!sawDone && !signal?.aborted) throw new PlaygroundError("The stream ended before the reply was complete.");
  }
}
