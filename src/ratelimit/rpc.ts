// The rate limiter Durable Object's RPC surface.

export interface TakeResult {
  allowed: boolean;
  remaining: number;
  retryAfterSeconds: number; // 0 when allowed
  resetSeconds: number; // until the bucket is full again (OpenAI's x-ratelimit-reset-requests)
}

export interface RateLimiterRpc extends Rpc.DurableObjectBranded {
  take(rpm: number): Promise<TakeResult>;
}
