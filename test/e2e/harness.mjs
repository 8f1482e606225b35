// Starts a private stack for one e2e test file: fresh Durable Object state, free ports, two API keys.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { ROOT, newSecret, resolveModel, startGpuService, startWorker, stopProcess } from "../../scripts/stack.mjs";

export const KEY_A = "sk-e2e-tenant-a";
export const KEY_B = "sk-e2e-tenant-b";

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** `gpuArgs` go to the GPU service's command line, `workerVars` to wrangler dev (--var). */
export async function startStack({ gpuArgs = [], workerVars = {} } = {}) {
  const [port, gpuPort] = [await freePort(), await freePort()];
  const state = mkdtempSync(join(tmpdir(), "lckv-e2e-"));
  const logDir = join(ROOT, ".e2e", "logs");
  const secret = newSecret();
  const model = resolveModel();
  const stack = {
    base: `http://127.0.0.1:${port}`,
    gpu: await startGpuService({ port: gpuPort, model, secret, logDir, extraArgs: gpuArgs }),
    worker: null,
    async killGpu() {
      await stopProcess(this.gpu, "SIGKILL");
    },
    async restartGpu() {
      this.gpu = await startGpuService({ port: gpuPort, model, secret, logDir, extraArgs: gpuArgs });
    },
    async stop() {
      await Promise.all([stopProcess(this.worker), stopProcess(this.gpu)]);
      rmSync(state, { recursive: true, force: true });
    },
    client(apiKey = KEY_A, opts = {}) {
      return new OpenAI({ baseURL: `${this.base}/v1`, apiKey, maxRetries: 0, timeout: 120_000, ...opts });
    },
    async session(id, apiKey = KEY_A) {
      return fetch(`${this.base}/v1/sessions/${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${apiKey}` } });
    },
  };
  stack.worker = await startWorker({ port, gpuPort, secret, keys: [KEY_A, KEY_B], persistDir: state, logDir, vars: workerVars });
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
