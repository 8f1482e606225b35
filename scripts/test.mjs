// `npm test`: every test suite — Python (model, engine, server, training), Worker (vitest in workerd),
// the deploy bundle (dry run), end-to-end (official openai client against the real local stack).
// Installs what is missing first.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT, VENV_PYTHON, ensureInstalled } from "./stack.mjs";

const only = process.argv.slice(2); // e.g. `npm test -- python worker`
const suites = [
  ["python", VENV_PYTHON, ["-m", "pytest", "-p", "no:cacheprovider", "-rs", "tests"], join(ROOT, "gpu-service")],
  ["worker", "npm", ["run", "--silent", "test:worker"], ROOT],
  // the deploy path without an account: every asset built, the Worker bundled by `wrangler deploy --dry-run`
  ["bundle", process.execPath, [join(ROOT, "scripts", "deploy.mjs"), "--dry-run"], ROOT],
  ["e2e", process.execPath, [join(ROOT, "scripts", "e2e.mjs")], ROOT],
];

ensureInstalled();
const failed = [];
for (const [name, cmd, args, cwd] of suites) {
  if (only.length && !only.includes(name)) continue;
  console.log(`\n=== ${name} tests ===`);
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { cwd, stdio: "inherit", env: { ...process.env, OMP_NUM_THREADS: process.env.OMP_NUM_THREADS ?? "2" } });
  console.log(`=== ${name}: ${r.status === 0 ? "ok" : `FAILED (exit ${r.status ?? r.signal})`} in ${((Date.now() - t0) / 1000).toFixed(0)}s ===`);
  if (r.status !== 0) failed.push(name);
}
if (failed.length) {
  console.error(`\nfailed suites: ${failed.join(", ")}`);
  process.exit(1);
}
console.log("\nall test suites passed");
