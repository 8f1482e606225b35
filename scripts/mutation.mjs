// Mutation run of the Worker: applies each named mutant below to src/ (one at a time), runs the
// whole Worker suite (vitest in workerd), and counts the mutants the suite kills. Not part of
// `npm test` (about 20 s per mutant); docs/mutation.md says how to run it and records the scores.
//
//   node scripts/mutation.mjs [--root DIR] [--only id,id]
//
// --root runs against another checkout (e.g. an older commit exported to /tmp with node_modules
// linked in). A mutant's `find` lists alternative spellings of the same code, and `or` names another
// file where the rule may live (older and newer layouts); exactly one occurrence of one of them must
// exist, or the run stops. --check only verifies that every mutant applies.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./stack.mjs";

export const MUTANTS = [
  // the four that survived the suite before (issue 18)
  { id: "ratelimit-headers-on-success", file: "src/middleware/rate-limit.ts",
    find: ['    c.header("x-ratelimit-limit-requests", String(rpm));\n    c.header("x-ratelimit-remaining-requests", String(r.remaining));\n    c.header("x-ratelimit-reset-requests", `${r.resetSeconds}s`);\n'], replace: "" },
  { id: "watchdog-kick-per-frame", file: "src/upstream/client.ts", find: ["    watchdog.kick();\n"], replace: "" },
  { id: "onerror-unwraps-httpexception", file: "src/errors.ts", find: ["  if (err instanceof HTTPException) {"], replace: "  if (false) {" },
  { id: "alarm-waits-for-running-turn", file: "src/session/object.ts", find: ["    if (this.running) {\n      await this.ctx.storage.setAlarm("], replace: "    if (false) {\n      await this.ctx.storage.setAlarm(" },
  // the rest of the Worker's rules
  { id: "auth-unknown-key-accepted", file: "src/middleware/auth.ts", find: ["    if (tenant === null) throw invalidKey();\n"], replace: "" },
  { id: "body-cap-by-content-length", file: "src/middleware/json-body.ts", find: ["Number(declared) > max) throw tooLarge(max);"], replace: "Number(declared) > max * 2) throw tooLarge(max);" },
  { id: "body-cap-by-bytes-read", file: "src/middleware/json-body.ts", find: ["    if (size > max) {"], replace: "    if (size > max * 2) {" },
  { id: "n-other-than-1", file: "src/openai/normalize.ts", find: ["if (r.n != null && r.n !== 1)"], replace: "if (r.n != null && r.n > 2)",
    or: { file: "src/openai/schemas.ts", find: ['n: supportedOnly("n", nullish(z.literal(1)), "1"),'], replace: "n: nullish(z.int().min(1).max(128))," } },
  { id: "default-temperature", file: "src/openai/normalize.ts", find: ["s.temperature = r.temperature ?? DEFAULT_TEMPERATURE;"], replace: "s.temperature = r.temperature ?? 0;" },
  { id: "completions-default-max-tokens", file: "src/openai/normalize.ts", find: ["r.max_tokens ?? 16)"], replace: "r.max_tokens ?? 17)" },
  { id: "sse-done-marker", file: "src/openai/sse.ts", find: ['          await stream.writeSSE({ data: "[DONE]" });\n'], replace: "" },
  { id: "sse-usage-chunk", file: "src/openai/sse.ts", find: ["          if (includeUsage) await send("], replace: "          if (false) await send(" },
  { id: "sse-stops-on-client-abort", file: "src/openai/sse.ts", find: ["        if (stream.aborted) break;\n"], replace: "" },
  { id: "cached-tokens-reported", file: "src/openai/responses.ts", find: ["prompt_tokens_details: { cached_tokens: u.cached_tokens },"], replace: "prompt_tokens_details: { cached_tokens: 0 }," },
  { id: "reuse-needs-longer-request", file: "src/session/transcript.ts", find: ["if (request.length > transcript.length && isPrefix(transcript, request))"], replace: "if (request.length >= transcript.length && isPrefix(transcript, request))" },
  { id: "other-instructions-rebuild", file: "src/session/transcript.ts", find: ["    if (!sameMessage(request[0]!, transcript[0]!)) return rebuild(transcript, request);\n"], replace: "" },
  { id: "blob-refused-rebuilds", file: "src/session/object.ts", find: ['if (BLOB_REFUSED.has(err.code ?? "") && plan.useBlob) {'], replace: 'if (false) {' },
  { id: "delete-busy-session", file: "src/session/object.ts", find: ['    if (this.running) return "busy";\n'], replace: "" },
  { id: "tenant-scoped-session-ids", file: "src/session/key.ts", find: ["idFromName(`${tenant}:${sessionId}`)"], replace: "idFromName(`${sessionId}`)" },
  { id: "overload-retry-after", file: "src/upstream/errors.ts", find: ["retryAfter: err.retryAfter ?? 1 }", "retryAfter: retryAfter ?? 1 }"], replace: "retryAfter: 1 }" },
  { id: "public-param-names-in-messages", file: "src/upstream/errors.ts", find: ['body.message.replace(/\\bsampling\\.(?=[a-z_]+)/g, "")'], replace: "body.message" },
  { id: "blob-byte-count", file: "src/upstream/client.ts", find: ["  if (got !== expected) throw broken("], replace: "  if (got > expected) throw broken(" },
  { id: "start-frame-required", file: "src/upstream/client.ts", find: ['if (first?.kind !== "J" || first.json.type !== "start") {'], replace: 'if (first?.kind !== "J") {' },
  { id: "frame-cut-midway", file: "src/upstream/frames.ts", find: ['        if (buf.length > 0) throw new FrameError("stream ended inside a frame");\n'], replace: "" },
  { id: "bucket-capacity", file: "src/ratelimit/bucket.ts", find: ["const tokens = Math.min(rpm, prev.tokens"], replace: "const tokens = Math.min(rpm + 5, prev.tokens" },
  // (before: the header set ahead of the handlers, which a fallback after them made redundant; now the one place)
  { id: "request-id-header", file: "src/middleware/request-log.ts", find: ['    c.res.headers.set("x-request-id", requestId);\n'], replace: "" },
  { id: "unknown-model-echo-clipped", file: "src/upstream/models.ts", find: ["clip(id, 100)"], replace: "id" },
];

function argValue(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

function apply(root, m) {
  for (const at of [m, m.or].filter(Boolean)) {
    const path = join(root, at.file);
    const original = existsSync(path) ? readFileSync(path, "utf8") : "";
    const k = at.find.findIndex((f) => original.split(f).length - 1 === 1);
    if (k < 0) continue;
    writeFileSync(path, original.replace(at.find[k], at.replace));
    return () => writeFileSync(path, original);
  }
  throw new Error(`mutant ${m.id}: none of its find strings occurs exactly once where it looks`);
}

const root = argValue("--root") ?? ROOT;
const only = argValue("--only")?.split(",");
const mutants = MUTANTS.filter((m) => !only || only.includes(m.id));
if (process.argv.includes("--check")) {
  for (const m of mutants) apply(root, m)();
  console.log(`all ${mutants.length} mutants apply`);
  process.exit(0);
}
const results = [];
for (const m of mutants) {
  const restore = apply(root, m);
  const t0 = Date.now();
  let r;
  try {
    r = spawnSync(join(root, "node_modules", ".bin", "vitest"), ["run", "--bail=1", "--reporter=dot"], { cwd: root, encoding: "utf8" });
  } finally {
    restore();
  }
  // killed only by a failing test (a suite that did not start proves nothing)
  const output = `${r.stdout}\n${r.stderr}`.replace(/\x1b\[[0-9;]*m/g, "");
  const failing = /(?:FAIL|×)\s+(test\/\S+\.test\.ts[^\n]*)/.exec(output)?.[1]?.trim();
  if (r.status !== 0 && !failing) throw new Error(`mutant ${m.id}: the suite failed without a failing test:\n${output.slice(-3000)}`);
  const killed = r.status !== 0;
  results.push({ id: m.id, killed });
  console.log(`${killed ? "killed  " : "SURVIVED"} ${m.id} (${((Date.now() - t0) / 1000).toFixed(0)}s)${killed ? ` by ${failing}` : ""}`);
}
const killed = results.filter((r) => r.killed).length;
console.log(`\nmutation score: ${killed}/${results.length} killed (${((100 * killed) / results.length).toFixed(0)}%)`);
const survivors = results.filter((r) => !r.killed).map((r) => r.id);
if (survivors.length) console.log(`survivors: ${survivors.join(", ")}`);
