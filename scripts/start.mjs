// `npm start`: the whole stack on this machine — GPU service replica(s) on CPU + Worker in local
// workerd, each supervised: a process that dies or stops answering its health check is restarted
// with backoff. Exits on Ctrl-C, or (code 1) when a process's restart budget is spent.
//   GPU_REPLICAS=2 npm start   (or `npm start -- --replicas 2`): replicas on LCKV_GPU_PORT, +1, ...
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildPlayground } from "./build-playground.mjs";
import { DEFAULT_MODEL, DEV_KEY, ROOT, ensureInstalled, newSecret, parseKeys, resolveModel, startGpuService, startWorker, stopProcess } from "./stack.mjs";
import { Supervisor } from "./supervise.mjs";

function fail(message) {
  console.error(message);
  process.exit(2);
}

function intSetting(name, raw, min, max, fallback) {
  if (raw === undefined) return fallback;
  const n = /^\d+$/.test(String(raw).trim()) ? Number(raw) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) fail(`${name} must be an integer in ${min}-${max}, got ${JSON.stringify(raw)}`);
  return n;
}

let flags;
try {
  flags = parseArgs({ options: { replicas: { type: "string" } } }).values;
} catch (e) {
  fail(`${e.message}\nusage: npm start [-- --replicas N]`);
}
const port = intSetting("PORT", process.env.PORT, 1, 65535, 8787);
const gpuPort = intSetting("LCKV_GPU_PORT", process.env.LCKV_GPU_PORT, 1, 65535, 8000);
const replicas = flags.replicas !== undefined
  ? intSetting("--replicas", flags.replicas, 1, 8, 1)
  : intSetting("GPU_REPLICAS", process.env.GPU_REPLICAS, 1, 8, 1);
const maxRestarts = intSetting("LCKV_MAX_RESTARTS", process.env.LCKV_MAX_RESTARTS, 0, 1000, 5);
const gpuPorts = Array.from({ length: replicas }, (_, i) => gpuPort + i);
if (gpuPorts.at(-1) > 65535) fail(`LCKV_GPU_PORT + GPU_REPLICAS - 1 must be at most 65535`);
if (gpuPorts.includes(port)) fail(`PORT ${port} collides with the GPU service ports ${gpuPorts.join(", ")}`);

const keys = parseKeys(process.env.LCKV_API_KEYS);
// the default port keeps the plain folder names; other ports get their own, so stacks side by side
// share neither sessions nor log files
const suffix = port === 8787 ? "" : `-${port}`;
const logDir = join(ROOT, ".wrangler", `logs${suffix}`);
const log = (msg) => console.error(`[stack] ${new Date().toISOString()} ${msg}`);
const supervisors = [];
let stopping = false;

async function shutdown(code) {
  if (stopping) return;
  stopping = true;
  await Promise.all(supervisors.map((s) => s.stop()));
  process.exit(code);
}
process.on("SIGINT", () => shutdown(0));
process.on("SIGTERM", () => shutdown(0));

try {
  ensureInstalled();
  const model = resolveModel();
  // the in-browser engine's ONNX export and runtime files (public/generated): always the bundled demo
  // model, small enough for a browser, whatever model the GPU service serves
  buildPlayground({ model: resolveModel(DEFAULT_MODEL) });
  const secret = process.env.GPU_SERVICE_SECRET ?? newSecret();
  const device = process.env.LCKV_DEVICE ?? "cpu";
  const extraArgs = [];
  if (process.env.LCKV_CHAT_TEMPLATE) extraArgs.push("--chat-template", process.env.LCKV_CHAT_TEMPLATE);
  if (process.env.LCKV_WINDOW) extraArgs.push("--window", process.env.LCKV_WINDOW);
  const supervised = (name, healthUrl, start) =>
    new Supervisor({ name, healthUrl, start, stop: stopProcess, log, maxRestarts });
  gpuPorts.forEach((p, i) => {
    const name = replicas === 1 ? "gpu-service" : `gpu-service-${i}`;
    supervisors.push(supervised(`${name} (port ${p})`, `http://127.0.0.1:${p}/readyz`,
      () => startGpuService({ port: p, model, secret, logDir, device, extraArgs, name })));
  });
  supervisors.push(supervised("worker", `http://127.0.0.1:${port}/healthz`,
    () => startWorker({ port, gpuPorts, secret, keys, persistDir: join(ROOT, ".wrangler", `state${suffix}`), logDir })));
  log(`starting ${replicas} GPU service replica(s) (${device}) with ${model} and the Worker (logs in ${logDir})`);
  // All at once: the Worker needs the GPU service only when a request arrives.
  const launched = await Promise.allSettled(supervisors.map((s) => s.launch()));
  const failed = launched.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  const keyNote = process.env.LCKV_API_KEYS ? "the keys in LCKV_API_KEYS" : `the development key ${DEV_KEY}`;
  console.log(`\nlckv-edge is up.\n  base URL: http://127.0.0.1:${port}/v1\n  API key:  ${keyNote}\n` +
    `  GPU service: ${gpuPorts.map((p) => `http://127.0.0.1:${p}`).join(", ")} (restarted if it dies or hangs)\n  Ctrl-C stops the stack.\n`);
  const reason = await Promise.race(supervisors.map((s) => s.done));
  log(`stopping: ${reason}`);
  await shutdown(1);
} catch (e) {
  log(e.message);
  await shutdown(1);
}
