// Schemas of the Responses and Conversations APIs (OpenAI's shapes, the subset this API serves):
// the routes validate with them and openapi.yaml is generated from them.
import { z } from "zod";
import { CONVERSATION_ID, ITEM_ID, RESPONSE_ID } from "../chain/ids";
import { hasLoneSurrogate } from "../text";
import { SUPPORTED_ONLY } from "./schemas";

const nullish = <T extends z.ZodType>(t: T) => t.nullable().optional();
const text = () => z.string().refine((s) => !hasLoneSurrogate(s), "Invalid input: the string contains an unpaired UTF-16 surrogate");
const IGNORED = "Accepted and ignored.";

export const responseId = z.string().regex(RESPONSE_ID, "Invalid input: not a response id (resp_…)");
export const conversationId = z.string().regex(CONVERSATION_ID, "Invalid input: not a conversation id (conv_…)");
export const itemId = z.string().regex(ITEM_ID, "Invalid input: not an item id (msg_…)");
export const metadata = z.record(z.string().max(64), z.string().max(512))
  .refine((m) => Object.keys(m).length <= 16, "Invalid input: at most 16 metadata keys");

const ITEM_TYPES = "Invalid input: an item must be a message ({\"role\": \"user\"|\"system\"|\"developer\"|\"assistant\", \"content\": "
  + "a string or input_text/output_text parts}); other item types (tool calls, files, images, reasoning) are not supported";
const contentPart = z.union([
  z.strictObject({ type: z.literal("input_text"), text: text() }),
  z.strictObject({ type: z.literal("output_text"), text: text(), annotations: z.array(z.unknown()).max(0).optional() }),
], { error: "Invalid input: a content part must be input_text or output_text; images, files and audio are not supported" });

export const inputItem = z.strictObject({
  type: z.literal("message", { error: ITEM_TYPES }).optional(),
  role: z.enum(["user", "system", "developer", "assistant"]),
  content: z.union([text(), z.array(contentPart).min(1)], { error: "Invalid input: content must be a string or a non-empty array of input_text parts" }),
  id: z.string().max(64).optional().meta({ description: IGNORED }),
  status: z.string().max(32).optional().meta({ description: IGNORED }),
}).meta({ id: "InputMessage" });

SUPPORTED_ONLY.set("text", '{"format": {"type": "text"}} (json_object and json_schema are not supported, as in chat)');
SUPPORTED_ONLY.set("tools", "an empty array (tool calling is not supported)");
SUPPORTED_ONLY.set("tool_choice", '"none" or "auto"');

export const responseRequestSchema = z.strictObject({
  model: z.string().min(1).max(256),
  input: z.union([text(), z.array(inputItem).min(1).max(4096)], { error: ITEM_TYPES }),
  instructions: nullish(text()).meta({ description: "A system message before the input; not carried over to later responses." }),
  previous_response_id: nullish(responseId).meta({ description: "Continue this response's chain (its history is the context)." }),
  conversation: nullish(z.union([conversationId, z.strictObject({ id: conversationId })]))
    .meta({ description: "Continue this conversation; its input and output are appended to it." }),
  store: nullish(z.boolean()).meta({ description: "Default true. false: nothing is stored (the response cannot be continued or retrieved)." }),
  stream: nullish(z.boolean()),
  max_output_tokens: nullish(z.int().min(1).max(1_000_000)),
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().gt(0).max(1)),
  metadata: nullish(metadata),
  text: nullish(z.strictObject({ format: z.strictObject({ type: z.literal("text") }).optional(), verbosity: nullish(z.string()) }))
    .meta({ description: 'Only {"format": {"type": "text"}}; other formats: 400 unsupported_parameter.' }),
  truncation: nullish(z.enum(["auto", "disabled"])).meta({ description: "Default disabled (as at OpenAI): a conversation that "
    + "outgrew the context window is a 400 context_length_exceeded; auto drops the oldest tokens as the sliding cache does." }),
  tools: nullish(z.array(z.unknown()).max(0)).meta({ description: "Only an empty array." }),
  tool_choice: nullish(z.enum(["none", "auto"])).meta({ description: 'Only "none" or "auto".' }),
  parallel_tool_calls: nullish(z.boolean()).meta({ description: IGNORED }),
  user: z.string().max(256).optional().meta({ description: IGNORED }),
  safety_identifier: z.string().max(256).optional().meta({ description: IGNORED }),
  prompt_cache_key: z.string().max(256).optional().meta({ description: IGNORED }),
  service_tier: nullish(z.string()).meta({ description: IGNORED }),
}).refine((r) => !(r.previous_response_id && r.conversation), {
  path: ["conversation"], message: "Invalid input: previous_response_id and conversation cannot both be set",
}).meta({ id: "ResponseRequest" });

export type ResponseRequest = z.infer<typeof responseRequestSchema>;

const outputText = z.strictObject({ type: z.literal("output_text"), text: z.string(), annotations: z.array(z.unknown()).max(0), logprobs: z.array(z.unknown()).max(0) });
export const OutputMessage = z.strictObject({
  id: itemId,
  type: z.literal("message"),
  status: z.enum(["in_progress", "completed", "incomplete"]),
  role: z.literal("assistant"),
  content: z.array(outputText),
}).meta({ id: "OutputMessage" });

export const ResponseUsage = z.strictObject({
  input_tokens: z.int().min(0),
  input_tokens_details: z.strictObject({ cached_tokens: z.int().min(0).meta({ description: "Input tokens served from the chain's cache." }) }),
  output_tokens: z.int().min(0),
  output_tokens_details: z.strictObject({ reasoning_tokens: z.literal(0) }),
  total_tokens: z.int().min(0),
}).meta({ id: "ResponseUsage" });

export const ResponseObject = z.strictObject({
  id: responseId,
  object: z.literal("response"),
  created_at: z.int(),
  status: z.enum(["in_progress", "completed", "incomplete", "failed"]),
  error: z.strictObject({ code: z.string(), message: z.string() }).nullable(),
  incomplete_details: z.strictObject({ reason: z.literal("max_output_tokens") }).nullable(),
  instructions: z.string().nullable(),
  max_output_tokens: z.int().nullable(),
  model: z.string(),
  output: z.array(OutputMessage).max(1),
  parallel_tool_calls: z.boolean(),
  previous_response_id: responseId.nullable(),
  conversation: z.strictObject({ id: conversationId }).nullable(),
  metadata,
  store: z.boolean(),
  temperature: z.number(),
  top_p: z.number(),
  text: z.strictObject({ format: z.strictObject({ type: z.literal("text") }) }),
  tool_choice: z.enum(["none", "auto"]),
  tools: z.array(z.unknown()).max(0),
  truncation: z.enum(["auto", "disabled"]),
  usage: z.union([ResponseUsage, z.null()]).meta({ description: "null while in progress and when failed." }),
  user: z.string().nullable(),
}).meta({ id: "Response" });

export type ResponseBody = z.infer<typeof ResponseObject>;
export type OutputMessageBody = z.infer<typeof OutputMessage>;

export const MessageItem = z.strictObject({
  id: itemId,
  type: z.literal("message"),
  status: z.literal("completed"),
  role: z.enum(["user", "system", "developer", "assistant"]),
  content: z.array(z.union([
    z.strictObject({ type: z.literal("input_text"), text: z.string() }),
    outputText,
  ])),
}).meta({ id: "MessageItem" });
export type MessageItemBody = z.infer<typeof MessageItem>;

export const ItemList = z.strictObject({
  object: z.literal("list"),
  data: z.array(MessageItem),
  first_id: itemId.nullable(),
  last_id: itemId.nullable(),
  has_more: z.boolean(),
}).meta({ id: "ItemList" });

export const ResponseDeleted = z.strictObject({ id: responseId, object: z.literal("response"), deleted: z.literal(true) })
  .meta({ id: "ResponseDeleted" });

export const pageQuery = z.object({
  after: itemId.optional().meta({ description: "An item id: list the items after it (in the chosen order)." }),
  limit: z.coerce.number().int().min(1).max(100).default(20),
  order: z.enum(["asc", "desc"]).default("desc"),
});

const queryBool = () => z.enum(["true", "false"]).transform((v) => v === "true");
const NOT_A_SEQUENCE_NUMBER = "Invalid input: expected an integer >= 0 (an event's sequence_number)";

export const retrieveQuery = z.object({
  stream: queryBool().optional().meta({ description: "true: the stored response's stream events as SSE, as a "
    + "`stream: true` create sent them (its whole text in one response.output_text.delta). Default false: the response object." }),
  // a query value is a string: a decimal number becomes a number for the integer check; anything else is refused as is
  starting_after: z.preprocess((v) => (typeof v === "string" && /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v),
    z.int({ error: NOT_A_SEQUENCE_NUMBER }).min(0, { error: NOT_A_SEQUENCE_NUMBER })).optional()
    .meta({ description: "With stream=true: only the events whose sequence_number is greater than this." }),
  include_obfuscation: queryBool().optional().meta({ description: IGNORED }),
});

/** One event of a streamed response: `event: <type>` and `data: <event JSON>`. */
export const ResponseStreamEvent = z.object({
  event: z.string(),
  data: z.string().meta({ contentMediaType: "application/json", description: "The event object: `type` (the same as `event`), "
    + "`sequence_number`, and the event's fields (`response`, `item`, `part`, `delta`, `text`, or for `error`: `code`, `message`, `param`)." }),
}).meta({ description: "response.created, response.in_progress, response.output_item.added, response.content_part.added, "
  + "response.output_text.delta…, response.output_text.done, response.content_part.done, response.output_item.done, then "
  + "response.completed or response.incomplete; a failure after the start: error, then response.failed." });
