// Generates public/generated/ (gitignored) for the playground's in-browser engine:
//   ort/     onnxruntime-web: the WebAssembly build, and the JSPI build that adds WebGPU
//   vendor/  @huggingface/tokenizers and @huggingface/jinja as browser modules
//   model/   the model exported to ONNX (gpu-service/lckv_service/export_onnx.py) + tokenizer files
// Called by `npm start` / `npm test` (and runnable alone: `node scripts/build-playground.mjs`).
// The export re-runs only when the model folder, the exporter or the window changed.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ROOT, VENV_PYTHON, resolveModel } from "./stack.mjs";

const OUT = join(ROOT, "public", "generated");
const MAX_ASSET_BYTES = 25 * 2 ** 20; // Workers static assets: 25 MiB per file
const SINKS = Number(process.env.LCKV_BROWSER_SINKS ?? 4);
const WINDOW = Number(process.env.LCKV_BROWSER_WINDOW ?? 508);

const ORT_FILES = [
  "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
  // ort.webgpu.* needs the 26 MiB asyncify wasm, over the asset limit; the JSPI build carries WebGPU in 16 MiB
  "ort.jspi.min.mjs", "ort-wasm-simd-threaded.jspi.mjs", "ort-wasm-simd-threaded.jspi.wasm",
];
const VENDOR = [
  ["@huggingface/tokenizers", "dist/tokenizers.min.mjs", "tokenizers.mjs"],
  ["@huggingface/jinja", "dist/index.js", "jinja.mjs"],
];

const log = (msg) => process.stderr.write(`[playground] ${msg}\n`);
// PLAYGROUND_NODE_MODULES: resolve the packages elsewhere (development before they are installed here)
const requireFrom = createRequire(process.env.PLAYGROUND_NODE_MODULES
  ? join(process.env.PLAYGROUND_NODE_MODULES, "..", "noop.js") : join(ROOT, "package.json"));
function packageDir(name) {
  // not require.resolve(`${name}/package.json`): packages with "exports" maps refuse that subpath
  const dir = requireFrom.resolve.paths(name).map((d) => join(d, name)).find((d) => existsSync(join(d, "package.json")));
  if (!dir) throw new Error(`npm package ${name} is not installed (npm ci)`);
  return dir;
}

function copyIfChanged(src, dst) {
  if (existsSync(dst) && statSync(dst).size === statSync(src).size && statSync(dst).mtimeMs >= statSync(src).mtimeMs) return;
  mkdirSync(dirname(dst), { recursive: true });
  copyFileSync(src, dst);
}

function fingerprint(model) {
  const h = createHash("sha256");
  h.update(`${SINKS}:${WINDOW}\n`);
  h.update(readFileSync(join(ROOT, "gpu-service", "lckv_service", "export_onnx.py")));
  for (const name of readdirSync(model).sort()) {
    const p = join(model, name);
    if (!statSync(p).isFile()) continue;
    const s = statSync(p);
    h.update(`${name}:${s.size}:${s.mtimeMs}\n`); // weights are large: size+mtime, not content
  }
  return h.digest("hex");
}

export function buildPlayground({ model = resolveModel(), force = false } = {}) {
  const ort = join(packageDir("onnxruntime-web"), "dist");
  for (const f of ORT_FILES) copyIfChanged(join(ort, f), join(OUT, "ort", f));
  for (const [pkg, file, as] of VENDOR) copyIfChanged(join(packageDir(pkg), file), join(OUT, "vendor", as));

  const modelOut = join(OUT, "model");
  const stampFile = join(modelOut, ".stamp");
  const want = fingerprint(model);
  if (force || !existsSync(stampFile) || readFileSync(stampFile, "utf8") !== want) {
    log(`exporting ${model} to ONNX (window ${SINKS}+${WINDOW})`);
    // export elsewhere, then swap files in: a running `wrangler dev` watches public/ and dies if a
    // folder it is scanning disappears
    const tmp = mkdtempSync(join(tmpdir(), "lckv-onnx-"));
    try {
      const r = spawnSync(VENV_PYTHON, ["-m", "lckv_service.export_onnx", model, tmp, "--sinks", String(SINKS), "--window", String(WINDOW)], {
        cwd: join(ROOT, "gpu-service"), stdio: ["ignore", "inherit", "inherit"],
      });
      if (r.status !== 0) throw new Error(`ONNX export failed (exit ${r.status})`);
      mkdirSync(modelOut, { recursive: true });
      const fresh = new Set(readdirSync(tmp));
      for (const f of fresh) copyFileSync(join(tmp, f), join(modelOut, f));
      for (const f of readdirSync(modelOut)) if (!fresh.has(f) && f !== ".stamp") rmSync(join(modelOut, f));
      writeFileSync(stampFile, want);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  for (const dir of ["ort", "vendor", "model"]) {
    for (const f of readdirSync(join(OUT, dir))) {
      const size = statSync(join(OUT, dir, f)).size;
      if (size > MAX_ASSET_BYTES) throw new Error(`public/generated/${dir}/${f} is ${(size / 2 ** 20).toFixed(1)} MiB, over the 25 MiB static-asset limit`);
    }
  }
  return { out: OUT, model };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    const { model } = buildPlayground({ force: process.argv.includes("--force") });
    log(`public/generated is ready (model: ${model})`);
  } catch (e) {
    log(e.message);
    process.exit(1);
  }
}
