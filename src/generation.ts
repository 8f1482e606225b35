// Start a turn for a route: through the tenant's session Durable Object when a session id is
// given, else straight to the GPU service. The client's disconnect (request.signal) cancels it.
import type { Context } from "hono";
import { loadConfig } from "./config";
import type { AppEnv } from "./env";
import { ApiError } from "./errors";
import { sessionStub } from "./session/key";
import type { TurnReply, TurnRequest } from "./session/rpc";
import { turnFromFrames, turnFromUpstream, type Turn } from "./turn";
import { generateBalanced } from "./upstream/balanced";
import { toPublicError } from "./upstream/errors";
import type { ChatMessage, GenerateRequest, Sampling } from "./upstream/types";

export async function statelessTurn(c: Context<AppEnv>, req: Omit<GenerateRequest, "request_id" | "return_blob">): Promise<Turn> {
  const cfg = loadConfig(c.env);
  const ac = new AbortController();
  const signal = c.req.raw.signal;
  const onAbort = () => ac.abort();
  signal.addEventListener("abort", onAbort);
  try {
    const gen = await generateBalanced(cfg.upstream,
      { ...req, request_id: c.get("requestId"), return_blob: false }, null, ac.signal);
    return turnFromUpstream(gen, ac);
  } catch (err) {
    signal.removeEventListener("abort", onAbort);
    throw toPublicError(err);
  }
}

type ObjectStub = ReturnType<typeof sessionStub>;
export type TurnBody = Omit<TurnRequest, "requestId">;

/** Durable Object RPC, retried once when the runtime says the failure is retryable. */
async function callObject(c: Context<AppEnv>, stub: () => ObjectStub, body: TurnBody): Promise<TurnReply> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await stub().turn({ requestId: c.get("requestId"), ...body });
    } catch (err) {
      const e = err as { retryable?: boolean; overloaded?: boolean };
      if (attempt === 0 && e.retryable && !e.overloaded) continue;
      throw new ApiError(503, "The session is temporarily unavailable; retry shortly.", { code: "session_unavailable", type: "server_error", retryAfter: 1 });
    }
  }
}

/**
 * A turn through a session, response chain or conversation object. `{ fork }` when the object
 * answers that the response to continue is not its chain's latest (src/session/chain-turn.ts).
 */
export async function objectTurn(c: Context<AppEnv>, stub: () => ObjectStub, body: TurnBody): Promise<Turn | { fork: ChatMessage[] }> {
  const reply = await callObject(c, stub, body);
  if (!reply.ok) {
    if ("fork" in reply) return { fork: reply.fork };
    throw ApiError.from(reply.error);
  }
  const { turnId } = reply;
  const turn = turnFromFrames(reply.start, reply.stream, () => {
    void stub().cancelTurn(turnId).catch(() => {});
  });
  const signal = c.req.raw.signal;
  if (signal.aborted) turn.cancel();
  else signal.addEventListener("abort", () => turn.cancel());
  return turn;
}

export async function sessionTurn(c: Context<AppEnv>, sessionId: string, body: { model: string; messages: ChatMessage[]; sampling: Sampling }): Promise<Turn> {
  const turn = await objectTurn(c, () => sessionStub(c.env, c.get("tenant"), sessionId), body);
  if ("fork" in turn) throw new Error("a chat session answered a Responses turn");
  return turn;
}
