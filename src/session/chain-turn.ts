// A Responses API turn inside the object that holds its chain or conversation: which messages the
// model sees (instructions + the chain's history + the new input) and what the commit appends.
// Continuing the chain's latest response uses the object's cache; continuing an older one (a
// fork) is answered with that response's history, to be run in a new chain: the cache has moved
// past it and cannot be rewound, and this chain must stay as it is.
import { newItemId } from "../chain/ids";
import type { ChainStore } from "../chain/store";
import type { ChainTurn, ResponseRecord } from "../chain/types";
import { ApiError } from "../errors";
import type { ChatMessage, DoneEvent } from "../upstream/types";

export const responseNotFound = (id: string, param: string | null) =>
  new ApiError(404, `Response with id '${id}' not found.`, { param, code: "response_not_found" });
export const conversationNotFound = (id: string, param: string | null) =>
  new ApiError(404, `Conversation with id '${id}' not found.`, { param, code: "conversation_not_found" });

export function chainMessages(chain: ChainStore, t: ChainTurn, evictedTokens: number): { messages: ChatMessage[] } | { fork: ChatMessage[] } {
  let history: ChatMessage[];
  if (t.conversationId !== null) {
    if (chain.conversation()?.id !== t.conversationId) throw conversationNotFound(t.conversationId, "conversation");
    history = chain.messages();
  } else if (t.parentId !== null) {
    const parent = chain.historyOf(t.parentId);
    if (parent === null) throw responseNotFound(t.parentId, "previous_response_id");
    if (chain.conversation() || chain.head() !== t.parentId || !chain.headIsLast()) return { fork: parent };
    history = parent;
  } else {
    history = t.seed;
  }
  if (!t.allowTrim && evictedTokens > 0 && t.seed.length === 0 && history.length > 0) {
    throw new ApiError(400, `The conversation no longer fits the model's context window (${evictedTokens} of its oldest tokens `
      + "were already dropped from the cache); with truncation \"disabled\" it cannot continue. Use truncation \"auto\".",
    { param: "input", code: "context_length_exceeded" });
  }
  const instructions: ChatMessage[] = t.instructions !== null ? [{ role: "system", content: t.instructions }] : [];
  return { messages: [...instructions, ...history, ...t.input.map(({ role, content }) => ({ role, content }))] };
}

/** Runs inside the session's commit transaction. */
export function commitChainTurn(chain: ChainStore, t: ChainTurn, reply: string, done: Omit<DoneEvent, "type">, now: number): void {
  const record: ResponseRecord = { id: t.responseId, template: t.template, output_item_id: t.outputItemId,
    output_text: reply, finish_reason: done.finish_reason, usage: done.usage };
  const created = Math.floor(now / 1000);
  chain.writeTurn(t.seed, t.input, { id: t.outputItemId, role: "assistant", content: reply, created_at: created }, record, created, newItemId);
}
