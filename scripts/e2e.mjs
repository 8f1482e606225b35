// End-to-end suites against the real local stack (GPU service on CPU + Worker in wrangler dev):
//   1. test/e2e/*.test.mjs: the official openai client (each file starts its own stack: it kills and
//      restarts the GPU service in one test);
//   2. test/browser/: the playground in headless Debian Chromium (installed here if missing).
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { buildPlayground } from "./build-playground.mjs";
import { ROOT, resolveModel } from "./stack.mjs";
import { KEY_A, startStack } from "../test/e2e/harness.mjs";

function ensureChromium() {
  if (existsSync("/usr/bin/chromium")) return;
  console.error("[e2e] installing Debian's chromium for the browser tests");
  const r = spawnSync("bash", ["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null"], { stdio: "inherit" });
  if (r.status !== 0) throw new Error("could not install chromium (the browser tests need Debian's chromium package)");
}

// Before any wrangler dev starts: it watches public/ and must not see generated files being swapped.
const model = resolveModel();
buildPlayground({ model });

const dir = join(ROOT, "test", "e2e");
const files = readdirSync(dir).filter((f) => f.endsWith(".test.mjs")).map((f) => join(dir, f));
const api = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-reporter=spec", ...files], { cwd: ROOT, stdio: "inherit" });

let browser = { status: 1 };
ensureChromium();
const stack = await startStack();
try {
  browser = spawnSync(process.execPath, [join(ROOT, "test", "browser", "run.mjs")], {
    cwd: ROOT, stdio: "inherit", env: { ...process.env, PLAYGROUND_URL: stack.base, LCKV_API_KEY: KEY_A, LCKV_MODEL: model },
  });
} finally {
  await stack.stop();
}
process.exit(api.status === 0 && browser.status === 0 ? 0 : 1);
