// The Conversations API: a conversation is a Durable Object of its own (like a response chain),
// holding its items and the condensed cache of its latest turn; POST /v1/responses with
// `conversation` continues it and appends the turn's input and output.
import { createRoute } from "@hono/zod-openapi";
import { z } from "zod";
import { chainKeyOf, chainStub, newConversationId, newItemId } from "../chain/ids";
import type { ConversationRecord } from "../chain/types";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";
import { jsonBody } from "../middleware/json-body";
import { AUTHENTICATED, errorResponses } from "../openai/error-responses";
import { itemList, messageItem } from "../openai/response-object";
import { conversationId, inputItem, itemId, ItemList, MessageItem, metadata, pageQuery } from "../openai/responses-schemas";
import { conversationNotFound } from "../session/chain-turn";
import { OK_HEADERS } from "./headers";
import { router } from "./router";
import type { Context } from "hono";

const Conversation = z.strictObject({ id: conversationId, object: z.literal("conversation"), created_at: z.int(), metadata })
  .meta({ id: "Conversation" });
const ConversationDeleted = z.strictObject({ id: conversationId, object: z.literal("conversation.deleted"), deleted: z.literal(true) })
  .meta({ id: "ConversationDeleted" });
const items = z.array(inputItem).max(20);

const json = <T extends z.ZodType>(schema: T) => ({ required: true, content: { "application/json": { schema } } });
const ok = <T extends z.ZodType>(description: string, schema: T) =>
  ({ description, headers: OK_HEADERS, content: { "application/json": { schema } } });
const convParams = z.object({ conversation_id: conversationId });
const itemParams = z.object({ conversation_id: conversationId, item_id: itemId });

const route = <M extends "get" | "post" | "delete", P extends string>(method: M, path: P, operationId: string, summary: string) =>
  ({ method, path, operationId, summary, tags: ["conversations"] });

export const createConversationRoute = createRoute({
  ...route("post", "/v1/conversations", "createConversation", "Create a conversation, optionally with initial items (at most 20)."),
  middleware: [jsonBody()] as const,
  request: { body: json(z.strictObject({ items: items.nullable().optional(), metadata: metadata.nullable().optional() })) },
  responses: { 200: ok("The conversation.", Conversation), ...errorResponses(...AUTHENTICATED, 400, 413, 415) },
});
export const getConversationRoute = createRoute({
  ...route("get", "/v1/conversations/{conversation_id}", "getConversation", "A conversation."),
  request: { params: convParams },
  responses: { 200: ok("The conversation.", Conversation), ...errorResponses(...AUTHENTICATED, 400, 404) },
});
export const updateConversationRoute = createRoute({
  ...route("post", "/v1/conversations/{conversation_id}", "updateConversation", "Replace a conversation's metadata."),
  middleware: [jsonBody()] as const,
  request: { params: convParams, body: json(z.strictObject({ metadata })) },
  responses: { 200: ok("The conversation.", Conversation), ...errorResponses(...AUTHENTICATED, 400, 404, 413, 415) },
});
export const deleteConversationRoute = createRoute({
  ...route("delete", "/v1/conversations/{conversation_id}", "deleteConversation", "Delete a conversation, its items and its cache."),
  request: { params: convParams },
  responses: { 200: ok("Deleted.", ConversationDeleted), ...errorResponses(...AUTHENTICATED, 400, 404, 409) },
});
export const listItemsRoute = createRoute({
  ...route("get", "/v1/conversations/{conversation_id}/items", "listConversationItems", "A conversation's items, paginated."),
  request: { params: convParams, query: pageQuery },
  responses: { 200: ok("A page of items.", ItemList), ...errorResponses(...AUTHENTICATED, 400, 404) },
});
export const addItemsRoute = createRoute({
  ...route("post", "/v1/conversations/{conversation_id}/items", "createConversationItems", "Append items (at most 20) to a conversation."),
  middleware: [jsonBody()] as const,
  request: { params: convParams, body: json(z.strictObject({ items: items.min(1) })) },
  responses: { 200: ok("The added items.", ItemList), ...errorResponses(...AUTHENTICATED, 400, 404, 409, 413, 415) },
});
export const getItemRoute = createRoute({
  ...route("get", "/v1/conversations/{conversation_id}/items/{item_id}", "getConversationItem", "One item of a conversation."),
  request: { params: itemParams },
  responses: { 200: ok("The item.", MessageItem), ...errorResponses(...AUTHENTICATED, 400, 404) },
});
export const deleteItemRoute = createRoute({
  ...route("delete", "/v1/conversations/{conversation_id}/items/{item_id}", "deleteConversationItem",
    "Delete an item; the next turn rebuilds the cache from the remaining items."),
  request: { params: itemParams },
  responses: { 200: ok("The conversation.", Conversation), ...errorResponses(...AUTHENTICATED, 400, 404, 409) },
});

export const conversations = router();

const stub = (c: Context<AppEnv>, id: string) => chainStub(c.env, c.get("tenant"), chainKeyOf(id)!);
const busy = () => new ApiError(409, "A turn of this conversation is in progress; try again when it has finished.",
  { code: "session_busy", shouldRetry: false });
const itemNotFound = (id: string) => new ApiError(404, `Item with id '${id}' not found.`, { param: "item_id", code: "item_not_found" });
const toRecords = (list: z.infer<typeof items>, now: number) => list.map((m) => ({ id: newItemId(), role: m.role, created_at: now,
  content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join("") }));
const view = (conv: ConversationRecord) => ({ id: conv.id, object: "conversation" as const, created_at: conv.created_at, metadata: conv.metadata });

async function existing(c: Context<AppEnv>, id: string): Promise<ConversationRecord> {
  const conv = await stub(c, id).conversation(id);
  if (!conv) throw conversationNotFound(id, "conversation_id");
  return conv;
}

conversations.openapi(createConversationRoute, async (c) => {
  const body = c.req.valid("json");
  const now = Math.floor(Date.now() / 1000);
  const conv: ConversationRecord = { id: newConversationId(), metadata: body.metadata ?? {}, created_at: now };
  await stub(c, conv.id).createConversation(conv, toRecords(body.items ?? [], now));
  return c.json(view(conv), 200);
});

conversations.openapi(getConversationRoute, async (c) => c.json(view(await existing(c, c.req.valid("param").conversation_id)), 200));

conversations.openapi(updateConversationRoute, async (c) => {
  const id = c.req.valid("param").conversation_id;
  const conv = await stub(c, id).updateConversation(id, c.req.valid("json").metadata);
  if (!conv) throw conversationNotFound(id, "conversation_id");
  return c.json(view(conv), 200);
});

conversations.openapi(deleteConversationRoute, async (c) => {
  const id = c.req.valid("param").conversation_id;
  const r = await stub(c, id).deleteConversation(id);
  if (r === "not_found") throw conversationNotFound(id, "conversation_id");
  if (r === "busy") throw busy();
  return c.json({ id, object: "conversation.deleted" as const, deleted: true as const }, 200);
});

conversations.openapi(listItemsRoute, async (c) => {
  const id = c.req.valid("param").conversation_id;
  const page = await stub(c, id).items(c.req.valid("query"), id);
  if (!page) throw conversationNotFound(id, "conversation_id");
  return c.json(itemList(page.data, page.has_more), 200);
});

conversations.openapi(addItemsRoute, async (c) => {
  const id = c.req.valid("param").conversation_id;
  const added = toRecords(c.req.valid("json").items, Math.floor(Date.now() / 1000));
  const r = await stub(c, id).addItems(id, added);
  if (r === "not_found") throw conversationNotFound(id, "conversation_id");
  if (r === "busy") throw busy();
  return c.json(itemList(added, false), 200);
});

conversations.openapi(getItemRoute, async (c) => {
  const { conversation_id: id, item_id: itemId } = c.req.valid("param");
  await existing(c, id);
  const item = await stub(c, id).item(id, itemId);
  if (!item) throw itemNotFound(itemId);
  return c.json(messageItem(item), 200);
});

conversations.openapi(deleteItemRoute, async (c) => {
  const { conversation_id: id, item_id: itemId } = c.req.valid("param");
  const r = await stub(c, id).deleteItem(id, itemId);
  if (r === "not_found") {
    await existing(c, id);
    throw itemNotFound(itemId);
  }
  if (r === "busy") throw busy();
  return c.json(view(await existing(c, id)), 200);
});
