// The session Durable Object's RPC surface: what the routes may ask of a session, as plain data.
import type { SerializedApiError } from "../errors";
import type { ChatMessage, Sampling, StartEvent } from "../upstream/types";

export interface TurnRequest {
  requestId: string;
  model: string;
  messages: ChatMessage[];
  sampling: Sampling;
}

/** A started turn: the service's start event and a stream of J frames (delta, then done or error). */
export type TurnReply =
  | { ok: true; turnId: string; start: StartEvent; stream: ReadableStream<Uint8Array> }
  | { ok: false; error: SerializedApiError };

export interface SessionInfo {
  id: string;
  object: "session";
  model: string;
  turns: number;
  messages: number;
  tokens_seen: number;
  cache_tokens: number;
  cached_tokens: number;
  cache_bytes: number;
  evicted_tokens: number;
  created_at: number; // unix seconds
  updated_at: number;
  expires_at: number;
}

export interface SessionRpc extends Rpc.DurableObjectBranded {
  turn(req: TurnRequest): Promise<TurnReply>;
  cancelTurn(turnId: string): Promise<void>;
  info(sessionId: string): Promise<SessionInfo | null>;
  remove(): Promise<"deleted" | "not_found" | "busy">;
  blobRows(): Promise<number>;
}
