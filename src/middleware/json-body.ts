// Read a JSON request body: Content-Type must be JSON (checked before validation, so a form post
// never surfaces as "missing messages"), and the body is capped at MAX_BODY_BYTES both by its
// Content-Length and by the bytes actually read (413 either way).
import type { Context } from "hono";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";

const tooLarge = (max: number) =>
  new ApiError(413, `Request body exceeds ${max} bytes.`, { code: "request_too_large", shouldRetry: false });

export async function readJsonBody(c: Context<AppEnv>): Promise<unknown> {
  const max = loadConfig(c.env).maxBodyBytes;
  const type = (c.req.header("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json" && !/^application\/[\w.+-]*\+json$/.test(type)) {
    throw new ApiError(415, "Content-Type must be application/json.", { code: "unsupported_media_type", param: "content-type" });
  }
  const declared = c.req.header("content-length");
  if (declared !== undefined && Number(declared) > max) throw tooLarge(max);
  const body = c.req.raw.body;
  if (!body) throw new ApiError(400, "The request body is empty.", { code: "invalid_json" });
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
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes));
  } catch {
    throw new ApiError(400, "The request body is not valid JSON.", { code: "invalid_json" });
  }
}
