// Bindings (wrangler.toml + secrets) and the per-request variables Hono carries.
import type { RateLimiterRpc } from "./ratelimit/rpc";
import type { SessionRpc } from "./session/rpc";

export interface Env {
  // vars (strings, parsed and validated by src/config.ts)
  GPU_SERVICE_URL: string; // one URL, or several replicas separated by commas
  SESSION_TTL_SECONDS: string;
  RESPONSE_TTL_SECONDS: string;
  MAX_BODY_BYTES: string;
  RATE_LIMIT_RPM: string;
  RATE_LIMIT_OVERRIDES?: string;
  MODELS_CACHE_SECONDS: string;
  UPSTREAM_IDLE_SECONDS: string;
  UPSTREAM_CONNECT_SECONDS: string;
  UPSTREAM_FIRST_BYTE_SECONDS: string;
  // secrets
  GPU_SERVICE_SECRET?: string;
  GPU_PLATFORM_KEY?: string; // optional: the GPU platform gateway's own key (RunPod, NVCF)
  API_KEY_HASHES?: string;
  // Durable Objects
  SESSIONS: DurableObjectNamespace<SessionRpc>;
  RATE_LIMITER: DurableObjectNamespace<RateLimiterRpc>;
}

export type AppEnv = {
  Bindings: Env;
  Variables: {
    requestId: string;
    tenant: string;
    route: string;
    sessionId: string | undefined;
  };
};
