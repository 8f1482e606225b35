// Writes openapi.yaml from the route declarations in src/ (the schemas the Worker validates with):
// `npm run openapi`. test/openapi.test.ts fails when the committed file differs from this output.
import { buildSync } from "esbuild";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT } from "./stack.mjs";

// Inside node_modules, so the bundle's package imports resolve.
const dir = join(ROOT, "node_modules", ".cache", "lckv-openapi");
mkdirSync(dir, { recursive: true });
try {
  const out = join(dir, "spec.mjs");
  buildSync({ entryPoints: [join(ROOT, "src", "spec.ts")], bundle: true, format: "esm", platform: "node", packages: "external", outfile: out, logLevel: "error" });
  const { openApiYaml } = await import(pathToFileURL(out).href);
  writeFileSync(join(ROOT, "openapi.yaml"), openApiYaml());
  console.log("wrote openapi.yaml");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
