// Starts a Responses API turn: in the object of the chain it continues (its latest response), in a
// new chain (the first response, or a fork of an older one, seeded with that one's history), in a
// conversation's object, or, with store: false, statelessly from a read of the history.
import type { Context } from "hono";
import { chainKeyOf, chainStub, newChainKey, newResponseId } from "../chain/ids";
import type { ChainTurn } from "../chain/types";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";
import { objectTurn, statelessTurn } from "../generation";
import type { Turn } from "../turn";
import type { ChatMessage, Sampling } from "../upstream/types";
import { conversationNotFound, responseNotFound } from "./chain-turn";

export interface ResponseTurnInput {
  model: string;
  sampling: Sampling;
  previousResponseId: string | null;
  conversationId: string | null;
  store: boolean;
  turn: Omit<ChainTurn, "responseId" | "parentId" | "conversationId" | "seed">;
}

/** The GPU service names the prompt `messages`; here it is the request's `input`. */
function renameParam(err: unknown): never {
  if (err instanceof ApiError && err.param === "messages") {
    throw new ApiError(err.status, err.message, { ...err, param: "input" });
  }
  throw err;
}

export async function responseTurn(c: Context<AppEnv>, r: ResponseTurnInput): Promise<{ responseId: string; turn: Turn }> {
  const tenant = c.get("tenant");
  const stubOf = (key: string) => () => chainStub(c.env, tenant, key);
  const { model, sampling } = r;
  const continued = r.conversationId ?? r.previousResponseId;
  const param = r.conversationId !== null ? "conversation" : "previous_response_id";
  try {
    if (!r.store) {
      // nothing is stored: read the history, run statelessly
      let history: ChatMessage[] = [];
      if (continued !== null) {
        const h = await stubOf(chainKeyOf(continued)!)().history(continued);
        if (h === null) throw r.conversationId !== null ? conversationNotFound(continued, param) : responseNotFound(continued, param);
        history = h;
      }
      const instructions: ChatMessage[] = r.turn.instructions !== null ? [{ role: "system", content: r.turn.instructions }] : [];
      const input = r.turn.input.map(({ role, content }) => ({ role, content }));
      const turn = await statelessTurn(c, { model, kind: "chat", messages: [...instructions, ...history, ...input], sampling });
      return { responseId: newResponseId(newChainKey()), turn };
    }
    const key = continued !== null ? chainKeyOf(continued)! : newChainKey();
    const chain = (responseId: string, seed: ChatMessage[], parentId: string | null): ChainTurn =>
      ({ ...r.turn, responseId, parentId, conversationId: r.conversationId, seed });
    let responseId = newResponseId(key);
    const first = await objectTurn(c, stubOf(key), { model, messages: [], sampling, chain: chain(responseId, [], r.previousResponseId) });
    if (!("fork" in first)) return { responseId, turn: first };
    // a fork: a new chain, seeded with the history of the response it branches from
    const forkKey = newChainKey();
    responseId = newResponseId(forkKey);
    const turn = await objectTurn(c, stubOf(forkKey), { model, messages: [], sampling, chain: chain(responseId, first.fork, null) });
    if ("fork" in turn) throw new Error("a new chain answered fork");
    return { responseId, turn };
  } catch (err) {
    renameParam(err);
  }
}
