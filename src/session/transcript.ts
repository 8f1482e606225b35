// Pure session logic: how a request's messages relate to the stored transcript (docs/edge.md,
// "Which messages a turn sends"). In order:
//   1. empty session: "new".
//   2. the request extends the transcript (a stock client's full history + new messages): only the
//      suffix is sent with the blob ("reuse").
//   3. the request holds an assistant message (a full history that diverged: edited, windowed, or a
//      "regenerate" that drops the last reply): "rebuild" from the request alone.
//   4. it starts with an instruction (system/developer) message: the same one as the session's first
//      message means "instructions + new messages" (append the rest); another one means another
//      conversation under this key: rebuild from the request.
//   5. otherwise the request carries only new messages: "append" them after the transcript.
// A request with no assistant message is never read as a full history that rewrites the
// conversation: saying "hi" again, or "continue" every turn, appends it.
import type { ChatMessage, PromptLimits } from "../upstream/types";

export type PlanMode = "new" | "append" | "reuse" | "rebuild";

export interface TurnPlan {
  mode: PlanMode;
  /** messages to send the GPU service */
  send: ChatMessage[];
  /** whether the stored blob goes with them */
  useBlob: boolean;
  /** the conversation once this turn's input is added (before the assistant's reply) */
  conversation: ChatMessage[];
  /** how many leading transcript rows stay unchanged in storage */
  keep: number;
}

export const sameMessage = (a: ChatMessage, b: ChatMessage): boolean => a.role === b.role && a.content === b.content;

export function isPrefix(prefix: ChatMessage[], of: ChatMessage[]): boolean {
  return prefix.length <= of.length && prefix.every((m, i) => sameMessage(m, of[i]!));
}

const isInstruction = (m: ChatMessage): boolean => m.role === "system" || m.role === "developer";

export function planTurn(transcript: ChatMessage[], request: ChatMessage[], hasBlob: boolean): TurnPlan {
  if (transcript.length === 0) return { mode: "new", send: request, useBlob: false, conversation: request, keep: 0 };
  if (request.length > transcript.length && isPrefix(transcript, request)) {
    if (hasBlob) return { mode: "reuse", send: request.slice(transcript.length), useBlob: true, conversation: request, keep: transcript.length };
    return rebuild(transcript, request);
  }
  if (request.some((m) => m.role === "assistant")) return rebuild(transcript, request);
  if (isInstruction(request[0]!)) {
    if (!sameMessage(request[0]!, transcript[0]!)) return rebuild(transcript, request);
    if (request.length > 1) return append(transcript, request.slice(1), hasBlob);
  }
  return append(transcript, request, hasBlob);
}

function append(transcript: ChatMessage[], added: ChatMessage[], hasBlob: boolean): TurnPlan {
  const conversation = [...transcript, ...added];
  if (!hasBlob) return { mode: "rebuild", send: conversation, useBlob: false, conversation, keep: transcript.length };
  return { mode: "append", send: added, useBlob: true, conversation, keep: transcript.length };
}

/** Rebuild from `request` alone; the leading rows it shares with the transcript stay in storage. */
function rebuild(transcript: ChatMessage[], request: ChatMessage[]): TurnPlan {
  let keep = 0;
  while (keep < transcript.length && keep < request.length && sameMessage(transcript[keep]!, request[keep]!)) keep++;
  return { mode: "rebuild", send: request, useBlob: false, conversation: request, keep };
}

/** The plan to use when the service refused the blob (blob_model_mismatch/_version/_invalid): resend everything. */
export function rebuildPlan(plan: TurnPlan): TurnPlan {
  return { ...plan, mode: "rebuild", send: plan.conversation, useBlob: false };
}

/**
 * A plan without the blob whose prompt the service found too long (its context_length_exceeded
 * error's `limits`, when it sent them): the same plan sending fewer messages, the
 * oldest dropped, aiming at ~90% of the limit by text length. The leading instructions and the last
 * message stay; only when those two alone are too long do the instructions go too. The stored
 * conversation stays whole; the cache then holds what a long-running session's StreamingLLM cache
 * would (instructions + the recent past). null when only the last message is left.
 */
export function trimToFit(plan: TurnPlan, limits: PromptLimits | null): TurnPlan | null {
  const send = plan.send;
  let lead = 0;
  while (lead < send.length - 1 && isInstruction(send[lead]!)) lead++;
  const body = send.slice(lead);
  if (body.length <= 1) return lead > 0 ? { ...plan, send: body } : null;
  const size = (m: ChatMessage) => m.content.length + 8; // + the template's role markers
  const total = body.reduce((n, m) => n + size(m), 0);
  const over = limits && limits.prompt_tokens > limits.max_prompt_tokens ? limits : null;
  const target = over ? total * (over.max_prompt_tokens / over.prompt_tokens) * 0.9 : total / 2;
  let drop = 0;
  let left = total;
  while (drop < body.length - 1 && (drop === 0 || left > target || body[drop]!.role === "assistant")) left -= size(body[drop++]!);
  return { ...plan, send: [...send.slice(0, lead), ...body.slice(drop)] };
}
