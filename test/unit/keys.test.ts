// API-key hashing and tenant lookup, checked against node:crypto (an independent SHA-256).
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { DEFAULT_DEV_KEY, devTenant, parseKeyHashes, sha256Hex, tenantForKey } from "../../src/auth/keys";
import { take } from "../../src/ratelimit/bucket";

const nodeSha = (s: string) => createHash("sha256").update(s).digest("hex");

describe("keys", () => {
  it("sha256Hex matches node:crypto; dev tenants are key- + 12 hex", async () => {
    expect(await sha256Hex("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect(await devTenant(DEFAULT_DEV_KEY)).toBe("key-" + nodeSha("sk-lckv-dev").slice(0, 12));
  });

  it("finds the tenant of a key and nothing for others", async () => {
    const entries = parseKeyHashes(` acme:${nodeSha("k1")}, beta:${nodeSha("k2").toUpperCase()} ,`);
    expect(entries.map((e) => e.tenant)).toEqual(["acme", "beta"]);
    expect(await tenantForKey("k1", entries)).toBe("acme");
    expect(await tenantForKey("k2", entries)).toBe("beta");
    expect(await tenantForKey("k3", entries)).toBeNull();
    expect(await tenantForKey("", entries)).toBeNull();
  });

  it("rejects malformed entries by index, never echoing them", () => {
    expect(() => parseKeyHashes(`ok:${nodeSha("a")},nohash`)).toThrow('API_KEY_HASHES entry 1 is not "tenant:sha256hex"');
    expect(() => parseKeyHashes(`a:b:${nodeSha("a")}`)).toThrow(/entry 0/);
    expect(() => parseKeyHashes(`t:${nodeSha("a").slice(1)}`)).toThrow(/entry 0/);
  });
});

describe("token bucket", () => {
  it("allows rpm requests at once, then refills continuously", () => {
    let b = null;
    for (let i = 0; i < 3; i++) {
      const r = take(b, 3, 1000);
      expect(r.result.allowed).toBe(true);
      b = r.bucket;
    }
    const denied = take(b, 3, 1000);
    expect(denied.result).toEqual({ allowed: false, remaining: 0, retryAfterSeconds: 20, resetSeconds: 60 });
    expect(take(null, 3, 0).result.resetSeconds).toBe(20); // one of three taken: 20 s to refill it
    expect(take(denied.bucket, 3, 1000 + 20_000).result.allowed).toBe(true);
    expect(take(denied.bucket, 3, 1000 + 19_000).result.retryAfterSeconds).toBe(1);
  });
});
