// GPU-service client: authenticated fetch to GPU_SERVICE_URL, request frames out, response frames
// parsed as they stream in. Aborting `signal` cancels the HTTP request, which cancels generation.
import { ApiError } from "../errors";
import { blobFrames, concatBytes, endFrame, FRAMES_CONTENT_TYPE, FrameError, jsonFrame, readFrames, type Frame } from "./frames";
import { errorEvent, inBandUpstreamError, readErrorBody, readUpstreamError, toPublicError } from "./errors";
import type { DoneEvent, GenerateRequest, ModelInfo, StartEvent, TurnEvent, UpstreamOptions } from "./types";

const DEFAULT_IDLE_MS = 120_000;
const DEFAULT_CONNECT_MS = 5_000;
const DEFAULT_FIRST_BYTE_MS = 15_000;
const MODELS_TIMEOUT_MS = 10_000;

/** A finished turn's result: the done event plus, when requested, the new cache blob. */
export type CompletedTurn = DoneEvent & { blob: Uint8Array[] };

export interface GenerateStream {
  start: StartEvent;
  /** deltas, then exactly one done (after all blob bytes and E arrived) or error. */
  events: AsyncGenerator<DeltaOrEnd>;
}

export type DeltaOrEnd = Exclude<TurnEvent, DoneEvent> | ({ type: "done" } & CompletedTurn);

const broken = (why: string) =>
  new ApiError(502, `The model service sent a malformed stream (${why}).`, { code: "upstream_protocol_error", type: "server_error" });

function unavailable(): ApiError {
  return new ApiError(502, "The model service is unreachable.", { code: "upstream_unavailable", type: "server_error" });
}

function timedOut(): ApiError {
  return new ApiError(504, "The model service stopped responding.", { code: "upstream_timeout", type: "server_error" });
}

/**
 * Aborts the upstream call when the service stays silent too long (a stalled or frozen replica
 * would otherwise hold the client, and a session's one-turn lock, forever). The first deadline is
 * the connect / first-byte one; `kick()` on every frame after that.
 */
class Watchdog {
  readonly controller = new AbortController();
  fired = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  constructor(private readonly ms: number, outer: AbortSignal, firstMs = ms) {
    if (outer.aborted) this.controller.abort(outer.reason);
    else outer.addEventListener("abort", () => this.controller.abort(outer.reason), { once: true });
    this.kick(firstMs);
  }
  kick(ms = this.ms): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.fired = true;
      this.controller.abort(new Error("upstream timeout"));
    }, ms);
  }
  stop(): void {
    clearTimeout(this.timer);
  }
}

function lost(): ApiError {
  return new ApiError(502, "The connection to the model service broke during the reply.", { code: "upstream_unavailable", type: "server_error" });
}

/** Sets the GPU-service credentials on `headers`. */
export function setAuthHeaders(headers: Headers, opts: UpstreamOptions): Headers {
  if (opts.platformKey) {
    headers.set("authorization", `Bearer ${opts.platformKey}`);
    headers.set("x-service-secret", opts.secret);
  } else {
    headers.set("authorization", `Bearer ${opts.secret}`);
  }
  return headers;
}

async function call(opts: UpstreamOptions, path: string, init: RequestInit): Promise<Response> {
  const headers = setAuthHeaders(new Headers(init.headers), opts);
  let res: Response;
  try {
    res = await fetch(`${opts.baseUrl}${path}`, { ...init, headers });
  } catch (err) {
    if (init.signal?.aborted) throw err;
    throw unavailable();
  }
  if (!res.ok) throw await readUpstreamError(res);
  return res;
}

export async function listModels(opts: UpstreamOptions, signal?: AbortSignal): Promise<ModelInfo[]> {
  const deadline = AbortSignal.timeout(Math.min(MODELS_TIMEOUT_MS, opts.connectTimeoutMs ?? MODELS_TIMEOUT_MS));
  let res: Response;
  try {
    res = await call(opts, "/v1/internal/models", { method: "GET", signal: signal ? AbortSignal.any([signal, deadline]) : deadline });
  } catch (err) {
    if (deadline.aborted && !signal?.aborted) throw timedOut();
    throw err;
  }
  const body = (await res.json().catch(() => null)) as { models?: unknown } | null;
  if (!body || !Array.isArray(body.models)) throw broken("models list");
  return body.models.filter((m): m is ModelInfo => typeof m === "object" && m !== null && typeof (m as ModelInfo).id === "string");
}

/** The service's readiness endpoint (model loaded and warm), within the connect timeout. */
export async function checkReady(opts: UpstreamOptions): Promise<boolean> {
  try {
    const res = await fetch(`${opts.baseUrl}/readyz`, {
      headers: setAuthHeaders(new Headers(), opts), signal: AbortSignal.timeout(opts.connectTimeoutMs ?? DEFAULT_CONNECT_MS),
    });
    await res.body?.cancel();
    return res.ok;
  } catch {
    return false;
  }
}

/**
 * Start a generation. Resolves once the service has accepted it (HTTP 200 and the `start` frame);
 * errors before that throw UpstreamError (the service's error) or ApiError (transport). After it, the
 * service's in-band errors arrive as public error events.
 */
export async function generate(opts: UpstreamOptions, req: GenerateRequest, blob: Uint8Array[] | null,
  signal: AbortSignal): Promise<GenerateStream> {
  const body = concatBytes([jsonFrame(req), ...blobFrames(blob ?? []), endFrame()]);
  const started = Date.now();
  const firstByteMs = opts.firstByteTimeoutMs ?? DEFAULT_FIRST_BYTE_MS;
  const watchdog = new Watchdog(opts.idleTimeoutMs ?? DEFAULT_IDLE_MS, signal, Math.min(opts.connectTimeoutMs ?? DEFAULT_CONNECT_MS, firstByteMs));
  let res: Response;
  try {
    res = await call(opts, "/v1/internal/generate", {
      method: "POST",
      // the request id joins the service's log line to ours
      headers: { "content-type": FRAMES_CONTENT_TYPE, accept: FRAMES_CONTENT_TYPE, "x-request-id": req.request_id },
      body,
      signal: watchdog.controller.signal,
    });
  } catch (err) {
    watchdog.stop();
    throw watchdog.fired ? timedOut() : err;
  }
  if (!res.body) {
    watchdog.stop();
    throw broken("empty body");
  }
  watchdog.kick(Math.max(1, firstByteMs - (Date.now() - started)));
  const frames = readFrames(res.body);
  let first: Frame | undefined;
  try {
    first = await nextFrame(frames, watchdog);
  } catch (err) {
    watchdog.stop();
    throw err;
  }
  if (first?.kind !== "J" || first.json.type !== "start") {
    watchdog.stop();
    await frames.return(undefined);
    if (first?.kind === "J" && first.json.type === "error") throw inBandUpstreamError(readErrorBody(first.json.error, "model service error"));
    throw broken("missing start frame");
  }
  return { start: first.json as unknown as StartEvent, events: turnEvents(frames, req.return_blob, watchdog) };
}

async function nextFrame(frames: AsyncGenerator<Frame>, watchdog: Watchdog): Promise<Frame | undefined> {
  try {
    const r = await frames.next();
    watchdog.kick();
    return r.done ? undefined : r.value;
  } catch (err) {
    if (err instanceof FrameError) throw broken(err.message);
    if (watchdog.fired) throw timedOut();
    if (watchdog.controller.signal.aborted) throw err; // our own cancel, not the service's failure
    throw lost(); // the service died or the connection dropped mid-stream
  }
}

/** Enforce the response grammar after `start`: delta* (done B* E | error E). */
async function* turnEvents(frames: AsyncGenerator<Frame>, expectBlob: boolean, watchdog: Watchdog): AsyncGenerator<DeltaOrEnd> {
  try {
    for (;;) {
      const f = await nextFrame(frames, watchdog);
      if (!f) throw broken("stream ended before done");
      if (f.kind !== "J") throw broken(`unexpected ${f.kind} frame before done`);
      const ev = f.json as unknown as TurnEvent;
      if (ev.type === "delta") {
        if (typeof ev.text !== "string") throw broken("delta without text");
        yield ev;
      } else if (ev.type === "error") {
        yield errorEvent(toPublicError(inBandUpstreamError(readErrorBody(f.json.error, "model service error"))));
        return;
      } else if (ev.type === "done") {
        yield { ...ev, blob: await readBlob(frames, expectBlob ? ev.blob_bytes : 0, watchdog) };
        return;
      } else {
        throw broken(`unknown event ${String((ev as { type: unknown }).type)}`);
      }
    }
  } finally {
    watchdog.stop();
    await frames.return(undefined);
  }
}

async function readBlob(frames: AsyncGenerator<Frame>, expected: number, watchdog: Watchdog): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  let got = 0;
  for (;;) {
    const f = await nextFrame(frames, watchdog);
    if (!f) throw broken("stream ended before E");
    if (f.kind === "E") break;
    if (f.kind !== "B") throw broken("J frame after done");
    chunks.push(f.bytes);
    got += f.bytes.length;
    if (got > expected) throw broken("more blob bytes than announced");
  }
  if (got !== expected) throw broken(`blob has ${got} of ${expected} bytes`);
  return chunks;
}
