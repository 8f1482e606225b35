// OpenAI's SSE protocol over Hono's streamSSE: role chunk, content chunks, finish chunk, optional
// usage chunk (choices: []), `data: [DONE]`. Errors after the 200 travel in-band as
// `data: {"error": {...}}` and the stream closes (never Hono's `event: error`). A client that
// goes away cancels the turn, which cancels the GPU work.
import type { Context } from "hono";
import { streamSSE, type SSEStreamingApi } from "hono/streaming";
import type { AppEnv } from "../env";
import { type ApiError, toApiError } from "../errors";
import type { Turn } from "../turn";
import { eventError } from "../upstream/errors";
import type { DoneEvent } from "../upstream/types";
import { chatChunk, chatUsageChunk, textChunk, textUsageChunk, type FinishReason, type ResponseIdentity } from "./responses";

export type StreamFormat = "chat" | "text";

const send = (s: SSEStreamingApi, obj: unknown) => s.writeSSE({ data: JSON.stringify(obj) });

/**
 * While no event arrives for this long (e.g. a long prefill), an SSE comment line is sent. Clients
 * ignore comments; proxies see traffic; and a write is what reveals a client that has gone away.
 */
export const KEEPALIVE_MS = 10_000;
export const TICK = Symbol("tick");

/** The turn's events, with TICK whenever none arrived within KEEPALIVE_MS. */
export async function* withTicks<T>(events: AsyncIterable<T>, ms = KEEPALIVE_MS): AsyncGenerator<T | typeof TICK> {
  const it = events[Symbol.asyncIterator]();
  let pending = it.next();
  for (;;) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = new Promise<typeof TICK>((resolve) => (timer = setTimeout(() => resolve(TICK), ms)));
    const r = await Promise.race([pending, tick]).finally(() => clearTimeout(timer));
    if (r === TICK) {
      yield TICK;
      continue;
    }
    if (r.done) return;
    yield r.value;
    pending = it.next();
  }
}

/** What one stream format writes at each point of a turn; `done` returns the outcome for the log. */
export interface TurnWriter {
  start(): Promise<void>;
  delta(text: string): Promise<void>;
  done(ev: DoneEvent): Promise<string>;
  /** `code`: the error's code, or what stands for it when it has none. */
  fail(err: ApiError, code: string): Promise<void>;
}

/**
 * A turn as an SSE stream: the writer's events, keep-alive comments while none arrives, an error in
 * band if the turn fails after the 200 (never Hono's `event: error`), and cancellation when the
 * client goes away. onFinish gets the outcome once.
 */
export function turnStream(c: Context<AppEnv>, turn: Turn, writer: (stream: SSEStreamingApi) => TurnWriter,
  onFinish: (outcome: string) => void): Response {
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => turn.cancel());
    const w = writer(stream);
    let outcome = "incomplete";
    try {
      await w.start();
      for await (const ev of withTicks(turn.events)) {
        if (stream.aborted) break;
        if (ev === TICK) await stream.write(": keep-alive\n\n");
        else if (ev.type === "delta") {
          if (ev.text !== "") await w.delta(ev.text);
        } else if (ev.type === "done") {
          outcome = await w.done(ev);
          return;
        } else {
          await w.fail(eventError(ev), ev.error.code ?? "server_error");
          outcome = `error:${ev.error.code ?? "unknown"}`;
          return;
        }
      }
      if (stream.aborted) outcome = "client_closed";
      else throw new Error("turn ended without done");
    } catch (err) {
      turn.cancel();
      if (stream.aborted) outcome = "client_closed";
      else {
        const apiErr = toApiError(err);
        outcome = `error:${apiErr.code ?? "internal_error"}`;
        await w.fail(apiErr, apiErr.code ?? "internal_error");
      }
    } finally {
      onFinish(stream.aborted && outcome === "incomplete" ? "client_closed" : outcome);
    }
  });
}

/** Chat and text completions: role chunk (chat), content chunks, finish chunk, usage chunk, [DONE]. */
export function sseResponse(c: Context<AppEnv>, turn: Turn, fmt: StreamFormat, idn: ResponseIdentity,
  includeUsage: boolean, onFinish: (status: string) => void): Response {
  const chunk = (text: string, finish: FinishReason | null) => fmt === "chat"
    ? chatChunk(idn, finish === null ? { content: text } : {}, finish, includeUsage)
    : textChunk(idn, text, finish, includeUsage);
  return turnStream(c, turn, (stream) => ({
    start: async () => {
      if (fmt === "chat") await send(stream, chatChunk(idn, { role: "assistant", content: "" }, null, includeUsage));
    },
    delta: (text) => send(stream, chunk(text, null)),
    done: async (ev) => {
      await send(stream, chunk("", ev.finish_reason));
      if (includeUsage) await send(stream, fmt === "chat" ? chatUsageChunk(idn, ev.usage) : textUsageChunk(idn, ev.usage));
      await stream.writeSSE({ data: "[DONE]" });
      return "done";
    },
    fail: (err) => send(stream, err.toBody()),
  }), onFinish);
}
