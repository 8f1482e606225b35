// The Worker's environment (vars and secrets), parsed and validated once per env object (once per
// isolate in production). A bad value is an operator error: every request fails loudly (500)
// naming the variable, instead of running with a silent default.
import { z } from "zod";
import { parseKeyHashes, type KeyEntry } from "./auth/keys";
import type { Env } from "./env";
import { ApiError } from "./errors";
import type { UpstreamConfig } from "./upstream/types";

export interface Config {
  upstream: UpstreamConfig; // GPU service replicas, credentials and timeouts
  apiKeys: KeyEntry[];
  sessionTtlSeconds: number;
  responseTtlSeconds: number; // a stored response chain or conversation, idle this long, is deleted
  maxBodyBytes: number;
  rateLimitRpm: number;
  rateLimitOverrides: Map<string, number>; // tenant -> rpm
  modelsCacheSeconds: number;
}

const required = (what = "a string") =>
  z.string({ error: (iss) => (iss.input === undefined ? "is not set" : `must be ${what}`) });

const integer = (min: number) =>
  required().refine((s) => /^\d+$/.test(s.trim()) && Number.isSafeInteger(Number(s.trim())) && Number(s.trim()) >= min,
    `must be an integer >= ${min}`).transform((s) => Number(s.trim()));

/** GPU_SERVICE_URL: one base URL, or several (self-hosted replicas) separated by commas or spaces. */
const replicaUrls = required().transform((s, ctx) => {
  const items = s.split(/[\s,]+/).filter(Boolean);
  if (items.length === 0) {
    ctx.addIssue({ code: "custom", message: "is not set" });
    return z.NEVER;
  }
  const urls: string[] = [];
  for (const [i, item] of items.entries()) {
    const where = items.length > 1 ? ` (entry ${i + 1})` : "";
    let url: URL;
    try {
      url = new URL(item);
    } catch {
      ctx.addIssue({ code: "custom", message: `must hold absolute URLs${where}` });
      return z.NEVER;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      ctx.addIssue({ code: "custom", message: `must hold http(s) URLs${where}` });
      return z.NEVER;
    }
    urls.push(url.toString().replace(/\/+$/, ""));
  }
  if (new Set(urls).size !== urls.length) {
    ctx.addIssue({ code: "custom", message: "lists a URL twice" });
    return z.NEVER;
  }
  return urls;
});

const keyHashes = required().min(1, "is not set").transform((s, ctx) => {
  try {
    return parseKeyHashes(s);
  } catch (err) {
    ctx.addIssue({ code: "custom", message: (err as Error).message.replace(/^API_KEY_HASHES /, "") });
    return z.NEVER;
  }
});

/** RATE_LIMIT_OVERRIDES = "tenant:rpm,..." (per-tenant tiers). */
const overrides = z.string().optional().transform((raw, ctx) => {
  const out = new Map<string, number>();
  for (const item of (raw ?? "").split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z0-9._-]{1,64}):(\d+)$/.exec(item);
    if (!m || Number(m[2]) < 1) {
      ctx.addIssue({ code: "custom", message: 'must be "tenant:rpm,..."' });
      return z.NEVER;
    }
    out.set(m[1]!, Number(m[2]));
  }
  return out;
});

const envSchema = z.object({
  GPU_SERVICE_URL: replicaUrls,
  GPU_SERVICE_SECRET: required().min(1, "is not set"),
  GPU_PLATFORM_KEY: z.string().optional(),
  API_KEY_HASHES: keyHashes,
  SESSION_TTL_SECONDS: integer(1),
  RESPONSE_TTL_SECONDS: integer(1),
  MAX_BODY_BYTES: integer(1024),
  RATE_LIMIT_RPM: integer(1),
  RATE_LIMIT_OVERRIDES: overrides,
  MODELS_CACHE_SECONDS: integer(0),
  UPSTREAM_IDLE_SECONDS: integer(1),
  UPSTREAM_CONNECT_SECONDS: integer(1),
  UPSTREAM_FIRST_BYTE_SECONDS: integer(1),
});

function parseConfig(env: Env): Config {
  const r = envSchema.safeParse(env);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new ApiError(500, `Server misconfigured: ${String(issue.path[0])} ${issue.message}.`, { code: "server_misconfigured", type: "server_error" });
  }
  const e = r.data;
  return {
    upstream: {
      urls: e.GPU_SERVICE_URL,
      secret: e.GPU_SERVICE_SECRET,
      ...(e.GPU_PLATFORM_KEY ? { platformKey: e.GPU_PLATFORM_KEY } : {}),
      idleTimeoutMs: e.UPSTREAM_IDLE_SECONDS * 1000,
      connectTimeoutMs: e.UPSTREAM_CONNECT_SECONDS * 1000,
      firstByteTimeoutMs: e.UPSTREAM_FIRST_BYTE_SECONDS * 1000,
    },
    apiKeys: e.API_KEY_HASHES,
    sessionTtlSeconds: e.SESSION_TTL_SECONDS,
    responseTtlSeconds: e.RESPONSE_TTL_SECONDS,
    maxBodyBytes: e.MAX_BODY_BYTES,
    rateLimitRpm: e.RATE_LIMIT_RPM,
    rateLimitOverrides: e.RATE_LIMIT_OVERRIDES,
    modelsCacheSeconds: e.MODELS_CACHE_SECONDS,
  };
}

const parsed = new WeakMap<Env, Config>();

export function loadConfig(env: Env): Config {
  let cfg = parsed.get(env);
  if (!cfg) {
    cfg = parseConfig(env);
    parsed.set(env, cfg);
  }
  return cfg;
}
