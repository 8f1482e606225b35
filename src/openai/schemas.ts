// Request schemas for the OpenAI endpoints: the routes validate with them and openapi.yaml is
// generated from them. Unknown fields are rejected like OpenAI does; fields we accept but whose
// non-default values change semantics we do not implement are rejected in openai/normalize.ts.
// docs/edge.md has the full table.
import { z } from "zod";
import { sessionIdSchema } from "../session/key";
import { hasLoneSurrogate } from "../text";

const nullish = <T extends z.ZodType>(t: T) => t.nullable().optional();

const LONE_SURROGATE = "Invalid input: the string contains an unpaired UTF-16 surrogate";
const text = () => z.string().refine((s) => !hasLoneSurrogate(s), LONE_SURROGATE);

const textPart = z.strictObject({ type: z.literal("text"), text: text() });
const content = z.union([text(), z.array(textPart).min(1)], {
  error: "Invalid input: content must be a string or a non-empty array of text parts ({\"type\": \"text\", \"text\": ...}); image, audio and file parts are not supported",
});

export const messageSchema = z.strictObject({
  role: z.enum(["system", "developer", "user", "assistant"]),
  content,
  name: z.string().max(256).optional(), // accepted, not rendered (our chat template has no names)
  refusal: z.null().optional(),
}).meta({ id: "Message" });

const stopString = text().min(1).max(64);
const stop = nullish(z.union([stopString, z.array(stopString).max(4)], {
  error: "Invalid input: stop must be a string or an array of at most 4 strings, each 1-64 characters",
})).meta({ id: "Stop" });
const maxTokens = nullish(z.int().min(1).max(1_000_000));

const IGNORED = "Accepted and ignored.";

/**
 * Fields whose other values would change the output in ways this API does not implement: the
 * schema (and so the spec) admits only the supported values; anything else is a 400
 * unsupported_parameter naming the field (openai/validate.ts). Field -> what is supported.
 */
export const SUPPORTED_ONLY = new Map<string, string>();
function supportedOnly<T extends z.ZodType>(field: string, schema: T, what: string): T {
  SUPPORTED_ONLY.set(field, what);
  return schema.meta({ description: `Only ${what}; other values: 400 unsupported_parameter.` });
}

/** Fields both endpoints share. */
const common = {
  model: z.string().min(1).max(256),
  max_tokens: maxTokens.meta({ description: "chat: deprecated alias of max_completion_tokens; completions: default 16." }),
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().gt(0).max(1)),
  stop,
  // any 64-bit integer, as at OpenAI: beyond 2^53 the body reader hands it over exactly, as a BigInt
  // (middleware/json-body.ts); normalize folds it into the range the GPU service takes
  seed: nullish(z.union([
    z.number().refine(Number.isInteger, "Invalid input: seed must be an integer")
      .refine(Number.isSafeInteger, "Invalid input: seed must be a 64-bit integer"),
    z.bigint().min(-(2n ** 63n), "Invalid input: seed must be a 64-bit integer")
      .max(2n ** 63n - 1n, "Invalid input: seed must be a 64-bit integer"),
  ], { error: "Invalid input: seed must be a 64-bit integer" }))
    .meta({ type: ["integer", "null"], minimum: -(2n ** 63n), maximum: 2n ** 63n - 1n, description: "Any 64-bit integer." } as Record<string, unknown>),
  n: supportedOnly("n", nullish(z.literal(1)), "1"),
  stream: nullish(z.boolean()),
  stream_options: nullish(z.strictObject({ include_usage: z.boolean().optional(), include_obfuscation: z.boolean().optional() }))
    .meta({ id: "StreamOptions", description: "Only with stream: true." }),
  user: z.string().max(256).optional().meta({ description: IGNORED }),
  frequency_penalty: supportedOnly("frequency_penalty", nullish(z.literal(0)), "0"),
  presence_penalty: supportedOnly("presence_penalty", nullish(z.literal(0)), "0"),
  logit_bias: supportedOnly("logit_bias", nullish(z.strictObject({})), "an empty object"),
  metadata: nullish(z.record(z.string(), z.string())).meta({ description: IGNORED }),
  service_tier: nullish(z.string()).meta({ description: IGNORED }),
  store: nullish(z.boolean()).meta({ description: IGNORED }),
  safety_identifier: z.string().max(256).optional().meta({ description: IGNORED }),
};

/** stream_options is only for streaming requests (OpenAI refuses it otherwise too). */
const STREAM_OPTIONS_NEED_STREAM = {
  if: { required: ["stream_options"], properties: { stream_options: { type: "object" } } },
  then: { required: ["stream"], properties: { stream: { const: true } } },
};

function streamOptionsNeedStream(r: { stream?: boolean | null; stream_options?: object | null }, ctx: z.RefinementCtx): void {
  if (r.stream_options && r.stream !== true) {
    ctx.addIssue({ code: "custom", path: ["stream_options"], message: "stream_options is only allowed when stream is true" });
  }
}

export const chatRequestSchema = z.strictObject({
  ...common,
  prompt_cache_key: sessionIdSchema.optional().meta({ description: "Session to continue." }),
  messages: z.array(messageSchema).min(1).max(4096),
  max_completion_tokens: maxTokens.meta({ description: "Default 256; at most the GPU service's limit (4096 by default), above it 400 with param max_tokens." }),
  logprobs: supportedOnly("logprobs", nullish(z.literal(false)), "false"),
  top_logprobs: supportedOnly("top_logprobs", nullish(z.literal(0)), "0"),
  tools: supportedOnly("tools", nullish(z.array(z.unknown()).max(0)), "an empty array (tool calling is not supported)"),
  tool_choice: supportedOnly("tool_choice", nullish(z.enum(["none", "auto"])), '"none" or "auto"'),
  parallel_tool_calls: nullish(z.boolean()).meta({ description: IGNORED }),
  functions: supportedOnly("functions", nullish(z.array(z.unknown()).max(0)), "an empty array (function calling is not supported)"),
  function_call: supportedOnly("function_call", nullish(z.enum(["none", "auto"])), '"none" or "auto"'),
  response_format: supportedOnly("response_format", nullish(z.object({ type: z.literal("text") }).loose()),
    '{"type": "text"} (json_object and json_schema are not supported)'),
  modalities: supportedOnly("modalities", nullish(z.array(z.literal("text"))), '["text"]'),
  audio: supportedOnly("audio", nullish(z.null()), "null"),
  prediction: supportedOnly("prediction", nullish(z.null()), "null"),
  web_search_options: supportedOnly("web_search_options", nullish(z.null()), "null"),
  reasoning_effort: nullish(z.string()).meta({ description: IGNORED }),
  verbosity: nullish(z.string()).meta({ description: IGNORED }),
}).superRefine(streamOptionsNeedStream).meta({ id: "ChatCompletionRequest", ...STREAM_OPTIONS_NEED_STREAM });

export const completionRequestSchema = z.strictObject({
  ...common,
  prompt: z.union([text(), z.array(text()).min(1).max(1)], {
    error: "Invalid input: prompt must be a string or an array of exactly one string; token arrays and batches are not supported",
  }),
  echo: supportedOnly("echo", nullish(z.literal(false)), "false"),
  logprobs: supportedOnly("logprobs", nullish(z.literal(0)), "0"),
  suffix: supportedOnly("suffix", nullish(z.literal("")), "an empty string"),
  best_of: supportedOnly("best_of", nullish(z.literal(1)), "1"),
  prompt_cache_key: z.string().optional().meta({ description: "Accepted and ignored (completions are stateless)." }),
}).superRefine(streamOptionsNeedStream).meta({ id: "CompletionRequest", ...STREAM_OPTIONS_NEED_STREAM });

export type ChatRequest = z.infer<typeof chatRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;
export type MessageIn = z.infer<typeof messageSchema>;
