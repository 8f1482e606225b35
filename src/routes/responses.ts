// The Responses API: POST /v1/responses (a turn, continuing a chain or a conversation, streamed or
// not), GET/DELETE /v1/responses/{id} (GET with stream=true replays the stored response's stream
// events), GET /v1/responses/{id}/input_items. Stored responses live in their chain's Durable
// Object, scoped to the tenant (src/chain/ids.ts).
import { createRoute } from "@hono/zod-openapi";
import { z } from "zod";
import { chainKeyOf, chainStub, newItemId } from "../chain/ids";
import type { ItemRecord } from "../chain/types";
import { loadConfig } from "../config";
import { logEvent } from "../log";
import { jsonBody } from "../middleware/json-body";
import { collect } from "../openai/collect";
import { AUTHENTICATED, errorResponses } from "../openai/error-responses";
import { finished, fromRecord, itemList, type ResponseTemplate } from "../openai/response-object";
import { storedResponseEvents } from "../openai/response-events";
import { replayStream, responseStream } from "../openai/response-sse";
import { ItemList, pageQuery, ResponseDeleted, responseId, ResponseObject, responseRequestSchema, ResponseStreamEvent,
  retrieveQuery, type ResponseRequest } from "../openai/responses-schemas";
import { responseNotFound } from "../session/chain-turn";
import { responseTurn } from "../session/response-service";
import { requireModel } from "../upstream/models";
import type { Sampling } from "../upstream/types";
import { OK_HEADERS } from "./headers";
import { router } from "./router";

export const createResponseRoute = createRoute({
  method: "post",
  path: "/v1/responses",
  tags: ["responses"],
  operationId: "createResponse",
  summary: "Create a model response, optionally continuing a previous response or a conversation.",
  middleware: [jsonBody()] as const,
  request: { body: { required: true, content: { "application/json": { schema: responseRequestSchema } } } },
  responses: {
    200: {
      description: "`stream: false`: the response object. `stream: true`: its typed SSE events (see ResponseStreamEvent).",
      headers: OK_HEADERS,
      content: { "application/json": { schema: ResponseObject }, "text/event-stream": { schema: ResponseStreamEvent } },
    },
    ...errorResponses(...AUTHENTICATED, 400, 404, 409, 413, 415, 502, 503, 504),
  },
});

const params = z.object({ response_id: responseId });

export const getResponseRoute = createRoute({
  method: "get", path: "/v1/responses/{response_id}", tags: ["responses"], operationId: "getResponse",
  summary: "A stored response (the caller's own; a stored chain expires RESPONSE_TTL_SECONDS after its last turn), "
    + "or with stream=true its stream events replayed.",
  request: { params, query: retrieveQuery },
  responses: {
    200: {
      description: "The response; with stream=true its typed SSE events (see ResponseStreamEvent), after starting_after if given.",
      headers: OK_HEADERS,
      content: { "application/json": { schema: ResponseObject }, "text/event-stream": { schema: ResponseStreamEvent } },
    },
    ...errorResponses(...AUTHENTICATED, 400, 404),
  },
});

export const deleteResponseRoute = createRoute({
  method: "delete", path: "/v1/responses/{response_id}", tags: ["responses"], operationId: "deleteResponse",
  summary: "Delete a stored response (it can no longer be retrieved or continued).",
  request: { params },
  responses: {
    200: { description: "Deleted.", headers: OK_HEADERS, content: { "application/json": { schema: ResponseDeleted } } },
    ...errorResponses(...AUTHENTICATED, 400, 404),
  },
});

export const inputItemsRoute = createRoute({
  method: "get", path: "/v1/responses/{response_id}/input_items", tags: ["responses"], operationId: "listInputItems",
  summary: "The input items of a stored response, paginated (after, limit, order).",
  request: { params, query: pageQuery },
  responses: {
    200: { description: "A page of items.", headers: OK_HEADERS, content: { "application/json": { schema: ItemList } } },
    ...errorResponses(...AUTHENTICATED, 400, 404),
  },
});

export const responses = router();

function inputItems(input: ResponseRequest["input"], now: number): ItemRecord[] {
  if (typeof input === "string") return [{ id: newItemId(), role: "user", content: input, created_at: now }];
  return input.map((m) => ({ id: newItemId(), role: m.role, created_at: now,
    content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join("") }));
}

responses.openapi(createResponseRoute, async (c) => {
  const body = c.req.valid("json");
  await requireModel(loadConfig(c.env), body.model);
  const now = Math.floor(Date.now() / 1000);
  const conversationId = typeof body.conversation === "string" ? body.conversation : body.conversation?.id ?? null;
  const store = body.store !== false;
  const template: ResponseTemplate = {
    object: "response", created_at: now, instructions: body.instructions ?? null, max_output_tokens: body.max_output_tokens ?? null,
    model: body.model, parallel_tool_calls: body.parallel_tool_calls ?? true, previous_response_id: body.previous_response_id ?? null,
    conversation: conversationId !== null ? { id: conversationId } : null, metadata: body.metadata ?? {}, store,
    temperature: body.temperature ?? 1, top_p: body.top_p ?? 1, text: { format: { type: "text" } },
    tool_choice: body.tool_choice ?? "auto", tools: [], truncation: body.truncation ?? "disabled", user: body.user ?? null,
  };
  // OpenAI's default temperature is 1 (sampling); the GPU service's own default is greedy, so always say it
  const sampling: Sampling = { temperature: template.temperature };
  if (body.top_p != null) sampling.top_p = body.top_p;
  if (body.max_output_tokens != null) sampling.max_tokens = body.max_output_tokens;
  const outputId = newItemId();
  const { responseId: id, turn } = await responseTurn(c, {
    model: body.model, sampling, previousResponseId: body.previous_response_id ?? null, conversationId, store,
    turn: { instructions: template.instructions, input: inputItems(body.input, now), outputItemId: outputId, template,
      allowTrim: template.truncation === "auto" },
  });
  if (body.stream) {
    return responseStream(c, turn, id, template, outputId, (outcome) =>
      logEvent("info", { event: "stream_end", request_id: c.get("requestId"), outcome }));
  }
  const { text, done } = await collect(turn);
  return c.json(finished(id, template, outputId, text, done.finish_reason, done.usage), 200);
});

const stubFor = (c: { env: Parameters<typeof chainStub>[0]; get(k: "tenant"): string }, id: string) =>
  chainStub(c.env, c.get("tenant"), chainKeyOf(id)!);

responses.openapi(getResponseRoute, async (c) => {
  const id = c.req.valid("param").response_id;
  const { stream, starting_after: after = -1 } = c.req.valid("query");
  const record = await stubFor(c, id).response(id);
  if (!record) throw responseNotFound(id, "response_id");
  if (stream) return replayStream(c, storedResponseEvents(record).filter((ev) => ev.sequence_number > after));
  return c.json(fromRecord(record), 200);
});

responses.openapi(deleteResponseRoute, async (c) => {
  const id = c.req.valid("param").response_id;
  if (!(await stubFor(c, id).deleteResponse(id))) throw responseNotFound(id, "response_id");
  return c.json({ id, object: "response" as const, deleted: true as const }, 200);
});

responses.openapi(inputItemsRoute, async (c) => {
  const id = c.req.valid("param").response_id;
  const page = await stubFor(c, id).items(c.req.valid("query"), id);
  if (!page) throw responseNotFound(id, "response_id");
  return c.json(itemList(page.data, page.has_more), 200);
});
