// Calls to the GPU service spread over its replicas (GPU_SERVICE_URL may list several). A call that
// fails before the service accepted it (no `start` frame yet, so no token reached anyone) is retried
// on another replica; after `start` a failure is final, so a reply is never duplicated. A replica
// that fails is taken out for a backoff and comes back once its readiness endpoint says so.
import { ApiError } from "../errors";
import { logEvent } from "../log";
import { checkReady, generate, listModels, type GenerateStream } from "./client";
import { UpstreamError } from "./errors";
import { ReplicaPool, type FailureKind, type ReplicaView, type Transition } from "./replicas";
import type { GenerateRequest, ModelInfo, UpstreamConfig, UpstreamOptions } from "./types";

const pools = new Map<string, ReplicaPool>();

function logTransition(t: Transition): void {
  const replica = { replica: t.replica.index, host: new URL(t.replica.url).host };
  if (t.change === "out") logEvent("warn", { event: "replica_out", ...replica, backoff_ms: t.backoffMs });
  else logEvent("info", { event: "replica_back", ...replica });
}

/** This isolate's view of the replicas' health (one pool per URL list). */
export function replicaPool(cfg: UpstreamConfig): ReplicaPool {
  const key = cfg.urls.join(" ");
  let pool = pools.get(key);
  if (!pool) {
    pool = new ReplicaPool(cfg.urls, Date.now, logTransition);
    pools.set(key, pool);
  }
  return pool;
}

/** How a failed attempt counts: a replica problem worth another replica, or final (null). */
function classify(err: unknown): { kind: FailureKind | null } | null {
  if (err instanceof UpstreamError) {
    if (err.status === 503) return { kind: null }; // alive but full: try another, health unchanged
    if (err.status === 401 || err.status === 403 || err.status >= 500) return { kind: "answer" };
    return null; // the request's own fault: every replica would say the same
  }
  if (err instanceof ApiError) {
    if (err.code === "upstream_unavailable" || err.code === "upstream_timeout") return { kind: "transport" };
    if (err.code === "upstream_protocol_error") return { kind: "answer" };
  }
  return null;
}

/**
 * The next replica to try: a healthy one (replicas due back are then probed on the side), else the
 * first due replica whose readiness probe passes now, else none.
 */
async function nextReplica(pool: ReplicaPool, cfg: UpstreamConfig, tried: ReadonlySet<number>): Promise<ReplicaView | null> {
  const healthy = pool.healthy(tried);
  const due = pool.claimDue(tried);
  const probe = async (r: ReplicaView) => {
    const ok = await checkReady({ ...cfg, baseUrl: r.url });
    pool.probed(r.index, ok);
    return ok ? r : null;
  };
  if (healthy.length) {
    for (const r of due) void probe(r);
    return healthy[0]!;
  }
  return (await Promise.all(due.map(probe))).find((r) => r !== null) ?? null;
}

function unavailable(pool: ReplicaPool): ApiError {
  const retryAfter = Math.max(1, Math.ceil(pool.msUntilDue() / 1000));
  return new ApiError(503, "The model service is unavailable; retry shortly.",
    { code: "upstream_unavailable", type: "server_error", retryAfter });
}

/** Run `attempt` on one replica after another until one accepts the call or none is left. */
async function onReplicas<T>(cfg: UpstreamConfig, requestId: string | null, signal: AbortSignal | undefined,
  attempt: (opts: UpstreamOptions) => Promise<T>): Promise<T> {
  const pool = replicaPool(cfg);
  const tried = new Set<number>();
  let answered: UpstreamError | ApiError | null = null; // the last replica that answered, with an error or a broken stream
  for (;;) {
    const replica = await nextReplica(pool, cfg, tried);
    if (!replica) break;
    tried.add(replica.index);
    try {
      const out = await attempt({ ...cfg, baseUrl: replica.url });
      pool.succeeded(replica.index);
      return out;
    } catch (err) {
      if (signal?.aborted) throw err;
      const c = classify(err);
      if (!c) {
        if (err instanceof UpstreamError) pool.succeeded(replica.index); // it answered: alive and well
        throw err;
      }
      if (c.kind) pool.failed(replica.index, c.kind);
      if (err instanceof UpstreamError || c.kind === "answer") answered = err as UpstreamError | ApiError;
      logEvent("warn", { event: "upstream_attempt_failed", request_id: requestId, replica: replica.index,
        code: err instanceof UpstreamError ? err.code ?? `http_${err.status}` : (err as ApiError).code });
    }
  }
  // Every replica was tried or is out: an answer says more than a dead connection.
  throw answered ?? unavailable(pool);
}

/** Start a generation on a healthy replica (see client.generate for what resolves and throws). */
export function generateBalanced(cfg: UpstreamConfig, req: GenerateRequest, blob: Uint8Array[] | null,
  signal: AbortSignal): Promise<GenerateStream> {
  return onReplicas(cfg, req.request_id, signal, (opts) => generate(opts, req, blob, signal));
}

export function listModelsBalanced(cfg: UpstreamConfig): Promise<ModelInfo[]> {
  return onReplicas(cfg, null, undefined, (opts) => listModels(opts));
}
