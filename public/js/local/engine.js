// The in-browser LCKV engine: one decode-step ONNX graph run token by token (prefill too — exact for
// LCKV, see docs/playground.md), a condensed sinks+window cache kept here, greedy or temperature
// sampling, and the same chat rendering as the GPU service. Files come from /generated/ (built by
// scripts/build-playground.mjs).
import { Tokenizer } from "../../generated/vendor/tokenizers.mjs";
import { CondensedCache } from "./cache.js";
import { ChatFormat, TextStream } from "./chat.js";

const GENERATED = new URL("../../generated/", import.meta.url);
const MANIFEST_FORMAT = "lckv-onnx/1"; // gpu-service/lckv_service/export_onnx.py
const ADAPTER_TIMEOUT_MS = 3000;

/**
 * A file's bytes, read in full. A transfer that stalls (no bytes for `stallMs`) is cancelled and
 * retried, up to `tries` times: a dev server or a proxy that stops midway through one of several
 * large parallel downloads must not leave the page "loading" forever. onBytes(n) reports progress
 * (negative to take back a failed try's bytes).
 */
export async function fetchBytes(url, { onBytes = () => {}, stallMs = 20_000, tries = 3, fetchImpl = fetch } = {}) {
  for (let attempt = 1; ; attempt++) {
    const ac = new AbortController();
    let timer;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => ac.abort(new Error(`no data for ${stallMs / 1000} s`)), stallMs);
    };
    let got = 0;
    try {
      arm();
      const res = await fetchImpl(url, { signal: ac.signal });
      if (!res.ok) throw Object.assign(new Error(`could not load ${url} (HTTP ${res.status}); run the playground build`), { final: true });
      const reader = res.body.getReader();
      const chunks = [];
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        arm();
        chunks.push(value);
        got += value.length;
        onBytes(value.length);
      }
      const out = new Uint8Array(got);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      return out;
    } catch (e) {
      onBytes(-got);
      if (e.final || !ac.signal.aborted || attempt >= tries) {
        throw e.final ? e : new Error(`could not load ${url}: ${ac.signal.aborted ? ac.signal.reason.message : e.message}`);
      }
    } finally {
      clearTimeout(timer);
    }
  }
}

async function fetchJson(url) {
  return JSON.parse(new TextDecoder().decode(await fetchBytes(url)));
}

// ORT's WebAssembly backend computes on the page's thread and its promises resolve as microtasks, so
// a generation loop would starve rendering and input (no streaming, no Stop): yield one plain task
// per step. Not scheduler.yield() (its continuations outrank other tasks) nor setTimeout(0) (4 ms clamp).
const yieldToPage = () => new Promise((resolve) => {
  const { port1, port2 } = new MessageChannel();
  port1.onmessage = resolve;
  port2.postMessage(null);
});

/**
 * "webgpu" where this browser has a WebGPU adapter and JSPI (the build of ORT that fits the asset
 * limit), else "wasm". `?backend=wasm|webgpu` in the page URL overrides the choice. The arguments
 * default to this browser's; tests pass their own.
 */
export async function pickBackend({
  search = globalThis.location?.search ?? "",
  gpu = globalThis.navigator?.gpu,
  jspi = "Suspending" in WebAssembly,
  adapterTimeoutMs = ADAPTER_TIMEOUT_MS,
} = {}) {
  const asked = new URLSearchParams(search).get("backend");
  if (asked === "wasm" || asked === "webgpu") return asked;
  if (!jspi || !gpu) return "wasm";
  let timer;
  const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve(null), adapterTimeoutMs)));
  try {
    // some headless and driverless browsers never settle requestAdapter(): don't wait on it forever
    const adapter = await Promise.race([gpu.requestAdapter(), timeout]);
    return adapter ? "webgpu" : "wasm";
  } catch {
    return "wasm"; // no usable adapter
  } finally {
    clearTimeout(timer);
  }
}

export class LocalEngine {
  static async load({ backend = "wasm", window = null, onStatus = () => {} } = {}) {
    onStatus("loading the model description");
    const manifest = await fetchJson(new URL("model/manifest.json", GENERATED));
    if (manifest.format !== MANIFEST_FORMAT) throw new Error(`model/manifest.json is ${manifest.format}, this page reads ${MANIFEST_FORMAT}`);
    const [tokJson, tokConfig] = await Promise.all([
      fetchJson(new URL(`model/${manifest.files.tokenizer}`, GENERATED)),
      fetchJson(new URL(`model/${manifest.files.tokenizer_config}`, GENERATED)),
    ]);
    const format = new ChatFormat(Tokenizer, tokJson, tokConfig, manifest.chat);
    onStatus(`loading onnxruntime-web (${backend})`);
    const ort = await import(new URL(backend === "webgpu" ? "ort/ort.jspi.min.mjs" : "ort/ort.wasm.min.mjs", GENERATED).href);
    ort.env.wasm.wasmPaths = new URL("ort/", GENERATED).href;
    // threads need cross-origin isolation (SharedArrayBuffer); without it ORT would warn and use one
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    ort.env.logLevel = "error"; // node-placement notes are for ORT developers, not page visitors
    // The runtime's wasm, the graph and its weight shards (each under the static-asset size limit),
    // one at a time with stall retries (fetchBytes), with progress.
    const wasmName = backend === "webgpu" ? "ort-wasm-simd-threaded.jspi.wasm" : "ort-wasm-simd-threaded.wasm";
    const mib = (n) => (n / 2 ** 20).toFixed(1);
    let loaded = 0;
    let shown = -1;
    const onBytes = (n) => {
      loaded += n;
      const step = Math.floor(loaded / 2 ** 22); // a status line per 4 MiB, not per chunk
      if (step !== shown) onStatus(`loading the model (${mib(loaded)} of ${mib(manifest.onnx_bytes)} MiB)`);
      shown = step;
    };
    onStatus(`loading the model (${mib(manifest.onnx_bytes)} MiB)`);
    ort.env.wasm.wasmBinary = await fetchBytes(new URL(`ort/${wasmName}`, GENERATED).href);
    const model = await fetchBytes(new URL(`model/${manifest.files.onnx}`, GENERATED).href, { onBytes });
    const externalData = [];
    for (const name of manifest.files.onnx_data) {
      externalData.push({ path: name, data: await fetchBytes(new URL(`model/${name}`, GENERATED).href, { onBytes }) });
    }
    onStatus("starting the model");
    const create = (ep) => ort.InferenceSession.create(model, { executionProviders: [ep], graphOptimizationLevel: "all", externalData });
    let session;
    try {
      session = await create(backend);
    } catch (e) {
      if (backend !== "webgpu") throw e;
      onStatus("WebGPU did not start; using WebAssembly"); // the JSPI build runs the wasm backend too
      backend = "wasm";
      session = await create(backend);
    }
    return new LocalEngine({ ort, session, manifest, format, backend, window: window ?? manifest.window });
  }

  constructor({ ort, session, manifest, format, backend, window }) {
    Object.assign(this, { ort, session, manifest, format, backend });
    const m = manifest.model;
    this.shape = [m.kv_layers, 0, m.num_kv_heads, m.head_dim];
    this.cache = new CondensedCache({ kvLayers: m.kv_layers, kvHeads: m.num_kv_heads, headDim: m.head_dim, sinks: manifest.sinks, window: manifest.window });
    if (window !== manifest.window) this.setWindow(window);
    this.busy = false;
  }

  /** Runs one token through the decode graph and appends its K/V; returns its logits (Float32Array[V]). */
  async step(tokenId) {
    await yieldToPage();
    const { ort, cache } = this;
    const pos = cache.reserve();
    const dims = [this.shape[0], cache.capacity, this.shape[2], this.shape[3]];
    const out = await this.session.run({
      input_ids: new ort.Tensor("int64", BigInt64Array.of(BigInt(tokenId)), [1]),
      past_length: new ort.Tensor("int64", BigInt64Array.of(BigInt(pos)), [1]),
      past_key: new ort.Tensor("float32", cache.k, dims),
      past_value: new ort.Tensor("float32", cache.v, dims),
    });
    const [k, v] = await Promise.all([out.new_key.getData(), out.new_value.getData()]);
    cache.append(tokenId, k, v);
    return out.logits.getData();
  }

  /**
   * One chat turn: prefill the new messages after the cache, then generate. Yields the same event
   * shapes as ApiClient.chat; on abort or error the cache returns to its state before the turn.
   */
  async *chat({ messages, maxTokens, temperature, signal, onCache = () => {} }) {
    if (this.busy) throw new Error("the local engine is already answering");
    this.busy = true;
    const snapshot = { k: this.cache.k.slice(), v: this.cache.v.slice(), ids: [...this.cache.tokenIds], seen: this.cache.tokensSeen };
    try {
      const cached = this.cache.tokensSeen;
      const prompt = this.format.encodeTurn(messages);
      let logits;
      for (const id of prompt) {
        if (signal?.aborted) throw new DOMException("stopped", "AbortError");
        logits = await this.step(id);
        onCache(this.cache);
      }
      const text = new TextStream(this.format);
      const sampled = [];
      let finish = "length";
      while (sampled.length < maxTokens) {
        if (signal?.aborted) throw new DOMException("stopped", "AbortError");
        const next = sample(await logits, temperature);
        sampled.push(next);
        if (this.format.stopIds.has(next)) {
          finish = "stop";
          break;
        }
        const piece = text.push(next);
        if (piece) yield { type: "delta", text: piece };
        logits = await this.step(next);
        onCache(this.cache);
      }
      // close the turn the way the template does, so the next turn continues after it
      for (const id of this.format.endOfTurn) await this.step(id);
      onCache(this.cache);
      yield { type: "tokens", ids: sampled };
      yield { type: "finish", reason: finish };
      yield {
        type: "usage",
        usage: {
          prompt_tokens: cached + prompt.length,
          completion_tokens: sampled.length,
          total_tokens: cached + prompt.length + sampled.length,
          prompt_tokens_details: { cached_tokens: cached },
        },
      };
    } catch (e) {
      this.cache.k.set(snapshot.k);
      this.cache.v.set(snapshot.v);
      this.cache.tokenIds = snapshot.ids;
      this.cache.tokensSeen = snapshot.seen;
      onCache(this.cache);
      throw e;
    } finally {
      this.busy = false;
    }
  }

  reset() {
    this.cache.reset();
  }

  /** A new, empty cache with another window (the conversation starts over). */
  setWindow(window) {
    const { kvLayers, kvHeads, headDim, sinks } = this.cache;
    const max = this.manifest.model.max_position_embeddings - sinks;
    if (!Number.isInteger(window) || window < 2 || window > max) throw new RangeError(`window must be an integer in [2, ${max}]`);
    this.cache = new CondensedCache({ kvLayers, kvHeads, headDim, sinks, window });
  }
}

/** Greedy at temperature 0 (ties → lowest id, like torch.argmax); otherwise a softmax sample. */
export function sample(logits, temperature) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (!(temperature > 0)) return best;
  let total = 0;
  const p = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) total += p[i] = Math.exp((logits[i] - logits[best]) / temperature);
  let r = Math.random() * total;
  for (let i = 0; i < p.length; i++) if ((r -= p[i]) <= 0) return i;
  return best;
}
