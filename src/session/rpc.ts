// The session Durable Object's RPC surface: what the routes may ask of a session, as plain data.
import type { ChainTurn, ConversationRecord, ItemRecord, Page, PageQuery, ResponseRecord } from "../chain/types";
import type { SerializedApiError } from "../errors";
import type { ChatMessage, Sampling, StartEvent } from "../upstream/types";

export interface TurnRequest {
  requestId: string;
  model: string;
  messages: ChatMessage[];
  sampling: Sampling;
  /** a Responses API turn: the object composes the messages from its chain (`messages` is then empty) */
  chain?: ChainTurn;
}

/** A started turn: the service's start event and a stream of J frames (delta, then done or error). */
export type TurnReply =
  | { ok: true; turnId: string; start: StartEvent; stream: ReadableStream<Uint8Array> }
  | { ok: false; error: SerializedApiError }
  /** the response to continue is not its chain's latest: run the turn in a new chain seeded with this history */
  | { ok: false; fork: ChatMessage[] };

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
  // Responses and Conversations (the object of a chain or conversation; src/chain/)
  response(id: string): Promise<ResponseRecord | null>;
  deleteResponse(id: string): Promise<boolean>;
  history(id: string): Promise<ChatMessage[] | null>;
  items(q: PageQuery, id: string): Promise<Page<ItemRecord> | null>;
  createConversation(conv: ConversationRecord, items: ItemRecord[]): Promise<void>;
  conversation(id: string): Promise<ConversationRecord | null>;
  updateConversation(id: string, metadata: Record<string, string>): Promise<ConversationRecord | null>;
  deleteConversation(id: string): Promise<"deleted" | "not_found" | "busy">;
  addItems(conversationId: string, items: ItemRecord[]): Promise<"added" | "not_found" | "busy">;
  item(conversationId: string, itemId: string): Promise<ItemRecord | null>;
  deleteItem(conversationId: string, itemId: string): Promise<"deleted" | "not_found" | "busy">;
}
