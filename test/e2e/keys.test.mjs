// `npm run keys`: a new key and its API_KEY_HASHES entry, the entry of an existing key, bad input.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { test } from "node:test";
import { ROOT, apiKeyHashes } from "../../scripts/stack.mjs";

const keys = (args, input = "") => spawnSync(process.execPath, [join(ROOT, "scripts", "keys.mjs"), ...args], { input, encoding: "utf8" });
const ENTRY = /^([A-Za-z0-9._-]{1,64}):([0-9a-f]{64})$/; // what src/auth/keys.ts accepts

test("keys new prints a fresh key once and the entry that authenticates it", () => {
  const [a, b] = [keys(["new", "acme-prod"]), keys(["new", "acme-prod"])];
  assert.equal(a.status, 0, a.stderr);
  const key = /^\s+(sk-lckv-[A-Za-z0-9_-]{32})$/m.exec(a.stdout)?.[1];
  const entry = a.stdout.split("\n").map((l) => l.trim()).find((l) => ENTRY.test(l));
  assert.ok(key && entry, a.stdout);
  assert.equal(entry, `acme-prod:${createHash("sha256").update(key).digest("hex")}`);
  assert.equal(a.stdout.split(key).length, 2, "the key appears once");
  assert.notEqual(key, /sk-lckv-\S+/.exec(b.stdout)?.[0], "every call makes a new key");
});

test("keys hash reads a key from stdin; without a tenant it uses npm start's tenant for that key", () => {
  const r = keys(["hash"], "sk-lckv-dev\n");
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), apiKeyHashes(["sk-lckv-dev"]));
  assert.equal(keys(["hash", "team.7"], "sk-x").stdout.trim(), `team.7:${createHash("sha256").update("sk-x").digest("hex")}`);
});

test("bad input is refused with a message and exit code 2, printing no entry", () => {
  for (const [args, input, message] of [
    [["new"], "", /exactly one tenant/],
    [["new", "bad tenant"], "", /tenant must be/],
    [["new", "x".repeat(65)], "", /tenant must be/],
    [["hash"], "", /reads one key/],
    [["hash"], "two keys,here", /reads one key/],
    [["rotate"], "", /unknown command/],
    [[], "", /a command is needed/],
  ]) {
    const r = keys(args, input);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stdout}`);
    assert.match(r.stderr, message);
    assert.equal(r.stdout, "");
  }
});
