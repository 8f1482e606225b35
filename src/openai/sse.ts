// OpenAI's SSE protocol over Hono's streamSSE: role chunk, content chunks, finish chunk, optional
// usage chunk (choices: []), `data: [DONE]`. Errors after the 200 travel in-band as
// `data: {"error": {...}}` and the stream closes (never Hono's `event: error`). A client that
// goes away cancels the turn, which cancels the GPU work.
import type { Context } from "hono";
import { streamSSE, type SSEStreamingApi } from "hono/streaming";
import type { AppEnv } from "../env";
import { toApiError } from "../errors";
import type { Turn } from "../turn";
import { eventError } from "../upstream/errors";
import { chatChunk, chatUsageChunk, textChunk, textUsageChunk, type ResponseIdentity } from "./responses";

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

export function sseResponse(c: Context<AppEnv>, turn: Turn, fmt: StreamFormat, idn: ResponseIdentity,
  includeUsage: boolean, onFinish: (status: string) => void): Response {
  return streamSSE(c, async (stream) => {
    stream.onAbort(() => turn.cancel());
    let outcome = "incomplete";
    try {
      if (fmt === "chat") await send(stream, chatChunk(idn, { role: "assistant", content: "" }, null, includeUsage));
      for await (const ev of withTicks(turn.events)) {
        if (stream.aborted) break;
        if (ev === TICK) await stream.write(": keep-alive\n\n");
        else if (ev.type === "delta") {
          if (ev.text === "") continue;
          await send(stream, fmt === "chat" ? chatChunk(idn, { content: ev.text }, null, includeUsage) : textChunk(idn, ev.text, null, includeUsage));
        } else if (ev.type === "done") {
          await send(stream, fmt === "chat" ? chatChunk(idn, {}, ev.finish_reason, includeUsage) : textChunk(idn, "", ev.finish_reason, includeUsage));
          if (includeUsage) await send(stream, fmt === "chat" ? chatUsageChunk(idn, ev.usage) : textUsageChunk(idn, ev.usage));
          await stream.writeSSE({ data: "[DONE]" });
          outcome = "done";
          return;
        } else {
          await send(stream, eventError(ev).toBody());
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
        await send(stream, apiErr.toBody());
      }
    } finally {
      onFinish(stream.aborted && outcome === "incomplete" ? "client_closed" : outcome);
    }
  });
}
