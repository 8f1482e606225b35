// Typed, validated view of the Worker's vars. A bad value is an operator error: fail loudly (500)
// naming the variable, instead of running with a silent default.
import { ApiError } from "./errors";
import type { Env } from "./env";
import type { UpstreamConfig } from "./upstream/balanced";

export interface Config {
  upstream: UpstreamConfig; // GPU service replicas, credentials and timeouts
  sessionTtlSeconds: number;
  maxBodyBytes: number;
  rateLimitRpm: number;
  rateLimitOverrides: Map<string, number>; // tenant -> rpm
  modelsCacheSeconds: number;
}

function misconfigured(name: string, why: string): ApiError {
  return new ApiError(500, `Server misconfigured: ${name} ${why}.`, { code: "server_misconfigured", type: "server_error" });
}

function positiveInt(env: Env, name: keyof Env, min: number): number {
  const raw = env[name];
  const n = typeof raw === "string" && /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw misconfigured(String(name), `must be an integer >= ${min}`);
  return n;
}

/** RATE_LIMIT_OVERRIDES = "tenant:rpm,..." (per-tenant tiers). */
function parseOverrides(raw: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const item of (raw ?? "").split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z0-9._-]{1,64}):(\d+)$/.exec(item);
    if (!m || Number(m[2]) < 1) throw misconfigured("RATE_LIMIT_OVERRIDES", 'must be "tenant:rpm,..."');
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** GPU_SERVICE_URL: one base URL, or several (self-hosted replicas) separated by commas or spaces. */
function parseReplicaUrls(raw: string | undefined): string[] {
  const items = (raw ?? "").split(/[\s,]+/).filter(Boolean);
  if (items.length === 0) throw misconfigured("GPU_SERVICE_URL", "is not set");
  const urls = items.map((item, i) => {
    const where = items.length > 1 ? ` (entry ${i + 1})` : "";
    let url: URL;
    try {
      url = new URL(item);
    } catch {
      throw misconfigured("GPU_SERVICE_URL", `must hold absolute URLs${where}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw misconfigured("GPU_SERVICE_URL", `must hold http(s) URLs${where}`);
    return url.toString().replace(/\/+$/, "");
  });
  if (new Set(urls).size !== urls.length) throw misconfigured("GPU_SERVICE_URL", "lists a URL twice");
  return urls;
}

export function loadConfig(env: Env): Config {
  const urls = parseReplicaUrls(env.GPU_SERVICE_URL);
  if (!env.GPU_SERVICE_SECRET) throw misconfigured("GPU_SERVICE_SECRET", "is not set");
  return {
    upstream: {
      urls,
      secret: env.GPU_SERVICE_SECRET,
      ...(env.GPU_PLATFORM_KEY ? { platformKey: env.GPU_PLATFORM_KEY } : {}),
      idleTimeoutMs: positiveInt(env, "UPSTREAM_IDLE_SECONDS", 1) * 1000,
      connectTimeoutMs: positiveInt(env, "UPSTREAM_CONNECT_SECONDS", 1) * 1000,
      firstByteTimeoutMs: positiveInt(env, "UPSTREAM_FIRST_BYTE_SECONDS", 1) * 1000,
    },
    sessionTtlSeconds: positiveInt(env, "SESSION_TTL_SECONDS", 1),
    maxBodyBytes: positiveInt(env, "MAX_BODY_BYTES", 1024),
    rateLimitRpm: positiveInt(env, "RATE_LIMIT_RPM", 1),
    rateLimitOverrides: parseOverrides(env.RATE_LIMIT_OVERRIDES),
    modelsCacheSeconds: positiveInt(env, "MODELS_CACHE_SECONDS", 0),
  };
}
