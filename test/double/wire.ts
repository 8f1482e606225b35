// The test double's OWN implementation of the frame format (docs/internal-protocol.md), written
// independently of src/upstream/frames.ts so each side checks the other.

export type DFrame = { kind: "J"; json: any } | { kind: "B"; bytes: Uint8Array } | { kind: "E" };

export function frame(kind: "J" | "B" | "E", payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  out[0] = kind.charCodeAt(0);
  out[1] = (payload.length >>> 24) & 0xff;
  out[2] = (payload.length >>> 16) & 0xff;
  out[3] = (payload.length >>> 8) & 0xff;
  out[4] = payload.length & 0xff;
  out.set(payload, 5);
  return out;
}

export const J = (obj: unknown) => frame("J", new TextEncoder().encode(JSON.stringify(obj)));

/** Parse a complete frame body; throws on any malformation. */
export function parseAll(body: Uint8Array): DFrame[] {
  const frames: DFrame[] = [];
  let i = 0;
  while (i < body.length) {
    if (i + 5 > body.length) throw new Error("truncated frame header");
    const kind = String.fromCharCode(body[i]!);
    const len = ((body[i + 1]! << 24) >>> 0) + (body[i + 2]! << 16) + (body[i + 3]! << 8) + body[i + 4]!;
    const payload = body.slice(i + 5, i + 5 + len);
    if (payload.length !== len) throw new Error("truncated frame payload");
    if (kind === "J") frames.push({ kind, json: JSON.parse(new TextDecoder().decode(payload)) });
    else if (kind === "B") frames.push({ kind, bytes: payload });
    else if (kind === "E" && len === 0) frames.push({ kind });
    else throw new Error(`bad frame kind ${kind}`);
    i += 5 + len;
  }
  return frames;
}
