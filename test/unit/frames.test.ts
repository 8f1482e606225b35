// The Worker's frame codec against hand-written bytes and the test double's independent codec.
import { describe, expect, it } from "vitest";
import { blobFrames, concatBytes, encodeFrame, endFrame, FRAME_B, FrameError, jsonFrame, readFrames, type Frame } from "../../src/upstream/frames";
import { frame as dFrame, J as dJ, parseAll } from "../double/wire";

function streamOf(bytes: Uint8Array, pieceSize: number): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(c) {
      for (let i = 0; i < bytes.length; i += pieceSize) c.enqueue(bytes.slice(i, i + pieceSize));
      c.close();
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Frame[]> {
  const out: Frame[] = [];
  for await (const f of readFrames(stream)) out.push(f);
  return out;
}

describe("frames", () => {
  it("encodes kind + 4-byte big-endian length + payload", () => {
    expect([...jsonFrame({ a: 1 })]).toEqual([0x4a, 0, 0, 0, 7, ...new TextEncoder().encode('{"a":1}')]);
    expect([...endFrame()]).toEqual([0x45, 0, 0, 0, 0]);
    const big = encodeFrame(FRAME_B, new Uint8Array(0x010203));
    expect([...big.subarray(0, 5)]).toEqual([0x42, 0, 1, 2, 3]);
  });

  it("splits blobs into <= 1 MiB B frames that the double reassembles", () => {
    const blob = new Uint8Array(2.5 * 1024 * 1024).map((_, i) => i * 7);
    const frames = blobFrames([blob]);
    expect(frames).toHaveLength(3);
    const parsed = parseAll(concatBytes([jsonFrame({ x: 1 }), ...frames, endFrame()]));
    expect(parsed.map((f) => f.kind)).toEqual(["J", "B", "B", "B", "E"]);
    const back = concatBytes(parsed.filter((f): f is { kind: "B"; bytes: Uint8Array } => f.kind === "B").map((f) => f.bytes));
    expect(back.length).toBe(blob.length);
    expect(back.findIndex((b, i) => b !== blob[i])).toBe(-1); // (toEqual on MBs is very slow)
  });

  it("parses the double's frames however the bytes are split", async () => {
    const bytes = concatBytes([dJ({ type: "start", n: 1 }), dJ({ type: "delta", text: "héllo ✓" }), dFrame("B", new Uint8Array([1, 2, 3])), dFrame("E")]);
    for (const piece of [1, 2, 3, 5, 7, 64, bytes.length]) {
      const frames = await collect(streamOf(bytes, piece));
      expect(frames).toEqual([
        { kind: "J", json: { type: "start", n: 1 } },
        { kind: "J", json: { type: "delta", text: "héllo ✓" } },
        { kind: "B", bytes: new Uint8Array([1, 2, 3]) },
        { kind: "E" },
      ]);
    }
  });

  it("rejects truncated streams, unknown kinds, non-object JSON and non-empty E", async () => {
    const good = concatBytes([dJ({ a: 1 }), dFrame("E")]);
    await expect(collect(streamOf(good.subarray(0, good.length - 3), 4))).rejects.toThrow(FrameError);
    await expect(collect(streamOf(new Uint8Array([0x58, 0, 0, 0, 0]), 5))).rejects.toThrow(/unknown frame kind/);
    await expect(collect(streamOf(dFrame("J", new TextEncoder().encode("[1]")), 9))).rejects.toThrow(/not a JSON object/);
    await expect(collect(streamOf(dFrame("E", new Uint8Array([1])), 9))).rejects.toThrow(/E frame must be empty/);
    await expect(collect(streamOf(new Uint8Array([0x4a, 0xff, 0xff, 0xff, 0xff]), 5))).rejects.toThrow(/exceeds 64 MiB/);
  });

  it("aborting the signal cancels a pending read", async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({ pull: () => new Promise(() => {}), cancel: () => { cancelled = true; } });
    const ac = new AbortController();
    const it = readFrames(stream, ac.signal);
    const pending = it.next();
    ac.abort();
    await pending.catch(() => {});
    expect(cancelled).toBe(true);
  });
});
