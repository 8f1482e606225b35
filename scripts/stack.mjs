// The local stack: installs what is missing, starts the GPU service (CPU) and the Worker (wrangler dev),
// waits until both are healthy. Used by `npm start` (start.mjs) and the end-to-end tests (e2e.mjs).
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const VENV_PYTHON = join(ROOT, ".venv", "bin", "python");
export const DEFAULT_MODEL = join(ROOT, "gpu-service", "models", "lckv-tiny");
export const DEV_KEY = "sk-lckv-dev";

const log = (msg) => process.stderr.write(`[stack] ${msg}\n`);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: "inherit", ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed with exit code ${r.status}`);
}

const sha256 = (s) => createHash("sha256").update(s).digest("hex");

/** npm packages (when package-lock.json changed) and the Python venv (when pyproject changed). */
export function ensureInstalled() {
  const lock = join(ROOT, "package-lock.json");
  const stamp = join(ROOT, "node_modules", ".lckv-lock-hash");
  const want = existsSync(lock) ? sha256(readFileSync(lock)) : "none";
  if (!existsSync(stamp) || readFileSync(stamp, "utf8") !== want) {
    log("installing npm packages (npm ci)");
    run("npm", ["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    writeFileSync(stamp, want);
  }
  run("bash", [join(ROOT, "scripts", "setup-python.sh")]);
}

/** Each raw API key becomes its own tenant: "key-" + first 12 hex of its SHA-256 (src/auth mirrors this). */
export function tenantOf(key) {
  return `key-${sha256(key).slice(0, 12)}`;
}

/** One API_KEY_HASHES entry: "tenant:sha256hex(key)" (src/auth/keys.ts parses it). */
export function keyHashEntry(tenant, key) {
  return `${tenant}:${sha256(key)}`;
}

export function apiKeyHashes(keys) {
  return keys.map((k) => keyHashEntry(tenantOf(k), k)).join(",");
}

export function parseKeys(value) {
  const keys = (value ?? DEV_KEY).split(",").map((k) => k.trim()).filter(Boolean);
  if (keys.length === 0) throw new Error("LCKV_API_KEYS is set but holds no key");
  return keys;
}

async function waitFor(url, { timeoutMs, child, name }) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited early with code ${child.exitCode}`);
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
      if (r.ok) return;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`${name} not healthy at ${url} after ${timeoutMs / 1000}s`);
}

function spawnLogged(name, cmd, args, { env, logDir }) {
  mkdirSync(logDir, { recursive: true });
  const out = openSync(join(logDir, `${name}.log`), "a");
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", out, out], detached: true });
  child.on("error", (e) => log(`${name}: ${e.message}`));
  return child;
}

export function stopProcess(child, signal = "SIGTERM") {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const t = setTimeout(() => {
      try { process.kill(-child.pid, "SIGKILL"); } catch {}
      res();
    }, 5000);
    child.once("exit", () => { clearTimeout(t); res(); });
    try { process.kill(-child.pid, signal); } catch { clearTimeout(t); res(); }
  });
}

/** Wait until `url` is healthy; a process that never gets there is killed, not left behind. */
async function started(child, url, opts) {
  try {
    await waitFor(url, { child, ...opts });
    return child;
  } catch (e) {
    await stopProcess(child, "SIGKILL");
    throw e;
  }
}

/**
 * Start the GPU service (CPU unless `device` says). Resolves once /readyz answers 200 (model loaded
 * and warm). Its log lines are JSON (one per request, with the Worker's request id) unless
 * LOG_FORMAT says otherwise.
 */
export async function startGpuService({ port, model, secret, logDir, device = "cpu", extraArgs = [], name = "gpu-service" }) {
  const args = ["-m", "lckv_service", "serve", "--model", model, "--host", "127.0.0.1", "--port", String(port), "--device", device, ...extraArgs];
  // one thread suits the tiny demo model (more only contend); a real model on CPU wants LCKV_CPU_THREADS=<cores>
  const threads = process.env.LCKV_CPU_THREADS ?? "1";
  const env = { GPU_SERVICE_SECRET: secret, OMP_NUM_THREADS: threads, LOG_FORMAT: process.env.LOG_FORMAT ?? "json" };
  const child = spawnLogged(name, VENV_PYTHON, args, { env, logDir });
  return started(child, `http://127.0.0.1:${port}/readyz`, { timeoutMs: 180_000, name });
}

/**
 * Start the Worker in local workerd (wrangler dev). Secrets go through an env file of this stack's own
 * (by port), so stacks side by side on other ports never overwrite each other's secrets. The log
 * level keeps the Worker's own JSON lines (access log, session turns) in the log file.
 */
export async function startWorker({ port, gpuPorts, secret, keys, persistDir, logDir, vars = {} }) {
  const devVars = [
    `GPU_SERVICE_SECRET=${JSON.stringify(secret)}`,
    `API_KEY_HASHES=${JSON.stringify(apiKeyHashes(keys))}`,
  ].join("\n");
  const envDir = join(ROOT, ".wrangler", "env");
  mkdirSync(envDir, { recursive: true, mode: 0o700 });
  const envFile = join(envDir, `worker-${port}.env`);
  writeFileSync(envFile, devVars + "\n", { mode: 0o600 });
  const replicas = gpuPorts.map((p) => `http://127.0.0.1:${p}`).join(",");
  const varArgs = Object.entries({ GPU_SERVICE_URL: replicas, ...vars }).flatMap(([k, v]) => ["--var", `${k}:${v}`]);
  const args = [join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js"), "dev", "--ip", "127.0.0.1", "--port", String(port),
    "--persist-to", persistDir, "--env-file", envFile, "--show-interactive-dev-session=false", "--log-level", "log", ...varArgs];
  const child = spawnLogged("worker", process.execPath, args, { env: { WRANGLER_SEND_METRICS: "false", NO_COLOR: "1" }, logDir });
  return started(child, `http://127.0.0.1:${port}/healthz`, { timeoutMs: 120_000, name: "Worker (wrangler dev)" });
}

export function newSecret() {
  return randomBytes(24).toString("hex");
}

const hasWeights = (folder) =>
  existsSync(join(folder, "model.safetensors")) || existsSync(join(folder, "model.safetensors.index.json"));

/**
 * The model folder to serve: LCKV_MODEL (a Hugging Face folder: config.json, tokenizer files, one or
 * sharded safetensors), else the bundled demo model, or (if its weights are absent) a random test model.
 */
export function resolveModel(preferred = process.env.LCKV_MODEL ?? DEFAULT_MODEL) {
  if (hasWeights(preferred)) return preferred;
  if (resolve(preferred) !== resolve(DEFAULT_MODEL)) {
    throw new Error(`LCKV_MODEL=${preferred} holds no model.safetensors or model.safetensors.index.json`);
  }
  const fallback = join(ROOT, ".e2e", "test-model");
  if (!existsSync(join(fallback, "model.safetensors"))) {
    log(`no weights in ${preferred}; building a small random-weight test model in ${fallback}`);
    run(VENV_PYTHON, ["-m", "lckv_service", "make-test-model", fallback]);
  }
  return fallback;
}
