// Ids of the Responses and Conversations APIs. A response or conversation id carries its chain's
// key (16 random bytes: which Durable Object holds it) and 8 more random bytes of its own, so ids
// are unguessable; the object is `idFromName(tenant + ":" + "\u0001chain:" + key)`, and a session id
// (no control characters) can never name it. Another tenant's id reaches that tenant's own, empty
// object: a 404 indistinguishable from a missing id.
import type { Env } from "../env";

const hex = (bytes: number): string =>
  [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");

export const RESPONSE_ID = /^resp_([0-9a-f]{32})[0-9a-f]{16}$/;
export const CONVERSATION_ID = /^conv_([0-9a-f]{32})[0-9a-f]{16}$/;
export const ITEM_ID = /^msg_[0-9a-f]{32}$/;

export const newChainKey = (): string => hex(16);
export const newResponseId = (chainKey: string): string => `resp_${chainKey}${hex(8)}`;
export const newConversationId = (): string => `conv_${hex(16)}${hex(8)}`;
export const newItemId = (): string => `msg_${hex(16)}`;

/** The chain key inside a well-formed response or conversation id (null if malformed). */
export function chainKeyOf(id: string): string | null {
  return RESPONSE_ID.exec(id)?.[1] ?? CONVERSATION_ID.exec(id)?.[1] ?? null;
}

export function chainStub(env: Env, tenant: string, chainKey: string) {
  return env.SESSIONS.get(env.SESSIONS.idFromName(`${tenant}:\u0001chain:${chainKey}`));
}
