// The Responses API as SSE: a live turn's typed events as they happen (a client that goes away
// cancels the turn), and a stored response's events replayed. Both write the events of
// response-events.ts as `event: <type>` / `data: <event JSON>`.
import type { Context } from "hono";
import { streamSSE, type SSEStreamingApi } from "hono/streaming";
import type { AppEnv } from "../env";
import type { Turn } from "../turn";
import { type ResponseEvent, ResponseEvents } from "./response-events";
import type { ResponseTemplate } from "./response-object";
import { turnStream } from "./sse";

async function write(stream: SSEStreamingApi, events: ResponseEvent[]): Promise<void> {
  for (const ev of events) {
    if (stream.aborted) return;
    await stream.writeSSE({ event: ev.type, data: JSON.stringify(ev) });
  }
}

export function responseStream(c: Context<AppEnv>, turn: Turn, id: string, template: ResponseTemplate, outputId: string,
  onFinish: (outcome: string) => void): Response {
  return turnStream(c, turn, (stream: SSEStreamingApi) => {
    const events = new ResponseEvents(id, template, outputId);
    return {
      start: () => write(stream, events.start()),
      delta: (delta) => write(stream, [events.delta(delta)]),
      done: async (ev) => {
        const end = events.done(ev.finish_reason, ev.usage);
        await write(stream, end.events);
        return end.status;
      },
      fail: (err, code) => write(stream, events.fail(err, code)),
    };
  }, onFinish);
}

/** Already-built events (a stored response's), written in order; no upstream work to cancel. */
export function replayStream(c: Context<AppEnv>, events: ResponseEvent[]): Response {
  return streamSSE(c, (stream) => write(stream, events));
}
