// Shapes of the internal protocol's JSON (docs/internal-protocol.md), as the Worker uses them.

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

export interface ErrorEventBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}

export interface ErrorEvent {
  type: "error";
  error: ErrorEventBody;
  /** set by the session DO: the error is already mapped to our public error with this status */
  status?: number;
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
