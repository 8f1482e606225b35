// Validated OpenAI request -> what we send the GPU service. Fields whose non-default values would
// change semantics we do not implement are rejected here (400, param named, code
// "unsupported_parameter"); harmless ones (user, metadata, store, service_tier, ...) are ignored.
import { ApiError } from "../errors";
import type { ChatMessage, Sampling } from "../upstream/types";
import { hasLoneSurrogate } from "../text";
import { type ChatRequest, type CompletionRequest, type MessageIn } from "./schemas";

const unsupported = (param: string, what: string) =>
  new ApiError(400, `${what} is not supported by this API.`, { param, code: "unsupported_parameter" });

const DEFAULT_TEMPERATURE = 1;

export interface Normalized {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  sampling: Sampling;
}

function checkCommon(r: ChatRequest | CompletionRequest): void {
  if (r.n != null && r.n !== 1) throw new ApiError(400, "Only n=1 is supported.", { param: "n", code: "unsupported_parameter" });
  if (r.frequency_penalty) throw unsupported("frequency_penalty", "A non-zero frequency_penalty");
  if (r.presence_penalty) throw unsupported("presence_penalty", "A non-zero presence_penalty");
  if (r.logit_bias && Object.keys(r.logit_bias).length > 0) throw unsupported("logit_bias", "logit_bias");
}

function sampling(r: ChatRequest | CompletionRequest, maxTokens: number | null | undefined): Sampling {
  const s: Sampling = {};
  if (maxTokens != null) s.max_tokens = maxTokens;
  // OpenAI's default is 1 (sampling); the GPU service's own default is 0 (greedy), so always say it
  s.temperature = r.temperature ?? DEFAULT_TEMPERATURE;
  if (r.top_p != null) s.top_p = r.top_p;
  // beyond 2^53 a JSON number is not exact anyway: fold it (deterministically) into the exact range
  if (r.seed != null) s.seed = Number.isSafeInteger(r.seed) ? r.seed : Number(BigInt.asIntN(53, BigInt(r.seed)));
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
  checkCommon(r);
  if (r.logprobs) throw unsupported("logprobs", "logprobs");
  if (r.top_logprobs) throw unsupported("top_logprobs", "top_logprobs");
  if (r.tools && r.tools.length > 0) throw unsupported("tools", "Tool calling");
  if (r.tool_choice != null && r.tool_choice !== "none" && r.tool_choice !== "auto") throw unsupported("tool_choice", "tool_choice");
  if (r.functions && r.functions.length > 0) throw unsupported("functions", "Function calling");
  if (r.function_call != null && r.function_call !== "none" && r.function_call !== "auto") throw unsupported("function_call", "function_call");
  if (r.response_format && r.response_format.type !== "text") throw unsupported("response_format.type", `response_format '${r.response_format.type}'`);
  if (r.modalities && r.modalities.some((m) => m !== "text")) throw unsupported("modalities", "Non-text modalities");
  for (const f of ["audio", "prediction", "web_search_options"] as const) if (r[f] != null) throw unsupported(f, f);
  if (r.max_tokens != null && r.max_completion_tokens != null && r.max_tokens !== r.max_completion_tokens) {
    throw new ApiError(400, "max_tokens and max_completion_tokens disagree; send one.", { param: "max_completion_tokens", code: "invalid_value" });
  }
  return { ...base(r, r.max_completion_tokens ?? r.max_tokens), messages: r.messages.map(toPlainMessage) };
}

export function normalizeCompletion(r: CompletionRequest): Normalized & { prompt: string } {
  checkCommon(r);
  if (r.echo) throw unsupported("echo", "echo");
  if (r.logprobs) throw unsupported("logprobs", "logprobs");
  if (r.suffix) throw unsupported("suffix", "suffix");
  if (r.best_of != null && r.best_of !== 1) throw unsupported("best_of", "best_of > 1");
  let prompt: string;
  if (typeof r.prompt === "string") prompt = r.prompt;
  else if (r.prompt.length === 1 && typeof r.prompt[0] === "string") {
    prompt = r.prompt[0];
    if (hasLoneSurrogate(prompt)) {
      throw new ApiError(400, "Invalid value for 'prompt[0]': Invalid input: the string contains an unpaired UTF-16 surrogate.", { param: "prompt[0]", code: "invalid_value" });
    }
  }
  else throw new ApiError(400, "prompt must be a string (or an array of exactly one string); token arrays and batches are not supported.", { param: "prompt", code: "unsupported_parameter" });
  // OpenAI's legacy default for /v1/completions is 16 tokens.
  return { ...base(r, r.max_tokens ?? 16), prompt };
}
