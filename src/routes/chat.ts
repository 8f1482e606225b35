// POST /v1/chat/completions: content-type + size -> validate -> model -> session or stateless turn
// -> SSE or a chat.completion object.
import { Hono } from "hono";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { sessionTurn, statelessTurn } from "../generation";
import { readJsonBody } from "../middleware/json-body";
import { collect } from "../openai/collect";
import { normalizeChat } from "../openai/normalize";
import { chatCompletion, newId } from "../openai/responses";
import { chatRequestSchema } from "../openai/schemas";
import { sseResponse } from "../openai/sse";
import { parseWith } from "../openai/validate";
import { resolveSessionId, sessionIdHeader } from "../session/key";
import { logEvent } from "../log";
import { requireModel } from "../upstream/models";

export const chat = new Hono<AppEnv>();

chat.post("/v1/chat/completions", async (c) => {
  const body = parseWith(chatRequestSchema, await readJsonBody(c));
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
  return c.json(chatCompletion(idn, text, done.finish_reason, done.usage));
});
