// `npm start` as an operator runs it: a GPU service killed (-9) or frozen (SIGSTOP) is restarted with
// backoff and the log says so; meanwhile the API answers 503 upstream_unavailable with retry-after;
// once the restart budget is spent the whole stack stops (exit code 1) and leaves no process behind.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import OpenAI from "openai";
import { ROOT } from "../../scripts/stack.mjs";
import { freePort } from "./harness.mjs";

const KEY = "sk-e2e-supervise";
let stack; // the npm start process
let output = "";
let base;
let port;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(pattern, ms, from = 0) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const m = pattern.exec(output.slice(from));
    if (m) return m;
    await sleep(100);
  }
  throw new Error(`no ${pattern} in npm start's output within ${ms} ms:\n${output.slice(from)}`);
}
const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const chat = () => fetch(`${base}/v1/chat/completions`, {
  method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
  body: JSON.stringify({ model: "lckv-tiny", max_tokens: 4, messages: [{ role: "user", content: "hi" }] }),
});

before(async () => {
  let gpuPort;
  [port, gpuPort] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${port}`;
  stack = spawn(process.execPath, [join(ROOT, "scripts", "start.mjs")], {
    cwd: ROOT, detached: true, stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PORT: String(port), LCKV_GPU_PORT: String(gpuPort), LCKV_API_KEYS: KEY, LCKV_MAX_RESTARTS: "2" },
  });
  for (const s of [stack.stdout, stack.stderr]) s.on("data", (d) => (output += d));
  await until(/lckv-edge is up/, 240_000);
});
after(async () => {
  if (stack.exitCode === null) {
    process.kill(-stack.pid, "SIGINT");
    await new Promise((r) => stack.once("exit", r));
  }
  // this stack's own state, logs and env file (npm start names them by port)
  for (const p of [`state-${port}`, `logs-${port}`, join("env", `worker-${port}.env`)]) rmSync(join(ROOT, ".wrangler", p), { recursive: true, force: true });
});

test("a killed GPU service is restarted; meanwhile 503 upstream_unavailable with retry-after", async () => {
  const pid = Number((await until(/gpu-service \(port \d+\) is up \(pid (\d+)\)/, 1000))[1]);
  assert.equal((await chat()).status, 200);
  const mark = output.length;
  process.kill(pid, "SIGKILL");
  while (alive(pid)) await sleep(10);
  const res = await chat();
  assert.equal(res.status, 503);
  assert.equal((await res.json()).error.code, "upstream_unavailable");
  assert.ok(Number(res.headers.get("retry-after")) >= 1);
  await until(/gpu-service \(port \d+\) exited \(SIGKILL\); restarting in 1s/, 5000, mark);
  await until(/gpu-service \(port \d+\) is back/, 120_000, mark);
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, maxRetries: 4 }); // honours retry-after
  const r = await client.chat.completions.create({ model: "lckv-tiny", max_tokens: 4, messages: [{ role: "user", content: "back?" }] });
  assert.equal(r.object, "chat.completion");
});

test("a frozen GPU service fails its health checks, is killed and restarted", async () => {
  const pid = Number((await until(/is back \(pid (\d+)/, 1000))[1]);
  const mark = output.length;
  process.kill(pid, "SIGSTOP");
  await until(/is unhealthy \(.*readyz failed 3 checks in a row\); killing it/, 30_000, mark);
  await until(/was unhealthy; restarting in 2s \(restart 2 of 2/, 5000, mark);
  await until(/is back/, 120_000, mark);
  assert.equal(alive(pid), false, "the frozen process is gone");
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: KEY, maxRetries: 4 });
  await client.chat.completions.create({ model: "lckv-tiny", max_tokens: 4, messages: [{ role: "user", content: "and now?" }] });
});

test("when the restart budget is spent the stack stops with exit code 1 and leaves no process", async () => {
  const mark = output.length;
  const pid = Number([...output.matchAll(/is back \(pid (\d+)/g)].at(-1)[1]);
  const workerPid = Number((await until(/worker is up \(pid (\d+)\)/, 1000))[1]);
  const exited = new Promise((r) => stack.once("exit", (code) => r(code)));
  process.kill(pid, "SIGKILL");
  await until(/restart budget spent \(2 restarts in 10 min\)/, 10_000, mark);
  assert.equal(await exited, 1);
  assert.equal(alive(workerPid), false, "the Worker was stopped too");
});
