// Builders for OpenAI response objects: chat.completion, chat.completion.chunk, text_completion,
// usage (with prompt_tokens_details.cached_tokens reporting cache reuse), typed by the response
// schemas the routes declare.
import type { Usage } from "../upstream/types";
import type { ChatCompletionBody, ChatCompletionChunkBody, TextCompletionBody, TextCompletionChunkBody, UsageBody } from "./response-schemas";

export type FinishReason = "stop" | "length";

export function toUsage(u: Usage): UsageBody {
  return {
    prompt_tokens: u.prompt_tokens,
    completion_tokens: u.completion_tokens,
    total_tokens: u.total_tokens,
    prompt_tokens_details: { cached_tokens: u.cached_tokens },
  };
}

export interface ResponseIdentity {
  id: string;
  created: number;
  model: string;
}

export const newId = (prefix: "chatcmpl" | "cmpl"): string => `${prefix}-${crypto.randomUUID().replaceAll("-", "")}`;

export function chatCompletion(idn: ResponseIdentity, text: string, finish: FinishReason, usage: Usage): ChatCompletionBody {
  return {
    id: idn.id,
    object: "chat.completion" as const,
    created: idn.created,
    model: idn.model,
    choices: [{ index: 0, message: { role: "assistant" as const, content: text, refusal: null }, logprobs: null, finish_reason: finish }],
    usage: toUsage(usage),
  };
}

export function textCompletion(idn: ResponseIdentity, text: string, finish: FinishReason, usage: Usage): TextCompletionBody {
  return {
    id: idn.id,
    object: "text_completion" as const,
    created: idn.created,
    model: idn.model,
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish }],
    usage: toUsage(usage),
  };
}

type ChatDelta = { role?: "assistant"; content?: string };

/** One streamed chat chunk; `usage` is null on every chunk but the trailing usage chunk. */
export function chatChunk(idn: ResponseIdentity, delta: ChatDelta, finish: FinishReason | null, withUsage: boolean): ChatCompletionChunkBody {
  return {
    id: idn.id,
    object: "chat.completion.chunk" as const,
    created: idn.created,
    model: idn.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    ...(withUsage ? { usage: null } : {}),
  };
}

export function chatUsageChunk(idn: ResponseIdentity, usage: Usage): ChatCompletionChunkBody {
  return { id: idn.id, object: "chat.completion.chunk" as const, created: idn.created, model: idn.model, choices: [], usage: toUsage(usage) };
}

export function textChunk(idn: ResponseIdentity, text: string, finish: FinishReason | null, withUsage: boolean): TextCompletionChunkBody {
  return {
    id: idn.id,
    object: "text_completion" as const,
    created: idn.created,
    model: idn.model,
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish }],
    ...(withUsage ? { usage: null } : {}),
  };
}

export function textUsageChunk(idn: ResponseIdentity, usage: Usage): TextCompletionChunkBody {
  return { id: idn.id, object: "text_completion" as const, created: idn.created, model: idn.model, choices: [], usage: toUsage(usage) };
}
