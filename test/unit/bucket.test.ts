// The rate limiter's token bucket (pure): rpm tokens to start, refilled continuously, never above rpm.
import { describe, expect, it } from "vitest";
import { take, type Bucket } from "../../src/ratelimit/bucket";

describe("token bucket", () => {
  it("allows rpm requests at once, then refuses with the wait until one token is back", () => {
    let bucket: Bucket | null = null;
    const t0 = 1_000_000;
    for (let i = 0; i < 5; i++) {
      const r = take(bucket, 5, t0);
      expect(r.result).toMatchObject({ allowed: true, remaining: 4 - i });
      bucket = r.bucket;
    }
    const refused = take(bucket, 5, t0);
    expect(refused.result).toMatchObject({ allowed: false, remaining: 0, retryAfterSeconds: 12, resetSeconds: 60 });
  });

  it("refills at rpm per minute and never holds more than rpm", () => {
    const empty: Bucket = { tokens: 0, at: 0 };
    expect(take(empty, 60, 1_000).result).toMatchObject({ allowed: true, remaining: 0 }); // one token per second
    const idle = take(empty, 5, 3_600_000); // an hour idle
    expect(idle.result).toMatchObject({ allowed: true, remaining: 4 });
    expect(idle.bucket.tokens).toBe(4);
  });
});
