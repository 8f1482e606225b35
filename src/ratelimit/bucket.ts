// Token bucket (pure): capacity = requests per minute, refilled continuously.
import type { TakeResult } from "./rpc";

export interface Bucket {
  tokens: number;
  at: number; // ms
}


export function take(bucket: Bucket | null, rpm: number, now: number): { bucket: Bucket; result: TakeResult } {
  const perMs = rpm / 60_000;
  const prev = bucket ?? { tokens: rpm, at: now };
  const tokens = Math.min(rpm, prev.tokens + Math.max(0, now - prev.at) * perMs);
  const resetSeconds = (left: number) => Math.ceil((rpm - left) / perMs / 1000);
  if (tokens >= 1) {
    return { bucket: { tokens: tokens - 1, at: now },
      result: { allowed: true, remaining: Math.floor(tokens - 1), retryAfterSeconds: 0, resetSeconds: resetSeconds(tokens - 1) } };
  }
  const waitMs = (1 - tokens) / perMs;
  return { bucket: { tokens, at: now },
    result: { allowed: false, remaining: 0, retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)), resetSeconds: resetSeconds(tokens) } };
}
