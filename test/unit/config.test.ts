// The environment is parsed once per env object, and a bad value is a 500 naming the variable.
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config";
import { ApiError } from "../../src/errors";

describe("config", () => {
  it("parses an env object once: the same Config comes back for it, a new one for another", () => {
    const a = loadConfig(env);
    expect(loadConfig(env)).toBe(a);
    const other = { ...env, RATE_LIMIT_RPM: "7" };
    expect(loadConfig(other).rateLimitRpm).toBe(7);
    expect(loadConfig(other)).toBe(loadConfig(other));
    expect(a.apiKeys.map((k) => k.tenant)).toEqual(["tenant-a", "tenant-b", "tenant-rl"]);
    expect(a.rateLimitOverrides.get("tenant-rl")).toBe(5);
  });

  const bad: [string, string | undefined, RegExp][] = [
    ["GPU_SERVICE_URL", "ftp://gpu", /GPU_SERVICE_URL must hold http\(s\) URLs/],
    ["GPU_SERVICE_URL", "not a url", /GPU_SERVICE_URL must hold absolute URLs/],
    ["GPU_SERVICE_SECRET", undefined, /GPU_SERVICE_SECRET is not set/],
    ["API_KEY_HASHES", "nohash", /API_KEY_HASHES entry 0 is not "tenant:sha256hex"/],
    ["MAX_BODY_BYTES", "12", /MAX_BODY_BYTES must be an integer >= 1024/],
    ["SESSION_TTL_SECONDS", "1e3", /SESSION_TTL_SECONDS must be an integer >= 1/],
    ["RATE_LIMIT_OVERRIDES", "tenant-x:0", /RATE_LIMIT_OVERRIDES must be "tenant:rpm,..."/],
  ];
  for (const [name, value, message] of bad) {
    it(`${name}=${JSON.stringify(value)} is a 500 server_misconfigured naming it`, () => {
      let thrown: unknown;
      try {
        loadConfig({ ...env, [name]: value });
      } catch (e) {
        thrown = e;
      }
      expect(thrown).toBeInstanceOf(ApiError);
      expect(thrown).toMatchObject({ status: 500, code: "server_misconfigured", type: "server_error" });
      expect((thrown as ApiError).message).toMatch(message);
    });
  }
});
