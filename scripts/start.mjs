// `npm start`: the whole stack on this machine — GPU service on CPU + Worker in local workerd.
import { join } from "node:path";
import { buildPlayground } from "./build-playground.mjs";
import { DEFAULT_MODEL, DEV_KEY, ROOT, ensureInstalled, newSecret, parseKeys, resolveModel, startGpuService, startWorker, stopProcess } from "./stack.mjs";

const port = Number(process.env.PORT ?? 8787);
const gpuPort = Number(process.env.LCKV_GPU_PORT ?? 8000);
for (const [name, p] of [["PORT", port], ["LCKV_GPU_PORT", gpuPort]]) {
  if (!Number.isInteger(p) || p < 1 || p > 65535) {
    console.error(`${name} must be a port number (1-65535), got ${JSON.stringify(process.env[name])}`);
    process.exit(2);
  }
}
const keys = parseKeys(process.env.LCKV_API_KEYS);
// the default port keeps the plain folder names; other ports get their own, so stacks side by side
// share neither sessions nor log files
const suffix = port === 8787 ? "" : `-${port}`;
const logDir = join(ROOT, ".wrangler", `logs${suffix}`);
const children = [];

async function shutdown(code) {
  await Promise.all(children.map((c) => stopProcess(c)));
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
  console.error(`[stack] starting GPU service (${device}) with ${model} and the Worker (logs in ${logDir})`);
  // Both start at once: the Worker needs the GPU service only when a request arrives.
  const started = await Promise.allSettled([
    startGpuService({ port: gpuPort, model, secret, logDir, device, extraArgs }),
    startWorker({ port, gpuPort, secret, keys, persistDir: join(ROOT, ".wrangler", `state${suffix}`), logDir }),
  ]);
  for (const r of started) if (r.status === "fulfilled") children.push(r.value);
  const failed = started.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  const keyNote = process.env.LCKV_API_KEYS ? "the keys in LCKV_API_KEYS" : `the development key ${DEV_KEY}`;
  console.log(`\nlckv-edge is up.\n  base URL: http://127.0.0.1:${port}/v1\n  API key:  ${keyNote}\n  Ctrl-C stops both processes.\n`);
  for (const c of children) c.on("exit", (code) => { console.error(`[stack] a process exited (${code}); stopping`); shutdown(1); });
} catch (e) {
  console.error(`[stack] ${e.message}`);
  await shutdown(1);
}
