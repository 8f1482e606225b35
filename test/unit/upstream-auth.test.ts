// Credentials sent to the GPU service: our secret as Bearer, or behind a platform gateway the
// gateway's key as Bearer plus our secret in X-Service-Secret (docs/internal-protocol.md).
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config";
import { setAuthHeaders } from "../../src/upstream/client";

describe("upstream credentials", () => {
  it("sends the shared secret as a Bearer token by default", () => {
    const h = setAuthHeaders(new Headers({ accept: "x" }), { baseUrl: "http://gpu", secret: "s3cret" });
    expect(h.get("authorization")).toBe("Bearer s3cret");
    expect(h.get("x-service-secret")).toBeNull();
    expect(h.get("accept")).toBe("x");
  });

  it("behind a gateway sends the platform key as Bearer and the secret in X-Service-Secret", () => {
    const h = setAuthHeaders(new Headers(), { baseUrl: "http://gpu", secret: "s3cret", platformKey: "rp_key" });
    expect(h.get("authorization")).toBe("Bearer rp_key");
    expect(h.get("x-service-secret")).toBe("s3cret");
  });

  it("GPU_PLATFORM_KEY is optional config", () => {
    const base = { ...env, GPU_SERVICE_URL: "https://gpu.example/", GPU_SERVICE_SECRET: "s" };
    expect(loadConfig(base).upstream).toEqual({ urls: ["https://gpu.example"], secret: "s", idleTimeoutMs: 2000,
      connectTimeoutMs: 5000, firstByteTimeoutMs: 15000 });
    expect(loadConfig({ ...base, GPU_PLATFORM_KEY: "k" }).upstream.platformKey).toBe("k");
  });

  it("UPSTREAM_IDLE_SECONDS must be a whole number of seconds >= 1", () => {
    const base = { ...env, GPU_SERVICE_URL: "https://gpu.example/", GPU_SERVICE_SECRET: "s" };
    for (const bad of ["0", "-5", "1.5", "soon", ""]) {
      expect(() => loadConfig({ ...base, UPSTREAM_IDLE_SECONDS: bad })).toThrow(/UPSTREAM_IDLE_SECONDS must be an integer >= 1/);
    }
    expect(loadConfig({ ...base, UPSTREAM_IDLE_SECONDS: "300" }).upstream.idleTimeoutMs).toBe(300_000);
  });

  it("UPSTREAM_CONNECT_SECONDS and UPSTREAM_FIRST_BYTE_SECONDS are whole seconds >= 1", () => {
    const base = { ...env, GPU_SERVICE_URL: "https://gpu.example/", GPU_SERVICE_SECRET: "s" };
    for (const name of ["UPSTREAM_CONNECT_SECONDS", "UPSTREAM_FIRST_BYTE_SECONDS"]) {
      for (const bad of ["0", "2.5", "fast", ""]) {
        expect(() => loadConfig({ ...base, [name]: bad })).toThrow(new RegExp(`${name} must be an integer >= 1`));
      }
    }
    const up = loadConfig({ ...base, UPSTREAM_CONNECT_SECONDS: "2", UPSTREAM_FIRST_BYTE_SECONDS: "7" }).upstream;
    expect([up.connectTimeoutMs, up.firstByteTimeoutMs]).toEqual([2000, 7000]);
  });

  it("GPU_SERVICE_URL takes several replica URLs, separated by commas or spaces", () => {
    const base = { ...env, GPU_SERVICE_SECRET: "s" };
    expect(loadConfig({ ...base, GPU_SERVICE_URL: "http://10.0.0.1:8000/, http://10.0.0.2:8000 http://10.0.0.3:8000" }).upstream.urls)
      .toEqual(["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"]);
    const bad: [string, RegExp][] = [
      ["", /GPU_SERVICE_URL is not set/],
      [" , ", /GPU_SERVICE_URL is not set/],
      ["http://a:1,not a url", /GPU_SERVICE_URL must hold absolute URLs \(entry 2\)/],
      ["ftp://a", /GPU_SERVICE_URL must hold http\(s\) URLs/],
      ["http://a:1,http://a:1/", /GPU_SERVICE_URL lists a URL twice/],
    ];
    for (const [value, message] of bad) expect(() => loadConfig({ ...base, GPU_SERVICE_URL: value })).toThrow(message);
  });
});
