// End-to-end suites against the real local stack (GPU service on CPU + Worker in wrangler dev):
//   1. test/e2e/*.test.mjs: the official openai client (each file starts its own stack: it kills and
//      restarts the GPU service in one test);
//   2. test/browser/: the playground in headless Chromium (CHROMIUM_PATH, or one on PATH, or Debian's
//      package installed when running as root; test/browser/chromium.mjs).
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { buildPlayground } from "./build-playground.mjs";
import { ROOT, resolveModel } from "./stack.mjs";
import { findChromium } from "../test/browser/chromium.mjs";
import { KEY_A, startStack } from "../test/e2e/harness.mjs";

// Before any wrangler dev starts: it watches public/ and must not see generated files being swapped.
const model = resolveModel();
buildPlayground({ model });

const dir = join(ROOT, "test", "e2e");
const files = readdirSync(dir).filter((f) => f.endsWith(".test.mjs")).map((f) => join(dir, f));
const api = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-reporter=spec", ...files], { cwd: ROOT, stdio: "inherit" });

let browser = { status: 1 };
let chromium = null;
try {
  chromium = findChromium({ install: true });
} catch (e) {
  console.error(`[e2e] browser tests cannot run: ${e.message}`);
}
if (chromium) {
  const stack = await startStack();
  try {
    browser = spawnSync(process.execPath, [join(ROOT, "test", "browser", "run.mjs")], {
      cwd: ROOT, stdio: "inherit",
      env: { ...process.env, PLAYGROUND_URL: stack.base, LCKV_API_KEY: KEY_A, LCKV_MODEL: model, CHROMIUM_PATH: chromium },
    });
  } finally {
    await stack.stop();
  }
}
process.exit(api.status === 0 && browser.status === 0 ? 0 : 1);
