// The public contract, property-based: schemathesis (pinned in gpu-service's test extra) generates
// requests from openapi.yaml for every operation, valid and invalid, and sends them to the real
// stack. Any finding fails: a 5xx, a status or content type the spec does not document, a body
// that does not match its schema, a method the spec does not list answered without 405 + Allow,
// or invalid data accepted. Generations are kept short (the service caps max_tokens at 16).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ROOT } from "../../scripts/stack.mjs";
import { KEY_A, startStack } from "./harness.mjs";

const SCHEMATHESIS = join(ROOT, ".venv", "bin", "schemathesis");
const CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
  "response_headers_conformance", "unsupported_method", "allow_header_conformance", "negative_data_rejection"];

let stack;
let model;
before(async () => {
  stack = await startStack({ gpuArgs: ["--max-tokens", "16"], vars: { RATE_LIMIT_RPM: "1000000" } });
  model = (await stack.client().models.list()).data[0].id;
});
after(async () => stack?.stop());

test("schemathesis finds nothing against the running stack (every operation, positive and negative)", { timeout: 600_000 }, () => {
  assert.ok(existsSync(SCHEMATHESIS), "schemathesis is missing from .venv (scripts/setup-python.sh installs it)");
  const work = join(ROOT, ".e2e", "schemathesis"); // its cache folder lands here, not in the repository
  mkdirSync(work, { recursive: true });
  const r = spawnSync(SCHEMATHESIS, [
    "run", join(ROOT, "openapi.yaml"), "--url", stack.base,
    "--header", `Authorization: Bearer ${KEY_A}`,
    "--checks", CHECKS.join(","),
    "--phases", "examples,coverage,fuzzing",
    "--mode", "all",
    "--max-examples", process.env.LCKV_CONTRACT_EXAMPLES ?? "25",
    "--seed", process.env.LCKV_CONTRACT_SEED ?? "18",
    "--generation-database", "none",
    "--request-timeout", "60",
    "--workers", "1",
    "--no-color",
  ], {
    cwd: work, encoding: "utf8",
    env: { ...process.env, PYTHONPATH: join(ROOT, "test", "e2e"), SCHEMATHESIS_HOOKS: "contract_hooks", LCKV_CONTRACT_MODEL: model },
  });
  process.stdout.write(r.stdout.slice(-20_000));
  process.stderr.write(r.stderr.slice(-5_000));
  assert.equal(r.status, 0, "schemathesis reported findings (above)");
});
