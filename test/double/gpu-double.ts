// A GPU-service test double that speaks docs/internal-protocol.md for real (its own frame codec),
// generates deterministic text from a rolling hash of the rendered conversation, returns blobs of a
// requested size, and records each call (incl. cancellations) for the tests to inspect.
//
// Directives in the text sent (messages or prompt) steer it: @blob=N (blob pattern bytes),
// @slow (30 ms per delta), @slowstart (the start frame 300 ms late), @drip (200 deltas, 40 ms apart), @hang (stall after the first delta until cancelled), @fail (in-band
// error after 2 deltas), @cut (close the stream after 2 deltas), @reset (the connection fails after
// 2 deltas, as when the service process dies), @cutblob (close mid-blob), @shortblob (fewer blob
// bytes than `done` announced, then E), @nostart (a delta before the start frame),
// @ctx (400 context_length_exceeded), @limit=N (the same when the prompt is over N bytes: 1 byte = 1 token), @overload (503 + retry-after), @crash (500),
// @unauth (401, as if the shared secret were wrong), @blobversion / @blobinvalid (refuse the blob sent
// with this request as of another format version / as corrupt).
// Replicas: every host name is a replica of its own; `/__replica?host=H&state=up|down|frozen` sets one
// (down: the connection fails, as when the process is dead; frozen: no answer at all, as under SIGSTOP).
import { decodeBlob, encodeBlob, fnv1a, FNV_INIT } from "./blob";
import { frame, J, parseAll } from "./wire";

interface Env {
  SECRET: string;
}

const MODELS = [
  { id: "lckv-tiny", fingerprint: "fp-tiny", context_window: 4096, max_prompt_tokens: 4096, kv_layers: 3, num_layers: 8,
    cache_bytes_per_token: 1536, sinks: 4, window: 4092, created: 1764000000 },
  { id: "lckv-alt", fingerprint: "fp-alt", context_window: 2048, max_prompt_tokens: 2048, kv_layers: 2, num_layers: 6,
    cache_bytes_per_token: 1024, sinks: 4, window: 2044, created: 1764000001 },
];
const WORDS = ["once", "upon", "a", "time", "the", "fox", "ran", "far", "away", "and", "slept", "well"];
const FIELDS = new Set(["request_id", "model", "kind", "messages", "prompt", "sampling", "return_blob"]);

export interface LogEntry {
  request_id: string;
  model: string;
  kind: string;
  messages: { role: string; content: string }[];
  prompt?: string;
  sampling: Record<string, any>;
  blob_in_bytes: number;
  return_blob: boolean;
  status: number;
  outcome: string;
  host: string;
  x_request_id: string | null;
}
const log = new Map<string, LogEntry[]>();
const replicaState = new Map<string, "up" | "down" | "frozen">();

const err = (status: number, message: string, code: string, param: string | null = null, headers: Record<string, string> = {},
  extra: Record<string, unknown> = {}) =>
  new Response(JSON.stringify({ error: { message, type: status >= 500 ? "server_error" : status === 401 ? "authentication_error" : "invalid_request_error", param, code, ...extra } }),
    { status, headers: { "content-type": "application/json", ...headers } });

const render = (msgs: { role: string; content: string }[]) => msgs.map((m) => `<|${m.role}|>\n${m.content}<|end|>\n`).join("");
const bytes = (s: string) => new TextEncoder().encode(s).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/__log") return Response.json(log.get(url.searchParams.get("request_id") ?? "") ?? []);
    if (url.pathname === "/__replica") {
      replicaState.set(url.searchParams.get("host")!, url.searchParams.get("state") as "up" | "down" | "frozen");
      return Response.json({ ok: true });
    }
    const state = replicaState.get(url.host) ?? "up";
    if (state === "down") throw new Error("connection refused");
    if (state === "frozen") {
      await new Promise((resolve) => request.signal.addEventListener("abort", resolve));
      throw new Error("caller went away");
    }
    if (url.pathname === "/healthz") return Response.json({ status: "ok" });
    if (url.pathname === "/readyz") return Response.json({ status: "ready" });
    if (request.headers.get("authorization") !== `Bearer ${env.SECRET}`) return err(401, "bad secret", "invalid_service_secret");
    if (url.pathname === "/v1/internal/models" && request.method === "GET") return Response.json({ models: MODELS });
    if (url.pathname === "/v1/internal/generate" && request.method === "POST") return generate(request);
    return err(404, "no route", "not_found");
  },
};

async function generate(request: Request): Promise<Response> {
  let frames;
  try {
    frames = parseAll(new Uint8Array(await request.arrayBuffer()));
  } catch (e) {
    return err(400, String(e), "invalid_frame");
  }
  const head = frames[0];
  if (head?.kind !== "J") return err(400, "first frame must be J", "invalid_frame");
  const req = head.json;
  for (const k of Object.keys(req)) if (!FIELDS.has(k)) return err(400, `unknown field ${k}`, "invalid_value", k);
  const rest = frames.slice(1);
  const blobParts: Uint8Array[] = [];
  for (const [i, f] of rest.entries()) {
    if (f.kind === "B") {
      if (f.bytes.length > 1024 * 1024) return err(400, "B frame over 1 MiB", "invalid_frame");
      blobParts.push(f.bytes);
    } else if (f.kind !== "E" || i !== rest.length - 1) return err(400, "bad frame order", "invalid_frame");
  }
  const blobIn = new Uint8Array(blobParts.reduce((n, p) => n + p.length, 0));
  blobParts.reduce((off, p) => (blobIn.set(p, off), off + p.length), 0);

  const entry: LogEntry = { request_id: req.request_id, model: req.model, kind: req.kind, messages: req.messages ?? [],
    prompt: req.prompt, sampling: req.sampling ?? {}, blob_in_bytes: blobIn.length, return_blob: req.return_blob, status: 200, outcome: "started",
    host: new URL(request.url).host, x_request_id: request.headers.get("x-request-id") };
  log.set(req.request_id, [...(log.get(req.request_id) ?? []), entry]);
  const fail = (status: number, message: string, code: string, param: string | null = null, headers = {}, extra = {}) => {
    entry.status = status;
    entry.outcome = code;
    return err(status, message, code, param, headers, extra);
  };

  const model = MODELS.find((m) => m.id === req.model);
  if (!model) return fail(404, "unknown model", "model_not_found", "model");
  const isChat = req.kind === "chat";
  const newText = isChat ? render(req.messages) + "<|assistant|>\n" : String(req.prompt);
  let prev = { tokens: 0, hash: FNV_INIT };
  if (blobIn.length > 0) {
    try {
      const h = decodeBlob(blobIn);
      if (h.fingerprint !== model.fingerprint) return fail(409, "blob made for another model", "blob_model_mismatch", "blob");
      if (newText.includes("@blobversion")) return fail(409, "blob format version 2 is not supported", "blob_version", "blob");
      if (newText.includes("@blobinvalid")) return fail(400, "blob checksum mismatch (corrupted)", "blob_invalid", "blob");
      prev = h;
    } catch (e) {
      return fail(400, String(e), "blob_invalid", "blob");
    }
  }
  if (newText.includes("@ctx")) return fail(400, "prompt too long", "context_length_exceeded", "messages");
  const limit = /@limit=(\d+)/.exec(newText);
  if (limit && bytes(newText) > Number(limit[1])) {
    return fail(400, `the new prompt has ${bytes(newText)} tokens, more than the limit of ${limit[1]}`, "context_length_exceeded", "messages", {},
      { limits: { prompt_tokens: bytes(newText), max_prompt_tokens: Number(limit[1]) } });
  }
  if (newText.includes("@crash")) return fail(500, "internal error", "internal_error");
  if (newText.includes("@unauth")) return fail(401, "bad secret", "invalid_service_secret");
  if (newText.includes("@overload")) return fail(503, "queue full", "overloaded", null, { "retry-after": "2" });
  const s = req.sampling ?? {};
  if (s.temperature !== undefined && (s.temperature < 0 || s.temperature > 2)) return fail(400, "bad temperature", "invalid_value", "sampling.temperature");
  // the real service's wording: its message names the field by its internal path
  if (s.max_tokens !== undefined && s.max_tokens > 4096) return fail(400, "sampling.max_tokens must be an integer in 1..4096", "invalid_value", "sampling.max_tokens");

  const promptHash = fnv1a(prev.hash, newText);
  const promptTokens = prev.tokens + bytes(newText);
  const padMatch = /@blob=(\d+)/.exec(newText);
  const pad = padMatch ? Number(padMatch[1]) : 64;
  const drip = newText.includes("@drip"); // a long generation: 200 deltas, 40 ms apart
  const target = drip ? 200 : 4 + (promptHash % 4);
  const maxTokens = s.max_tokens ?? 256;
  const stops: string[] = s.stop ?? [];

  let cancelled = false;
  const onCancel = () => {
    if (!cancelled && entry.outcome === "started") entry.outcome = "cancelled";
    cancelled = true;
  };
  request.signal.addEventListener("abort", onCancel);

  const body = new ReadableStream<Uint8Array>({
    async start(ctl) {
      const send = (chunk: Uint8Array) => !cancelled && ctl.enqueue(chunk);
      if (newText.includes("@slowstart")) await sleep(300); // a cold replica: the first frame comes late
      if (newText.includes("@nostart")) send(J({ type: "delta", text: "early", token_ids: [0] })); // a delta before start
      send(J({ type: "start", request_id: req.request_id, model: model.id, prompt_tokens: promptTokens, cached_tokens: prev.tokens, created: 1764500000 }));
      let reply = "";
      let finish: "stop" | "length" = "stop";
      for (let i = 0; i < target; i++) {
        if (i >= maxTokens) { finish = "length"; break; }
        if (newText.includes("@slow")) await sleep(30);
        if (drip) await sleep(40);
        if (i === 1 && newText.includes("@hang")) {
          for (let t = 0; t < 600 && !cancelled; t++) await sleep(50);
        }
        if (cancelled) return;
        if (i === 2 && newText.includes("@fail")) {
          entry.outcome = "failed";
          send(J({ type: "error", error: { message: "simulated engine failure", type: "server_error", param: null, code: "internal_error" } }));
          send(frame("E"));
          return ctl.close();
        }
        if (i === 2 && newText.includes("@cut")) { entry.outcome = "cut"; return ctl.close(); }
        if (i === 2 && newText.includes("@reset")) {
          await sleep(100); // the reader takes what was sent (an errored stream drops its queue), then the reset
          entry.outcome = "reset";
          return ctl.error(new Error("connection reset"));
        }
        const piece = (i > 0 ? " " : "") + WORDS[(promptHash >>> (i * 3)) % WORDS.length]!;
        const cand = reply + piece;
        const hit = stops.map((st) => cand.indexOf(st)).filter((x) => x >= 0).sort((a, b) => a - b)[0];
        if (hit !== undefined) {
          if (hit > reply.length) send(J({ type: "delta", text: cand.slice(reply.length, hit), token_ids: [i] }));
          reply = cand.slice(0, hit);
          break;
        }
        reply = cand;
        send(J({ type: "delta", text: piece, token_ids: [i] }));
      }
      const completion = reply.split(" ").filter(Boolean).length;
      const tail = reply + "<|end|>\n";
      const blob = req.return_blob ? encodeBlob({ fingerprint: model.fingerprint, tokens: promptTokens + bytes(tail), hash: fnv1a(promptHash, tail), pad }) : new Uint8Array(0);
      const announced = blob.length + (newText.includes("@shortblob") ? 10 : 0); // @shortblob: fewer bytes than announced
      send(J({ type: "done", finish_reason: finish, usage: { prompt_tokens: promptTokens, completion_tokens: completion,
        total_tokens: promptTokens + completion, cached_tokens: prev.tokens }, blob_bytes: announced,
        session: { tokens_seen: promptTokens + bytes(tail), cache_tokens: promptTokens + bytes(tail), evicted_tokens: 0 } }));
      for (let off = 0; off < blob.length; off += 1024 * 1024) {
        if (newText.includes("@cutblob") && off > 0) { entry.outcome = "cutblob"; return ctl.close(); }
        send(frame("B", blob.subarray(off, off + 1024 * 1024)));
      }
      if (newText.includes("@cutblob")) { entry.outcome = "cutblob"; return ctl.close(); }
      send(frame("E"));
      if (!cancelled) entry.outcome = "done";
      ctl.close();
    },
    cancel: onCancel,
  });
  return new Response(body, { headers: { "content-type": "application/vnd.lckv.frames" } });
}
