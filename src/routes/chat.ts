// POST /v1/chat/completions: content-type + size -> validate -> model -> session or stateless turn
// -> SSE or a chat.completion object.
import { createRoute } from "@hono/zod-openapi";
import { z } from "zod";
import { loadConfig } from "../config";
import { sessionTurn, statelessTurn } from "../generation";
import { logEvent } from "../log";
import { jsonBody } from "../middleware/json-body";
import { collect } from "../openai/collect";
import { AUTHENTICATED, errorResponses } from "../openai/error-responses";
import { normalizeChat } from "../openai/normalize";
import { ChatCompletion, sseEvent } from "../openai/response-schemas";
import { chatCompletion, newId } from "../openai/responses";
import { chatRequestSchema } from "../openai/schemas";
import { sseResponse } from "../openai/sse";
import { resolveSessionId, sessionIdHeader, sessionIdHeaderSchema } from "../session/key";
import { requireModel } from "../upstream/models";
import { OK_HEADERS } from "./headers";
import { router } from "./router";

export const chatRoute = createRoute({
  method: "post",
  path: "/v1/chat/completions",
  tags: ["generation"],
  operationId: "createChatCompletion",
  summary: "Create a chat completion (streaming or not), optionally continuing a session.",
  middleware: [jsonBody()] as const,
  request: {
    headers: z.object({ "x-session-id": sessionIdHeaderSchema.optional() }),
    body: { required: true, content: { "application/json": { schema: chatRequestSchema } } },
  },
  responses: {
    200: {
      description: "`stream: false`: a `chat.completion` object. `stream: true`: an SSE stream of `chat.completion.chunk` "
        + "objects (schema ChatCompletionChunk): first a chunk with `delta: {role: \"assistant\", content: \"\"}`, then content "
        + "chunks, then a chunk with `finish_reason`; with `stream_options.include_usage` every chunk has `usage: null` and a "
        + "last chunk has `choices: []` and `usage`; then `data: [DONE]`.",
      headers: { ...OK_HEADERS, "x-session-id": { $ref: "#/components/headers/SessionIdEcho" } },
      content: {
        "application/json": { schema: ChatCompletion },
        "text/event-stream": { schema: sseEvent("ChatCompletionChunk") },
      },
    },
    ...errorResponses(...AUTHENTICATED, 400, 404, 409, 413, 415, 502, 503, 504),
  },
});

export const chat = router();

chat.openapi(chatRoute, async (c) => {
  const body = c.req.valid("json");
  const req = normalizeChat(body);
  const sessionId = resolveSessionId(body.prompt_cache_key, c.req.header("x-session-id") ?? null);
  await requireModel(loadConfig(c.env), req.model);

  let turn;
  if (sessionId !== undefined) {
    c.set("sessionId", sessionId);
    const echo = sessionIdHeader(sessionId);
    if (echo !== null) c.header("x-session-id", echo);
    turn = await sessionTurn(c, sessionId, { model: req.model, messages: req.messages, sampling: req.sampling });
  } else {
    turn = await statelessTurn(c, { model: req.model, kind: "chat", messages: req.messages, sampling: req.sampling });
  }
  const idn = { id: newId("chatcmpl"), created: turn.start.created, model: req.model };
  if (req.stream) {
    return sseResponse(c, turn, "chat", idn, req.includeUsage, (outcome) =>
      logEvent("info", { event: "stream_end", request_id: c.get("requestId"), outcome }));
  }
  const { text, done } = await collect(turn);
  return c.json(chatCompletion(idn, text, done.finish_reason, done.usage), 200);
});
