// API keys for a deployment: `npm run keys -- new <tenant>` makes a key (shown once) and its
// API_KEY_HASHES entry; `npm run keys -- hash [tenant]` makes the entry for an existing key, read
// from stdin (so it stays out of shell history). API_KEY_HASHES is these entries joined by commas.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { keyHashEntry, tenantOf } from "./stack.mjs";

const TENANT_RE = /^[A-Za-z0-9._-]{1,64}$/; // as src/auth/keys.ts parses API_KEY_HASHES
const USAGE = `usage:
  npm run keys -- new <tenant>          a new key for <tenant> (letters, digits, . _ -; at most 64)
  npm run keys -- hash [tenant] < key   the API_KEY_HASHES entry of an existing key (tenant defaults
                                        to the one npm start derives for LCKV_API_KEYS)`;

function fail(message) {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

function checkTenant(tenant) {
  if (!TENANT_RE.test(tenant ?? "")) fail(`tenant must be 1-64 letters, digits, '.', '_' or '-', got ${JSON.stringify(tenant ?? "")}`);
  return tenant;
}

const [command, ...args] = process.argv.slice(2);
if (command === "new") {
  if (args.length !== 1) fail("keys new takes exactly one tenant");
  const tenant = checkTenant(args[0]);
  const key = `sk-lckv-${randomBytes(24).toString("base64url")}`;
  console.log(`API key for ${tenant} (shown once; hand it to the tenant, store it nowhere else):\n  ${key}\n`);
  console.log(`API_KEY_HASHES entry (not secret by itself, but keep the list private):\n  ${keyHashEntry(tenant, key)}\n`);
  console.log("Add it to the comma-separated list and store the whole list (wrangler cannot read a secret back):\n" +
    "  npx wrangler secret put API_KEY_HASHES");
} else if (command === "hash") {
  if (args.length > 1) fail("keys hash takes at most one tenant");
  const key = readFileSync(0, "utf8").trim();
  if (!key || /[\s,]/.test(key)) fail("keys hash reads one key (no spaces or commas) from stdin");
  const tenant = args.length ? checkTenant(args[0]) : tenantOf(key);
  console.log(keyHashEntry(tenant, key));
} else {
  fail(command ? `unknown command ${JSON.stringify(command)}` : "a command is needed");
}
