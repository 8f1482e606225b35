// Runs the playground's browser end-to-end test: builds public/generated (ONNX + runtime), asks the
// PyTorch model for the greedy answers the in-browser engine must reproduce, then runs
// playground.test.mjs in headless Chromium (CHROMIUM_PATH or one on PATH) driven by playwright-core.
//
//   PLAYGROUND_URL   the stack serving the page and /v1 (default http://127.0.0.1:8787; `npm start`)
//   LCKV_API_KEY     a valid key for it (default the development key sk-lckv-dev)
//   LCKV_MODEL       the model folder the stack serves (default: stack.mjs resolveModel())
//   CHROMIUM_PATH    the browser (default: chromium, chromium-browser or google-chrome on PATH)
//   PLAYGROUND_SCREENSHOT  where the playground screenshot goes (default .e2e/playground.png;
//                    docs/playground.png refreshes the README's picture)
//   PLAYGROUND_PARTS "api,local" (default) or one of them: "local" needs only a static server
//   PLAYGROUND_WEBGPU "1" runs the WebGPU check (software adapter) even for a large model, "0" never;
//                    default: only when the ONNX weights are under 8 MiB
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildPlayground } from "../../scripts/build-playground.mjs";
import { ROOT, VENV_PYTHON } from "../../scripts/stack.mjs";
import { LOCAL_CASE } from "./cases.mjs";

const { model } = buildPlayground();
const r = spawnSync(VENV_PYTHON, [
  join(ROOT, "test", "browser", "expected_greedy.py"), model,
  ...LOCAL_CASE.prompts.flatMap((p) => ["--prompt", p]),
  "--max-tokens", String(LOCAL_CASE.maxTokens), "--sinks", "4", "--window", String(LOCAL_CASE.window),
], { cwd: join(ROOT, "gpu-service"), encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
if (r.status !== 0) {
  console.error("expected_greedy.py failed");
  process.exit(1);
}
const dir = join(ROOT, ".e2e");
mkdirSync(dir, { recursive: true });
const expectedFile = join(dir, "playground-expected.json");
writeFileSync(expectedFile, r.stdout);

const t = spawnSync(process.execPath, ["--test", "--test-concurrency=1", join(ROOT, "test", "browser", "unit.test.mjs"), join(ROOT, "test", "browser", "playground.test.mjs")], {
  stdio: "inherit",
  env: { ...process.env, PLAYGROUND_EXPECTED: expectedFile },
});
process.exit(t.status ?? 1);
