// Request schemas for the OpenAI endpoints. Unknown fields are rejected like OpenAI does; fields
// we accept but whose non-default values change semantics we do not implement are rejected in
// openai/normalize.ts. docs/edge.md has the full table.
import { z } from "zod";
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
});

const stopString = text().min(1).max(64);
const stop = nullish(z.union([stopString, z.array(stopString).max(4)], {
  error: "Invalid input: stop must be a string or an array of at most 4 strings, each 1-64 characters",
}));
const maxTokens = nullish(z.int().min(1).max(1_000_000));

/** Fields both endpoints share. */
const common = {
  model: z.string().min(1).max(256),
  max_tokens: maxTokens,
  temperature: nullish(z.number().min(0).max(2)),
  top_p: nullish(z.number().gt(0).max(1)),
  stop,
  // any 64-bit integer, as at OpenAI (JSON gives JS numbers, exact up to 2^53; normalize folds the rest)
  seed: nullish(z.number().refine(Number.isInteger, "Invalid input: seed must be an integer")
    .min(-(2 ** 63), "Invalid input: seed must be a 64-bit integer").max(2 ** 63, "Invalid input: seed must be a 64-bit integer")),
  n: nullish(z.int().min(1).max(128)),
  stream: nullish(z.boolean()),
  stream_options: nullish(z.strictObject({ include_usage: z.boolean().optional(), include_obfuscation: z.boolean().optional() })),
  user: z.string().max(256).optional(),
  frequency_penalty: nullish(z.number().min(-2).max(2)),
  presence_penalty: nullish(z.number().min(-2).max(2)),
  logit_bias: nullish(z.record(z.string(), z.number())),
  metadata: nullish(z.record(z.string(), z.string())),
  service_tier: nullish(z.string()),
  store: nullish(z.boolean()),
  safety_identifier: z.string().max(256).optional(),
  prompt_cache_key: z.string().optional(), // validated as a session id in session/key.ts
};

export const chatRequestSchema = z.strictObject({
  ...common,
  messages: z.array(messageSchema).min(1).max(4096),
  max_completion_tokens: maxTokens,
  logprobs: nullish(z.boolean()),
  top_logprobs: nullish(z.int().min(0).max(20)),
  tools: nullish(z.array(z.unknown())),
  tool_choice: nullish(z.unknown()),
  parallel_tool_calls: nullish(z.boolean()),
  functions: nullish(z.array(z.unknown())),
  function_call: nullish(z.unknown()),
  response_format: nullish(z.object({ type: z.string() }).loose()),
  modalities: nullish(z.array(z.string())),
  audio: nullish(z.unknown()),
  prediction: nullish(z.unknown()),
  web_search_options: nullish(z.unknown()),
  reasoning_effort: nullish(z.string()),
  verbosity: nullish(z.string()),
});

export const completionRequestSchema = z.strictObject({
  ...common,
  prompt: z.union([text(), z.array(z.unknown())]),
  echo: nullish(z.boolean()),
  logprobs: nullish(z.int().min(0).max(5)),
  suffix: nullish(z.string()),
  best_of: nullish(z.int().min(1).max(20)),
});

export type ChatRequest = z.infer<typeof chatRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;
export type MessageIn = z.infer<typeof messageSchema>;
