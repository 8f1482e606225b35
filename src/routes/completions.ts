// POST /v1/completions (legacy text completions): always stateless, no session.
import { createRoute } from "@hono/zod-openapi";
import { loadConfig } from "../config";
import { statelessTurn } from "../generation";
import { logEvent } from "../log";
import { jsonBody } from "../middleware/json-body";
import { collect } from "../openai/collect";
import { AUTHENTICATED, errorResponses } from "../openai/error-responses";
import { normalizeCompletion } from "../openai/normalize";
import { TextCompletion, sseEvent } from "../openai/response-schemas";
import { newId, textCompletion } from "../openai/responses";
import { completionRequestSchema } from "../openai/schemas";
import { sseResponse } from "../openai/sse";
import { requireModel } from "../upstream/models";
import { OK_HEADERS } from "./headers";
import { router } from "./router";

export const completionsRoute = createRoute({
  method: "post",
  path: "/v1/completions",
  tags: ["generation"],
  operationId: "createCompletion",
  summary: "Create a text completion (legacy; always stateless).",
  middleware: [jsonBody()] as const,
  request: { body: { required: true, content: { "application/json": { schema: completionRequestSchema } } } },
  responses: {
    200: {
      description: "`stream: false`: a `text_completion` object. `stream: true`: SSE of text_completion chunks (schema "
        + "TextCompletionChunk), the same usage rules, then `data: [DONE]`.",
      headers: OK_HEADERS,
      content: {
        "application/json": { schema: TextCompletion },
        "text/event-stream": { schema: sseEvent("TextCompletionChunk") },
      },
    },
    ...errorResponses(...AUTHENTICATED, 400, 404, 413, 415, 502, 503, 504),
  },
});

export const completions = router();

completions.openapi(completionsRoute, async (c) => {
  const req = normalizeCompletion(c.req.valid("json"));
  await requireModel(loadConfig(c.env), req.model);
  const turn = await statelessTurn(c, { model: req.model, kind: "completion", prompt: req.prompt, sampling: req.sampling });
  const idn = { id: newId("cmpl"), created: turn.start.created, model: req.model };
  if (req.stream) {
    return sseResponse(c, turn, "text", idn, req.includeUsage, (outcome) =>
      logEvent("info", { event: "stream_end", request_id: c.get("requestId"), outcome }));
  }
  const { text, done } = await collect(turn);
  return c.json(textCompletion(idn, text, done.finish_reason, done.usage), 200);
});
