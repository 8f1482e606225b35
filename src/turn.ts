// A running generation as the routes see it, whether it goes straight to the GPU service
// (stateless) or through a session Durable Object: the start event, then deltas and exactly one
// done or error (already the public error). cancel() stops it (client went away) and is safe to call more than once.
import type { GenerateStream } from "./upstream/client";
import { readFrames } from "./upstream/frames";
import type { StartEvent, TurnEvent } from "./upstream/types";

export interface Turn {
  start: StartEvent;
  events: AsyncIterable<TurnEvent>;
  cancel(): void;
}

/** A stateless turn straight from the upstream client (blob, if any, is dropped). */
export function turnFromUpstream(gen: GenerateStream, controller: AbortController): Turn {
  async function* events(): AsyncGenerator<TurnEvent> {
    for await (const ev of gen.events) {
      if (ev.type === "done") {
        const { blob: _blob, ...done } = ev;
        yield done;
      } else yield ev;
    }
  }
  return { start: gen.start, events: events(), cancel: () => controller.abort() };
}

/** A session turn: the DO streams J frames (delta/done/error) over RPC. */
export function turnFromFrames(start: StartEvent, stream: ReadableStream<Uint8Array>, onCancel?: () => void): Turn {
  const ac = new AbortController();
  const frames = readFrames(stream, ac.signal);
  async function* events(): AsyncGenerator<TurnEvent> {
    for await (const f of frames) {
      if (f.kind === "J") yield f.json as unknown as TurnEvent;
    }
  }
  return {
    start,
    events: events(),
    // Cancelling the RPC stream tells the DO the client is gone; it aborts the upstream call.
    cancel: () => {
      if (ac.signal.aborted) return;
      ac.abort();
      onCancel?.();
    },
  };
}
