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

/** Fields both endpoints share. */
const common = {
  model: z.string().min(1).max(256),
  max_tokens: maxTokens.meta({ description: "chat: deprecated alias of max_completion_tokens; completions: default 16." }),
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().gt(0).max(1)),
  stop,
  // any 64-bit integer, as at OpenAI (JSON gives JS numbers, exact up to 2^53; normalize folds the rest)
  seed: nullish(z.number().refine(Number.isInteger, "Invalid input: seed must be an integer")
    .min(-(2 ** 63), "Invalid input: seed must be a 64-bit integer").max(2 ** 63, "Invalid input: seed must be a 64-bit integer"))
    .meta({ type: ["integer", "null"], minimum: -(2 ** 63), maximum: 2 ** 63, description: "Any 64-bit integer." }),
  n: nullish(z.int().min(1).max(128)).meta({ description: "Only 1 is supported (other values: 400 unsupported_parameter, param n)." }),
  stream: nullish(z.boolean()),
  stream_options: nullish(z.strictObject({ include_usage: z.boolean().optional(), include_obfuscation: z.boolean().optional() }))
    .meta({ id: "StreamOptions", description: "Only with stream: true." }),
  user: z.string().max(256).optional().meta({ description: IGNORED }),
  frequency_penalty: nullish(z.number().min(-2).max(2)).meta({ description: "Only 0 (or absent)." }),
  presence_penalty: nullish(z.number().min(-2).max(2)).meta({ description: "Only 0 (or absent)." }),
  logit_bias: nullish(z.record(z.string(), z.number())).meta({ description: "Only empty." }),
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
  logprobs: nullish(z.boolean()).meta({ description: "Only false." }),
  top_logprobs: nullish(z.int().min(0).max(20)).meta({ description: "Only 0." }),
  tools: nullish(z.array(z.unknown())).meta({ description: "Tool calling is not supported: only empty." }),
  tool_choice: nullish(z.unknown()).meta({ description: 'Only "none" or "auto".' }),
  parallel_tool_calls: nullish(z.boolean()).meta({ description: IGNORED }),
  functions: nullish(z.array(z.unknown())).meta({ description: "Only empty." }),
  function_call: nullish(z.unknown()).meta({ description: 'Only "none" or "auto".' }),
  response_format: nullish(z.object({ type: z.string() }).loose())
    .meta({ description: 'Only {"type": "text"}; json_object and json_schema are rejected.' }),
  modalities: nullish(z.array(z.string())).meta({ description: 'Only ["text"].' }),
  audio: nullish(z.unknown()).meta({ description: "Rejected when set." }),
  prediction: nullish(z.unknown()).meta({ description: "Rejected when set." }),
  web_search_options: nullish(z.unknown()).meta({ description: "Rejected when set." }),
  reasoning_effort: nullish(z.string()).meta({ description: IGNORED }),
  verbosity: nullish(z.string()).meta({ description: IGNORED }),
}).superRefine(streamOptionsNeedStream).meta({ id: "ChatCompletionRequest", ...STREAM_OPTIONS_NEED_STREAM });

export const completionRequestSchema = z.strictObject({
  ...common,
  prompt: z.union([text(), z.array(z.unknown())])
    .meta({ description: "A string, or an array of exactly one string (token arrays and batches: 400 unsupported_parameter)." }),
  echo: nullish(z.boolean()).meta({ description: "Only false." }),
  logprobs: nullish(z.int().min(0).max(5)).meta({ description: "Only 0." }),
  suffix: nullish(z.string()).meta({ description: "Only empty." }),
  best_of: nullish(z.int().min(1).max(20)).meta({ description: "Only 1." }),
  prompt_cache_key: z.string().optional().meta({ description: "Accepted and ignored (completions are stateless)." }),
}).superRefine(streamOptionsNeedStream).meta({ id: "CompletionRequest", ...STREAM_OPTIONS_NEED_STREAM });

export type ChatRequest = z.infer<typeof chatRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;
export type MessageIn = z.infer<typeof messageSchema>;
