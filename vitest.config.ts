// Worker tests run inside workerd through @cloudflare/vitest-pool-workers, with real Durable
// Objects. The GPU service is an auxiliary Worker (test/double/gpu-double.ts, bundled here) that
// receives ALL outbound fetches of the main Worker, so the production path (fetch to
// GPU_SERVICE_URL) is exercised unchanged.
import { createHash } from "node:crypto";
import { cloudflareTest } from "@cloudflare/vitest-pool-workers";
import { buildSync } from "esbuild";
import { defineConfig } from "vitest/config";

const SECRET = "test-gpu-secret";
export const TEST_KEYS: Record<string, string> = {
  "tenant-a": "sk-test-tenant-a",
  "tenant-b": "sk-test-tenant-b",
  "tenant-rl": "sk-test-rate-limited",
};
const sha = (s: string) => createHash("sha256").update(s).digest("hex");

const double = buildSync({
  entryPoints: ["test/double/gpu-double.ts"],
  bundle: true,
  format: "esm",
  platform: "neutral",
  write: false,
}).outputFiles[0]!.text;

export default defineConfig({
  plugins: [
    cloudflareTest({
      wrangler: { configPath: "./wrangler.toml" },
      miniflare: {
        bindings: {
          GPU_SERVICE_URL: "http://gpu.test",
          GPU_SERVICE_SECRET: SECRET,
          API_KEY_HASHES: Object.entries(TEST_KEYS).map(([t, k]) => `${t}:${sha(k)}`).join(","),
          RATE_LIMIT_RPM: "1000",
          RATE_LIMIT_OVERRIDES: "tenant-rl:5",
          SESSION_TTL_SECONDS: "3600",
          UPSTREAM_IDLE_SECONDS: "2",
          TEST_KEYS_JSON: JSON.stringify(TEST_KEYS),
        },
        outboundService: "gpu-double",
        workers: [
          {
            name: "gpu-double",
            modules: [{ type: "ESModule", path: "gpu-double.mjs", contents: double }],
            compatibilityDate: "2026-04-20",
            compatibilityFlags: ["enable_request_signal"],
            bindings: { SECRET },
          },
        ],
      },
    }),
  ],
  test: {
    include: ["test/**/*.test.ts"],
    exclude: ["test/e2e/**"],
    testTimeout: 20_000,
    silent: "passed-only",
  },
});
