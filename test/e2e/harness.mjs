// Starts a private stack for one e2e test file: fresh Durable Object state, free ports, two API keys.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { ROOT, newSecret, resolveModel, startGpuService, startWorker, stopProcess } from "../../scripts/stack.mjs";

export const KEY_A = "sk-e2e-tenant-a";
export const KEY_B = "sk-e2e-tenant-b";

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * `replicas` GPU-service processes (one by default) behind one Worker; `vars` are extra Worker vars
 * (e.g. shorter upstream timeouts), `gpuArgs` go to every replica's command line. `gpu` is replica 0,
 * `gpus` all of them.
 */
export async function startStack({ replicas = 1, vars = {}, gpuArgs = [] } = {}) {
  const port = await freePort();
  const gpuPorts = [];
  for (let i = 0; i < replicas; i++) gpuPorts.push(await freePort());
  const state = mkdtempSync(join(tmpdir(), "lckv-e2e-"));
  const logDir = join(ROOT, ".e2e", "logs");
  const secret = newSecret();
  const model = resolveModel();
  const startReplica = (i) => startGpuService({ port: gpuPorts[i], model, secret, logDir, extraArgs: gpuArgs,
    name: replicas === 1 ? "gpu-service" : `gpu-service-${i}` });
  const stack = {
    base: `http://127.0.0.1:${port}`,
    gpuPorts,
    gpus: await Promise.all(gpuPorts.map((_, i) => startReplica(i))),
    worker: null,
    get gpu() {
      return this.gpus[0];
    },
    /** SIGKILL replica i (default 0) and wait until it is gone. */
    async killGpu(i = 0) {
      await stopProcess(this.gpus[i], "SIGKILL");
    },
    async restartGpu(i = 0) {
      this.gpus[i] = await startReplica(i);
    },
    /** SIGSTOP / SIGCONT replica i: a frozen process that still holds its port. */
    freezeGpu(i, frozen = true) {
      process.kill(-this.gpus[i].pid, frozen ? "SIGSTOP" : "SIGCONT");
    },
    async stop() {
      for (const g of this.gpus) if (g.exitCode === null && g.signalCode === null) try { process.kill(-g.pid, "SIGCONT"); } catch {}
      await Promise.all([stopProcess(this.worker), ...this.gpus.map((g) => stopProcess(g))]);
      rmSync(state, { recursive: true, force: true });
      rmSync(join(ROOT, ".wrangler", "env", `worker-${port}.env`), { force: true }); // this stack's secrets
    },
    client(apiKey = KEY_A, opts = {}) {
      return new OpenAI({ baseURL: `${this.base}/v1`, apiKey, maxRetries: 0, timeout: 120_000, ...opts });
    },
    async session(id, apiKey = KEY_A) {
      return fetch(`${this.base}/v1/sessions/${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${apiKey}` } });
    },
  };
  stack.worker = await startWorker({ port, gpuPorts, secret, keys: [KEY_A, KEY_B], persistDir: state, logDir, vars });
  return stack;
}

/** Collects a streamed chat completion: text, chunks and the usage chunk. */
export async function collectStream(stream) {
  const chunks = [];
  let text = "";
  for await (const chunk of stream) {
    chunks.push(chunk);
    text += chunk.choices?.[0]?.delta?.content ?? "";
  }
  return { chunks, text, usage: chunks.at(-1)?.usage ?? null };
}
