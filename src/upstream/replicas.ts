// Health of the GPU-service replicas as this isolate sees them: which ones take traffic, which are
// out for a backoff, when one may be probed again. Pure state (clock injected); the calls that feed
// it live in balanced.ts. Replicas are stateless, so any healthy one can serve any request.

/** Why an attempt failed, as far as the replica's health goes. */
export type FailureKind =
  | "transport" // no connection, reset before the first frame, connect / first-byte timeout: out at once
  | "answer"; // it answered but failed (5xx, bad start): out after FAILURES_BEFORE_OUT in a row

export const BACKOFF_BASE_MS = 1_000;
export const BACKOFF_MAX_MS = 30_000;
export const FAILURES_BEFORE_OUT = 3;
/** A claimed probe that has not reported by then is taken as lost (its request went away). */
export const PROBE_CLAIM_MS = 10_000;

interface ReplicaState {
  readonly url: string;
  readonly index: number;
  failures: number; // consecutive
  outUntil: number; // epoch ms; 0 = taking traffic
  outCount: number; // consecutive times taken out (grows the backoff)
  probeSince: number; // epoch ms a probe was claimed; 0 = none
}

export interface ReplicaView {
  url: string;
  index: number;
}

export type Transition = { replica: ReplicaView; change: "out"; backoffMs: number } | { replica: ReplicaView; change: "back" };

export class ReplicaPool {
  private readonly replicas: ReplicaState[];
  private next = 0;

  constructor(urls: readonly string[], private readonly now: () => number = Date.now,
    private readonly onTransition: (t: Transition) => void = () => {}) {
    if (urls.length === 0) throw new Error("a replica pool needs at least one URL");
    this.replicas = urls.map((url, index) => ({ url, index, failures: 0, outUntil: 0, outCount: 0, probeSince: 0 }));
  }

  get size(): number {
    return this.replicas.length;
  }

  /** Replicas taking traffic, rotated so consecutive requests start on different ones. */
  healthy(exclude: ReadonlySet<number> = new Set()): ReplicaView[] {
    const n = this.replicas.length;
    const start = this.next++ % n;
    const out: ReplicaView[] = [];
    for (let i = 0; i < n; i++) {
      const r = this.replicas[(start + i) % n]!;
      if (r.outUntil === 0 && !exclude.has(r.index)) out.push(view(r));
    }
    return out;
  }

  /**
   * Replicas whose backoff is over and that nobody is probing: each returned one is claimed for the
   * caller, who must report the readiness probe's result with `probed()`. (A probe is the caller's
   * own call: a promise shared between requests would tie one request to another's lifetime.)
   */
  claimDue(exclude: ReadonlySet<number> = new Set()): ReplicaView[] {
    const t = this.now();
    const due = this.replicas.filter((r) => r.outUntil !== 0 && r.outUntil <= t && !exclude.has(r.index)
      && (r.probeSince === 0 || t - r.probeSince > PROBE_CLAIM_MS));
    for (const r of due) r.probeSince = t;
    return due.map(view);
  }

  /** Milliseconds until the first replica out of traffic may be probed (0 if one may be now). */
  msUntilDue(): number {
    const t = this.now();
    const waits = this.replicas.filter((r) => r.outUntil !== 0).map((r) => Math.max(0, r.outUntil - t));
    return waits.length ? Math.min(...waits) : 0;
  }

  succeeded(index: number): void {
    const r = this.replicas[index]!;
    r.failures = 0;
    if (r.outUntil !== 0) this.bringBack(r);
  }

  failed(index: number, kind: FailureKind): void {
    const r = this.replicas[index]!;
    if (r.outUntil !== 0) return; // an attempt that started before it was taken out
    r.failures++;
    if (kind === "transport" || r.failures >= FAILURES_BEFORE_OUT) this.takeOut(r);
  }

  /** The result of a claimed readiness probe: back into traffic, or out for a longer backoff. */
  probed(index: number, ready: boolean): void {
    const r = this.replicas[index]!;
    r.probeSince = 0;
    if (r.outUntil === 0) return;
    if (ready) this.bringBack(r);
    else this.takeOut(r);
  }

  private takeOut(r: ReplicaState): void {
    const backoffMs = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(r.outCount, 16));
    r.outCount++;
    r.outUntil = this.now() + backoffMs;
    r.failures = 0;
    this.onTransition({ replica: view(r), change: "out", backoffMs });
  }

  private bringBack(r: ReplicaState): void {
    r.outUntil = 0;
    r.outCount = 0;
    r.failures = 0;
    r.probeSince = 0;
    this.onTransition({ replica: view(r), change: "back" });
  }
}

const view = (r: ReplicaState): ReplicaView => ({ url: r.url, index: r.index });
