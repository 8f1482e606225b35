// End-to-end suite: node's test runner over test/e2e/*.test.mjs. Each test file starts its own stack
// (GPU service on CPU + wrangler dev) on free ports with fresh local state, and stops it.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./stack.mjs";

const dir = join(ROOT, "test", "e2e");
const files = readdirSync(dir).filter((f) => f.endsWith(".test.mjs")).map((f) => join(dir, f));
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--test-reporter=spec", ...files], { cwd: ROOT, stdio: "inherit" });
process.exit(r.status ?? 1);
