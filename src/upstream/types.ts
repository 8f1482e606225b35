// Shapes of the internal protocol's JSON (docs/internal-protocol.md), as the Worker uses them.
import type { ErrorType } from "../errors";

export interface UpstreamOptions {
  baseUrl: string;
  secret: string;
  /** Behind a GPU platform's gateway (RunPod, NVCF) `Authorization` carries the platform's key and our
   * shared secret travels in `X-Service-Secret` (docs/internal-protocol.md). */
  platformKey?: string;
  /** The longest the service may stay silent between frames once it has started a reply. */
  idleTimeoutMs?: number;
  /** Until the service answers with response headers (a frozen or unreachable replica). */
  connectTimeoutMs?: number;
  /** Until the service's first frame (`start`): it accepted the request. */
  firstByteTimeoutMs?: number;
}

/** The service's settings with every replica's base URL (a self-balancing platform endpoint is one). */
export type UpstreamConfig = Omit<UpstreamOptions, "baseUrl"> & { urls: string[] };

export type Role = "system" | "developer" | "user" | "assistant";

/** Messages are normalized to plain-text content at the edge (text parts joined). */
export interface ChatMessage {
  role: Role;
  content: string;
}

export interface Sampling {
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  seed?: number;
  stop?: string[];
}

export interface GenerateRequest {
  request_id: string;
  model: string;
  kind: "chat" | "completion";
  messages?: ChatMessage[];
  prompt?: string;
  sampling: Sampling;
  return_blob: boolean;
}

export interface StartEvent {
  type: "start";
  request_id: string;
  model: string;
  prompt_tokens: number;
  cached_tokens: number;
  created: number;
}

export interface DeltaEvent {
  type: "delta";
  text: string;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  cached_tokens: number;
}

export interface SessionCounters {
  tokens_seen: number;
  cache_tokens: number;
  evicted_tokens: number;
}

export interface DoneEvent {
  type: "done";
  finish_reason: "stop" | "length";
  usage: Usage;
  blob_bytes: number;
  session?: SessionCounters;
}

/** Sent with context_length_exceeded: the new prompt's tokens and the most one request may carry. */
export interface PromptLimits {
  prompt_tokens: number;
  max_prompt_tokens: number;
}

/** The service's error object (HTTP error body or in-band error event). */
export interface ErrorEventBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
  limits?: PromptLimits;
}

/** A turn's failure once mapped to the public error (status, and OpenAI's error object). */
export interface ErrorEvent {
  type: "error";
  status: number;
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

/** What a caller sees of a turn after `start`: text deltas, then exactly one done or error. */
export type TurnEvent = DeltaEvent | DoneEvent | ErrorEvent;

export interface ModelInfo {
  id: string;
  context_window: number;
  max_prompt_tokens: number;
  fingerprint: string;
  created: number;
  [k: string]: unknown;
}
