// What a response chain or conversation Durable Object stores and is asked, as plain data (RPC).
import type { ChatMessage, Role, Usage } from "../upstream/types";

/** A message item of a conversation or of a response's input/output. */
export interface ItemRecord {
  id: string;
  role: Role;
  content: string;
  created_at: number; // unix seconds
}

/** A stored response: what the route built before the turn, plus the turn's outcome. */
export interface ResponseRecord {
  id: string;
  /** the response object without output/usage/status (built by the route, opaque here) */
  template: Record<string, unknown>;
  output_item_id: string;
  output_text: string;
  finish_reason: "stop" | "length";
  usage: Usage;
}

/** A turn of the Responses API, run by the chain's (or conversation's) object. */
export interface ChainTurn {
  responseId: string;
  /** continue this response (null: the first response of a new chain, or of a conversation turn) */
  parentId: string | null;
  /** a conversation turn: continue the conversation's items and append to them */
  conversationId: string | null;
  /** a fork's history, copied from the response it branches from (empty otherwise) */
  seed: ChatMessage[];
  instructions: string | null;
  input: ItemRecord[];
  outputItemId: string;
  template: Record<string, unknown>;
  /** truncation "auto": drop the oldest messages when a rebuild does not fit; "disabled": 400 */
  allowTrim: boolean;
}

export interface ConversationRecord {
  id: string;
  metadata: Record<string, string>;
  created_at: number;
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
}

export interface PageQuery {
  after?: string | undefined;
  limit: number;
  order: "asc" | "desc";
}
