// The binary frame format of docs/internal-protocol.md: kind (1 byte 'J'|'B'|'E'), payload length
// (4 bytes, unsigned big-endian), payload. Used in both directions, and by the test double.

export const FRAME_J = 0x4a;
export const FRAME_B = 0x42;
export const FRAME_E = 0x45;
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
export const BLOB_CHUNK_BYTES = 1024 * 1024; // senders split blobs into <= 1 MiB B frames
export const FRAMES_CONTENT_TYPE = "application/vnd.lckv.frames";

export type Frame =
  | { kind: "J"; json: Record<string, unknown> }
  | { kind: "B"; bytes: Uint8Array }
  | { kind: "E" };

export class FrameError extends Error {
  override name = "FrameError";
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

export function encodeFrame(kind: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (payload.length > MAX_FRAME_BYTES) throw new FrameError(`frame payload of ${payload.length} bytes exceeds 64 MiB`);
  const out = new Uint8Array(5 + payload.length);
  out[0] = kind;
  new DataView(out.buffer).setUint32(1, payload.length, false);
  out.set(payload, 5);
  return out;
}

export const jsonFrame = (obj: unknown): Uint8Array => encodeFrame(FRAME_J, encoder.encode(JSON.stringify(obj)));
export const endFrame = (): Uint8Array => encodeFrame(FRAME_E);

/** Blob bytes as consecutive B frames of at most `chunk` bytes each. */
export function blobFrames(chunks: Uint8Array[], chunk = BLOB_CHUNK_BYTES): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const c of chunks) {
    for (let i = 0; i < c.length; i += chunk) out.push(encodeFrame(FRAME_B, c.subarray(i, i + chunk)));
  }
  return out;
}

export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function decodeJson(payload: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(payload));
  } catch {
    throw new FrameError("J frame is not valid UTF-8 JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new FrameError("J frame is not a JSON object");
  return value as Record<string, unknown>;
}

/**
 * Streaming frame parser: yields frames as soon as their bytes arrive. A stream that ends in the
 * middle of a frame is an error (a cut-off turn must never look complete). Cancelling the iterator
 * (break / return) or aborting `signal` cancels the underlying stream.
 */
export async function* readFrames(stream: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<Frame> {
  const reader = stream.getReader();
  // Cancelling through the signal works even while a read is pending (generator.return() would
  // wait for that read to finish first).
  const onAbort = () => void reader.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort);
  let buf: Uint8Array = new Uint8Array(0);
  let finished = false;
  try {
    for (;;) {
      while (buf.length >= 5) {
        const kind = buf[0]!;
        const len = new DataView(buf.buffer, buf.byteOffset, 5).getUint32(1, false);
        if (kind !== FRAME_J && kind !== FRAME_B && kind !== FRAME_E) throw new FrameError(`unknown frame kind 0x${kind.toString(16)}`);
        if (len > MAX_FRAME_BYTES) throw new FrameError(`frame length ${len} exceeds 64 MiB`);
        if (buf.length < 5 + len) break;
        const payload = buf.slice(5, 5 + len);
        buf = buf.subarray(5 + len);
        if (kind === FRAME_J) yield { kind: "J", json: decodeJson(payload) };
        else if (kind === FRAME_B) yield { kind: "B", bytes: payload };
        else {
          if (len !== 0) throw new FrameError("E frame must be empty");
          yield { kind: "E" };
        }
      }
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        if (buf.length > 0) throw new FrameError("stream ended inside a frame");
        return;
      }
      buf = buf.length === 0 ? value : concatBytes([buf, value]);
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
