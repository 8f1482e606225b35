// Validated OpenAI request -> what we send the GPU service. The schemas already admit only the values
// we implement (openai/schemas.ts); harmless fields (user, metadata, store, service_tier, ...) are
// ignored here.
import { ApiError } from "../errors";
import type { ChatMessage, Sampling } from "../upstream/types";
import { type ChatRequest, type CompletionRequest, type MessageIn } from "./schemas";

const DEFAULT_TEMPERATURE = 1;

export interface Normalized {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  sampling: Sampling;
}

function sampling(r: ChatRequest | CompletionRequest, maxTokens: number | null | undefined): Sampling {
  const s: Sampling = {};
  if (maxTokens != null) s.max_tokens = maxTokens;
  // OpenAI's default is 1 (sampling); the GPU service's own default is 0 (greedy), so always say it
  s.temperature = r.temperature ?? DEFAULT_TEMPERATURE;
  if (r.top_p != null) s.top_p = r.top_p;
  // beyond 2^53 (a BigInt here): fold it deterministically into the range a JSON number carries exactly
  if (r.seed != null) s.seed = typeof r.seed === "number" ? r.seed : Number(BigInt.asIntN(53, r.seed));
  if (r.stop != null) s.stop = typeof r.stop === "string" ? [r.stop] : r.stop;
  return s;
}

function base(r: ChatRequest | CompletionRequest, maxTokens: number | null | undefined): Normalized {
  return { model: r.model, stream: r.stream === true, includeUsage: r.stream_options?.include_usage === true,
    sampling: sampling(r, maxTokens) };
}

export function toPlainMessage(m: MessageIn): ChatMessage {
  return { role: m.role, content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join("") };
}

export function normalizeChat(r: ChatRequest): Normalized & { messages: ChatMessage[] } {
  if (r.max_tokens != null && r.max_completion_tokens != null && r.max_tokens !== r.max_completion_tokens) {
    throw new ApiError(400, "max_tokens and max_completion_tokens disagree; send one.", { param: "max_completion_tokens", code: "invalid_value" });
  }
  return { ...base(r, r.max_completion_tokens ?? r.max_tokens), messages: r.messages.map(toPlainMessage) };
}

export function normalizeCompletion(r: CompletionRequest): Normalized & { prompt: string } {
  const prompt = typeof r.prompt === "string" ? r.prompt : r.prompt[0]!;
  // OpenAI's legacy default for /v1/completions is 16 tokens.
  return { ...base(r, r.max_tokens ?? 16), prompt };
}
