// `npm run deploy`: build every asset the Worker ships (the playground's in-browser engine in
// public/generated included), check that the Worker's secrets exist and GPU_SERVICE_URL points at a
// real GPU service, then `wrangler deploy`. `npm run deploy -- --dry-run` builds and bundles without
// an account (CI runs it); other arguments go to wrangler as they are.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { buildPlayground } from "./build-playground.mjs";
import { DEFAULT_MODEL, ROOT, ensureInstalled } from "./stack.mjs";

const REQUIRED_SECRETS = ["GPU_SERVICE_SECRET", "API_KEY_HASHES"];
const WRANGLER = join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js");
const log = (msg) => process.stderr.write(`[deploy] ${msg}\n`);

function fail(message) {
  log(message);
  process.exit(1);
}

function wrangler(args, opts = {}) {
  return spawnSync(process.execPath, [WRANGLER, ...args], {
    cwd: ROOT, encoding: "utf8", env: { ...process.env, WRANGLER_SEND_METRICS: "false" }, ...opts,
  });
}

/** GPU_SERVICE_URL as deployed: the environment's (passed on as --var) or wrangler.toml's [vars]. */
function gpuServiceUrl() {
  if (process.env.GPU_SERVICE_URL) return { value: process.env.GPU_SERVICE_URL, args: ["--var", `GPU_SERVICE_URL:${process.env.GPU_SERVICE_URL}`] };
  const toml = readFileSync(join(ROOT, "wrangler.toml"), "utf8");
  const m = /^GPU_SERVICE_URL\s*=\s*"([^"]*)"/m.exec(toml);
  return { value: m?.[1] ?? "", args: [] };
}

function checkSecrets() {
  const r = wrangler(["secret", "list", "--format", "json"], { env: { ...process.env, WRANGLER_SEND_METRICS: "false", NO_COLOR: "1", FORCE_COLOR: "0" } });
  if (r.status !== 0) {
    const said = `${r.stderr}\n${r.stdout}`.replace(/\x1b\[[0-9;]*m/g, "").split("\n").map((l) => l.trim()).filter((l) => l && !/Logs were written/.test(l));
    const why = said.find((l) => /✘|error/i.test(l)) ?? said.at(-1) ?? `exit code ${r.status}`;
    fail(`could not list the Worker's secrets (wrangler: ${why}).\n` +
      "  Log in first (npx wrangler login, or CLOUDFLARE_API_TOKEN), and put the secrets before the first deploy:\n" +
      "  npx wrangler secret put GPU_SERVICE_SECRET; npx wrangler secret put API_KEY_HASHES (npm run keys -- new <tenant>)");
  }
  let names;
  try {
    names = new Set(JSON.parse(r.stdout).map((s) => s.name));
  } catch {
    fail("wrangler secret list did not answer JSON");
  }
  const missing = REQUIRED_SECRETS.filter((n) => !names.has(n));
  if (missing.length) fail(`missing Worker secrets: ${missing.join(", ")}. Set each with: npx wrangler secret put <NAME> (infra/README.md, "Secrets and vars")`);
  log(`secrets present: ${[...names].filter((n) => REQUIRED_SECRETS.includes(n) || n === "GPU_PLATFORM_KEY").join(", ")}`);
}

const args = process.argv.slice(2);
const dryRun = args.includes("--dry-run");
ensureInstalled();

// The playground's in-browser engine runs this model's ONNX export (LCKV_MODEL, default the bundled one).
const model = process.env.LCKV_MODEL ?? DEFAULT_MODEL;
if (!existsSync(join(model, "model.safetensors"))) fail(`${model} has no model.safetensors: the playground needs real weights to export (set LCKV_MODEL)`);
buildPlayground({ model });
for (const dir of ["ort", "vendor", "model"]) {
  const path = join(ROOT, "public", "generated", dir);
  if (!existsSync(path) || readdirSync(path).length === 0) fail(`public/generated/${dir} is empty after the build`);
}
log("public/generated is built");

const url = gpuServiceUrl();
if (!dryRun) {
  if (!url.value || /\/\/(127\.|localhost|\[::1\])/.test(url.value)) {
    fail(`GPU_SERVICE_URL is ${JSON.stringify(url.value)}: point it at your GPU service (wrangler.toml [vars], or GPU_SERVICE_URL=https://... npm run deploy)`);
  }
  checkSecrets();
}
const deployArgs = ["deploy", ...url.args, ...(dryRun ? ["--outdir", join(ROOT, "dist", "worker")] : []), ...args];
log(`wrangler ${deployArgs.join(" ")}`);
const r = wrangler(deployArgs, { stdio: "inherit" });
process.exit(r.status ?? 1);
