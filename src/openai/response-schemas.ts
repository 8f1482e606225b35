// Response schemas of the public API (OpenAI's shapes, as this API sends them). The routes declare
// them, openapi.yaml is generated from them, and the builders in responses.ts are typed by them.
import { z } from "zod";
import { sessionIdSchema } from "../session/key";

export const ErrorType = z.enum(["invalid_request_error", "authentication_error", "permission_error", "not_found_error",
  "rate_limit_error", "server_error"]);

export const ErrorResponse = z.strictObject({
  error: z.strictObject({
    message: z.string(),
    type: ErrorType,
    param: z.string().nullable(),
    code: z.string().nullable(),
  }),
}).meta({ id: "ErrorResponse" });

export const Usage = z.strictObject({
  prompt_tokens: z.int().min(0),
  completion_tokens: z.int().min(0),
  total_tokens: z.int().min(0),
  prompt_tokens_details: z.strictObject({
    cached_tokens: z.int().min(0).meta({ description: "Prompt tokens served from the session's cache." }),
  }),
}).meta({ id: "Usage" });

export const FinishReason = z.enum(["stop", "length"]).meta({ id: "FinishReason" });

export const ChatCompletion = z.strictObject({
  id: z.string().regex(/^chatcmpl-/),
  object: z.literal("chat.completion"),
  created: z.int(),
  model: z.string(),
  choices: z.array(z.strictObject({
    index: z.literal(0),
    message: z.strictObject({ role: z.literal("assistant"), content: z.string(), refusal: z.null() }),
    logprobs: z.null(),
    finish_reason: FinishReason,
  })).min(1).max(1),
  usage: Usage,
}).meta({ id: "ChatCompletion" });

export const ChatCompletionChunk = z.strictObject({
  id: z.string().regex(/^chatcmpl-/),
  object: z.literal("chat.completion.chunk"),
  created: z.int(),
  model: z.string(),
  choices: z.array(z.strictObject({
    index: z.literal(0),
    delta: z.strictObject({ role: z.literal("assistant").optional(), content: z.string().optional() }),
    logprobs: z.null(),
    finish_reason: FinishReason.nullable(),
  })).max(1).meta({ description: "Empty only in the final usage chunk." }),
  usage: Usage.nullable().optional()
    .meta({ description: "Present only with stream_options.include_usage; null except on the last chunk." }),
}).meta({ id: "ChatCompletionChunk" });

export const TextChoice = z.strictObject({
  index: z.literal(0),
  text: z.string(),
  logprobs: z.null(),
  finish_reason: FinishReason.nullable(),
}).meta({ id: "TextChoice" });

export const TextCompletion = z.strictObject({
  id: z.string().regex(/^cmpl-/),
  object: z.literal("text_completion"),
  created: z.int(),
  model: z.string(),
  choices: z.array(TextChoice).min(1).max(1),
  usage: Usage,
}).meta({ id: "TextCompletion" });

export const TextCompletionChunk = z.strictObject({
  id: z.string().regex(/^cmpl-/),
  object: z.literal("text_completion"),
  created: z.int(),
  model: z.string(),
  choices: z.array(TextChoice).max(1),
  usage: Usage.nullable().optional(),
}).meta({ id: "TextCompletionChunk" });

/**
 * One event of a completion's SSE stream (OpenAPI 3.1: a text/event-stream schema describes each
 * event): `data` is a chunk or an error object as JSON, or the final `[DONE]`.
 */
export function sseEvent(chunk: "ChatCompletionChunk" | "TextCompletionChunk") {
  return z.object({
    event: z.literal("message").optional(),
    data: z.union([
      z.string().meta({
        contentMediaType: "application/json",
        contentSchema: { oneOf: [{ $ref: `#/components/schemas/${chunk}` }, { $ref: "#/components/schemas/ErrorResponse" }] },
      }),
      z.literal("[DONE]"),
    ]),
  }).meta({ description: `An SSE event; its data is a ${chunk}, an ErrorResponse (then the stream ends), or [DONE].` });
}

export const Model = z.strictObject({
  id: z.string(),
  object: z.literal("model"),
  created: z.int(),
  owned_by: z.string(),
  context_window: z.int().optional()
    .meta({ description: "Tokens a session's condensed cache holds (sinks + window); older ones are evicted." }),
  max_prompt_tokens: z.int().optional().meta({ description: "Longest new prompt one request may carry." }),
}).meta({ id: "Model" });

export const ModelList = z.strictObject({
  object: z.literal("list"),
  data: z.array(Model),
}).meta({ id: "ModelList" });

export const Session = z.strictObject({
  id: sessionIdSchema,
  object: z.literal("session"),
  model: z.string().meta({ description: "Model of the last turn." }),
  turns: z.int().min(1),
  messages: z.int().min(1).meta({ description: "Messages in the transcript (incl. assistant replies)." }),
  tokens_seen: z.int().min(0).meta({ description: "Tokens the conversation has had in total." }),
  cache_tokens: z.int().min(0).meta({ description: "Tokens the condensed cache holds now." }),
  cached_tokens: z.int().min(0).meta({ description: "Tokens the last turn reused from the cache." }),
  cache_bytes: z.int().min(0).meta({ description: "Size of the stored cache blob." }),
  evicted_tokens: z.int().min(0),
  created_at: z.int().meta({ description: "Unix seconds." }),
  updated_at: z.int().meta({ description: "Unix seconds of the last committed turn." }),
  expires_at: z.int().meta({ description: "Unix seconds when the idle session expires (SESSION_TTL_SECONDS)." }),
}).meta({ id: "Session" });

export const SessionDeleted = z.strictObject({
  id: sessionIdSchema,
  object: z.literal("session.deleted"),
  deleted: z.literal(true),
}).meta({ id: "SessionDeleted" });

export const Health = z.strictObject({ status: z.literal("ok") }).meta({ id: "Health" });

export type ChatCompletionBody = z.infer<typeof ChatCompletion>;
export type ChatCompletionChunkBody = z.infer<typeof ChatCompletionChunk>;
export type TextCompletionBody = z.infer<typeof TextCompletion>;
export type TextCompletionChunkBody = z.infer<typeof TextCompletionChunk>;
export type UsageBody = z.infer<typeof Usage>;
export type ModelBody = z.infer<typeof Model>;
