// A running generation as the routes see it, whether it goes straight to the GPU service
// (stateless) or through a session Durable Object: the start event, then deltas and exactly one
// done or error. cancel() stops it (client went away) and is safe to call more than once.
import { ApiError, type ErrorType } from "./errors";
import { readFrames } from "./upstream/frames";
import type { GenerateStream } from "./upstream/client";
import { upstreamToApiError } from "./upstream/errors";
import type { ErrorEvent, StartEvent, TurnEvent } from "./upstream/types";

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

/**
 * Map an in-band error event to our error. Events from the session DO carry `status`: they are
 * already public errors. Raw service events: request problems stay 400, the rest is a 502.
 */
export function inBandError(ev: ErrorEvent): ApiError {
  if (ev.status !== undefined) return new ApiError(ev.status, ev.error.message, { ...ev.error, type: ev.error.type as ErrorType });
  return upstreamToApiError(ev.error, ev.error.type === "invalid_request_error" ? 400 : 500);
}

/** A public error as an in-band event (what the session DO streams to the route). */
export function errorEvent(err: ApiError): ErrorEvent {
  return { type: "error", status: err.status, error: err.toBody().error };
}
