// Pure session logic: how a request's messages relate to the stored transcript.
//
// Rule (docs/edge.md): if the request's first message equals the transcript's first message
// (role + content), the request is a FULL HISTORY: when the transcript is a proper prefix of it,
// only the suffix is sent with the stored blob ("reuse"); otherwise it diverged and the session is
// rebuilt from the request alone, without the blob ("rebuild"). If the first message differs, or
// the transcript is empty, the request carries only NEW messages: they are appended after the
// transcript and sent with the blob ("append"; "new" for an empty session).
import type { ChatMessage } from "../upstream/types";

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

export function planTurn(transcript: ChatMessage[], request: ChatMessage[], hasBlob: boolean): TurnPlan {
  if (transcript.length === 0) return { mode: "new", send: request, useBlob: false, conversation: request, keep: 0 };
  if (!sameMessage(transcript[0]!, request[0]!)) {
    const conversation = [...transcript, ...request];
    if (!hasBlob) return { mode: "rebuild", send: conversation, useBlob: false, conversation, keep: transcript.length };
    return { mode: "append", send: request, useBlob: true, conversation, keep: transcript.length };
  }
  // A full history that adds nothing after the transcript has no suffix to prefill: rebuild.
  if (hasBlob && request.length > transcript.length && isPrefix(transcript, request)) {
    return { mode: "reuse", send: request.slice(transcript.length), useBlob: true, conversation: request, keep: transcript.length };
  }
  let keep = 0;
  while (keep < transcript.length && keep < request.length && sameMessage(transcript[keep]!, request[keep]!)) keep++;
  return { mode: "rebuild", send: request, useBlob: false, conversation: request, keep };
}

/** The plan to use when the service refused the blob (409 blob_model_mismatch): resend everything. */
export function rebuildPlan(plan: TurnPlan): TurnPlan {
  return { ...plan, mode: "rebuild", send: plan.conversation, useBlob: false };
}
