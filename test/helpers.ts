// Shared test helpers: authenticated calls into the Worker (in-process), SSE parsing, and the
// GPU double's call log.
import { env, exports } from "cloudflare:workers";

const KEYS = JSON.parse(env.TEST_KEYS_JSON) as Record<string, string>;
export const keyOf = (tenant: string): string => KEYS[tenant]!;

export function call(path: string, init: RequestInit & { tenant?: string | null; json?: unknown } = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  const tenant = init.tenant === undefined ? "tenant-a" : init.tenant;
  if (tenant) headers.set("authorization", `Bearer ${keyOf(tenant)}`);
  let body = init.body;
  if (init.json !== undefined) {
    headers.set("content-type", "application/json");
    body = JSON.stringify(init.json);
  }
  return exports.default.fetch(new Request(`https://edge.test${path}`, { ...init, headers, body: body ?? null }));
}

export const chat = (json: unknown, init: RequestInit & { tenant?: string | null } = {}) =>
  call("/v1/chat/completions", { method: "POST", json, ...init });

/** Split an SSE body into its `data:` payloads (raw strings), checking the framing strictly. */
export function sseData(text: string): string[] {
  if (!text.endsWith("\n\n")) throw new Error("SSE body does not end with a blank line");
  return text.slice(0, -2).split("\n\n").map((ev) => {
    if (!ev.startsWith("data: ") || ev.includes("\n")) throw new Error(`unexpected SSE event: ${JSON.stringify(ev)}`);
    return ev.slice(6);
  });
}

/**
 * Split a Responses API SSE body into its event objects, checking the framing strictly: each event
 * is `event: <type>` then `data: <JSON whose type is the same>`. An empty body is no events.
 */
export function typedEvents(text: string): any[] {
  if (text === "") return [];
  if (!text.endsWith("\n\n")) throw new Error("SSE body does not end with a blank line");
  return text.slice(0, -2).split("\n\n").map((ev) => {
    const [name, data, ...rest] = ev.split("\n");
    if (!name?.startsWith("event: ") || !data?.startsWith("data: ") || rest.length > 0) {
      throw new Error(`unexpected SSE event: ${JSON.stringify(ev)}`);
    }
    const json = JSON.parse(data.slice(6));
    if (json.type !== name.slice(7)) throw new Error(`event name ${name} is not the data's type ${json.type}`);
    return json;
  });
}

/** One call the GPU double received (its own record type). */
export type { LogEntry as DoubleCall } from "./double/gpu-double";
import type { LogEntry as DoubleCall } from "./double/gpu-double";

/** The GPU double's record of the calls made for one of our request ids. */
export async function doubleLog(requestId: string): Promise<DoubleCall[]> {
  const res = await fetch(`http://gpu.test/__log?request_id=${encodeURIComponent(requestId)}`);
  return res.json();
}

export async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 3000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > until) return v;
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const user = (content: string) => ({ role: "user", content });
export const MODEL = "lckv-tiny";
