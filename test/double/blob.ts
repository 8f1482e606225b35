// The double's cache blob: magic, header JSON (model fingerprint, tokens covered, rolling hash of
// the rendered conversation), then `size` bytes of a position-dependent pattern, so any lost,
// reordered or corrupted chunk is detected when the blob comes back.

const MAGIC = "LCKVDBL1";

export interface BlobHeader {
  fingerprint: string;
  tokens: number;
  hash: number; // FNV-1a state over the rendered conversation (concatenative)
  pad: number;
}

const patternByte = (i: number, hash: number) => (i * 131 + (hash & 0xff) + (i >>> 13)) & 0xff;

export function fnv1a(state: number, text: string): number {
  let h = state >>> 0;
  for (const b of new TextEncoder().encode(text)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}
export const FNV_INIT = 0x811c9dc5;

export function encodeBlob(h: BlobHeader): Uint8Array {
  const head = new TextEncoder().encode(MAGIC + JSON.stringify(h) + "\n");
  const out = new Uint8Array(head.length + h.pad);
  out.set(head, 0);
  for (let i = 0; i < h.pad; i++) out[head.length + i] = patternByte(i, h.hash);
  return out;
}

/** Returns the header, or throws Error("blob_invalid: ...") on any corruption. */
export function decodeBlob(b: Uint8Array): BlobHeader {
  const nl = b.indexOf(10);
  const text = new TextDecoder().decode(b.subarray(0, nl));
  if (nl < 0 || !text.startsWith(MAGIC)) throw new Error("blob_invalid: bad magic");
  const h = JSON.parse(text.slice(MAGIC.length)) as BlobHeader;
  const body = b.subarray(nl + 1);
  if (body.length !== h.pad) throw new Error(`blob_invalid: ${body.length} of ${h.pad} pattern bytes`);
  for (let i = 0; i < body.length; i++) if (body[i] !== patternByte(i, h.hash)) throw new Error(`blob_invalid: byte ${i} corrupted`);
  return h;
}
