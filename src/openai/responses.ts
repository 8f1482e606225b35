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

/** The fields every response object and chunk starts with. */
const envelope = <O extends string>(idn: ResponseIdentity, object: O) => ({ id: idn.id, object, created: idn.created, model: idn.model });

/** `usage` is null on every streamed chunk but the trailing usage chunk (when the client asked for usage). */
const nullUsage = (withUsage: boolean) => (withUsage ? { usage: null } : {});

export function chatCompletion(idn: ResponseIdentity, text: string, finish: FinishReason, usage: Usage): ChatCompletionBody {
  const message = { role: "assistant" as const, content: text, refusal: null };
  return { ...envelope(idn, "chat.completion"), choices: [{ index: 0, message, logprobs: null, finish_reason: finish }], usage: toUsage(usage) };
}

export function textCompletion(idn: ResponseIdentity, text: string, finish: FinishReason, usage: Usage): TextCompletionBody {
  return { ...envelope(idn, "text_completion"), choices: [{ index: 0, text, logprobs: null, finish_reason: finish }], usage: toUsage(usage) };
}

type ChatDelta = { role?: "assistant"; content?: string };

export function chatChunk(idn: ResponseIdentity, delta: ChatDelta, finish: FinishReason | null, withUsage: boolean): ChatCompletionChunkBody {
  return { ...envelope(idn, "chat.completion.chunk"), choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...nullUsage(withUsage) };
}

export function chatUsageChunk(idn: ResponseIdentity, usage: Usage): ChatCompletionChunkBody {
  return { ...envelope(idn, "chat.completion.chunk"), choices: [], usage: toUsage(usage) };
}

export function textChunk(idn: ResponseIdentity, text: string, finish: FinishReason | null, withUsage: boolean): TextCompletionChunkBody {
  return { ...envelope(idn, "text_completion"), choices: [{ index: 0, text, logprobs: null, finish_reason: finish }], ...nullUsage(withUsage) };
}

export function textUsageChunk(idn: ResponseIdentity, usage: Usage): TextCompletionChunkBody {
  return { ...envelope(idn, "text_completion"), choices: [], usage: toUsage(usage) };
}
