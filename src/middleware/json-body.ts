// Reads a route's JSON request body before the route's schema validates it: Content-Type must be
// JSON (checked first, so a form post never surfaces as "missing messages"), Content-Length must be
// a number, the body is capped at MAX_BODY_BYTES both by its Content-Length and by the bytes
// actually read (413 either way), and it must be UTF-8 JSON holding an object, which the route's
// validator then checks.
import type { MiddlewareHandler } from "hono";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";

// The JSON media types (with parameters) the route validator accepts; anything else is a 415 here.
const JSON_TYPE = /^application\/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$/i;

const tooLarge = (max: number) =>
  new ApiError(413, `Request body exceeds ${max} bytes.`, { code: "request_too_large", shouldRetry: false });

/**
 * A `seed` written as an integer literal beyond 2^53 is read exactly, as a BigInt (a JS number would
 * round it: 2^63 + 1 would pass as 2^63). The schema then bounds it to 64 bits.
 */
function exactSeed(key: string, value: unknown, context?: { source?: string }): unknown {
  if (key !== "seed" || typeof value !== "number" || Number.isSafeInteger(value)) return value;
  const source = context?.source;
  return source !== undefined && /^-?\d+$/.test(source) ? BigInt(source) : value;
}

async function readCapped(body: ReadableStream<Uint8Array>, max: number): Promise<Uint8Array> {
  const reader = body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > max) {
      await reader.cancel().catch(() => {});
      throw tooLarge(max);
    }
    parts.push(value);
  }
  const bytes = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    bytes.set(p, off);
    off += p.length;
  }
  return bytes;
}

export function jsonBody(): MiddlewareHandler<AppEnv> {
  return async function jsonBody(c, next) {
    const max = loadConfig(c.env).maxBodyBytes;
    if (!JSON_TYPE.test(c.req.header("content-type") ?? "")) {
      throw new ApiError(415, "Content-Type must be application/json.", { code: "unsupported_media_type", param: "content-type" });
    }
    const declared = c.req.header("content-length");
    if (declared !== undefined && !/^\d+$/.test(declared.trim())) {
      throw new ApiError(400, "The Content-Length header is not a number of bytes.", { code: "invalid_header", param: "content-length" });
    }
    if (declared !== undefined && Number(declared) > max) throw tooLarge(max);
    const body = c.req.raw.body;
    if (!body) throw new ApiError(400, "The request body is empty.", { code: "invalid_json" });
    const bytes = await readCapped(body, max);
    let value: unknown;
    try {
      value = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes), exactSeed);
    } catch {
      throw new ApiError(400, "The request body is not valid JSON.", { code: "invalid_json" });
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new ApiError(400, "The request body must be a JSON object.", { code: "invalid_json" });
    }
    // the route's validator reads the body through c.req.json(): give it this value
    c.req.json = <T>() => Promise.resolve(value as T);
    await next();
  };
}
