// Per-tenant rate limiter: one Durable Object per API key's tenant holds its token bucket. The
// bucket lives in memory on purpose: losing it on eviction only forgives a little usage, and it
// keeps the hot path free of storage writes. (Chosen over the Workers rate-limit binding, whose
// counters are per-location and approximate, and which cannot report a precise Retry-After.)
import { DurableObject } from "cloudflare:workers";
import type { Env } from "../env";
import { take, type Bucket } from "./bucket";
import type { RateLimiterRpc, TakeResult } from "./rpc";

export class RateLimiter extends DurableObject<Env> implements RateLimiterRpc {
  private bucket: Bucket | null = null;

  async take(rpm: number): Promise<TakeResult> {
    const { bucket, result } = take(this.bucket, rpm, Date.now());
    this.bucket = bucket;
    return result;
  }
}
