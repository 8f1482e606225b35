// The replica pool's state machine on a fake clock: rotation, taking out, backoff, probes.
import { describe, expect, it } from "vitest";
import { BACKOFF_MAX_MS, FAILURES_BEFORE_OUT, PROBE_CLAIM_MS, ReplicaPool, type Transition } from "../../src/upstream/replicas";

function pool(n = 2) {
  const clock = { t: 1_000_000 };
  const transitions: Transition[] = [];
  const urls = Array.from({ length: n }, (_, i) => `http://r${i}.test`);
  return { clock, transitions, pool: new ReplicaPool(urls, () => clock.t, (t) => transitions.push(t)) };
}
const indexes = (views: { index: number }[]) => views.map((v) => v.index);

describe("replica pool", () => {
  it("rotates the first choice over the healthy replicas", () => {
    const { pool: p } = pool(3);
    const firsts = [0, 1, 2, 3, 4, 5].map(() => p.healthy()[0]!.index);
    expect(firsts).toEqual([0, 1, 2, 0, 1, 2]);
    expect(indexes(p.healthy(new Set([0, 2])))).toEqual([1]);
  });

  it("a transport failure takes a replica out at once; the backoff doubles up to the cap", () => {
    const { pool: p, clock, transitions } = pool();
    p.failed(0, "transport");
    expect(indexes(p.healthy())).toEqual([1]);
    expect(transitions.at(-1)).toMatchObject({ change: "out", backoffMs: 1000, replica: { index: 0 } });
    expect(p.claimDue()).toEqual([]); // still in its backoff
    expect(p.msUntilDue()).toBe(1000);
    const backoffs = [];
    for (let i = 0; i < 8; i++) {
      clock.t += BACKOFF_MAX_MS;
      expect(indexes(p.claimDue())).toEqual([0]);
      p.probed(0, false);
      backoffs.push((transitions.at(-1) as { backoffMs: number }).backoffMs);
    }
    expect(backoffs).toEqual([2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
  });

  it("answers that fail take a replica out only after several in a row", () => {
    const { pool: p } = pool();
    for (let i = 0; i < FAILURES_BEFORE_OUT - 1; i++) p.failed(1, "answer");
    p.succeeded(1); // a success in between resets the count
    for (let i = 0; i < FAILURES_BEFORE_OUT - 1; i++) p.failed(1, "answer");
    expect(indexes(p.healthy()).sort()).toEqual([0, 1]);
    p.failed(1, "answer");
    expect(indexes(p.healthy())).toEqual([0]);
  });

  it("a passing readiness probe brings a replica back with the backoff reset", () => {
    const { pool: p, clock, transitions } = pool();
    p.failed(0, "transport");
    clock.t += 1000;
    expect(indexes(p.claimDue())).toEqual([0]);
    expect(p.claimDue()).toEqual([]); // one probe at a time
    p.probed(0, true);
    expect(transitions.at(-1)).toMatchObject({ change: "back", replica: { index: 0 } });
    expect(indexes(p.healthy()).sort()).toEqual([0, 1]);
    p.failed(0, "transport");
    expect(transitions.at(-1)).toMatchObject({ change: "out", backoffMs: 1000 });
  });

  it("a probe whose caller went away is given up after a while", () => {
    const { pool: p, clock } = pool();
    p.failed(0, "transport");
    clock.t += 1000;
    expect(indexes(p.claimDue())).toEqual([0]);
    clock.t += PROBE_CLAIM_MS + 1;
    expect(indexes(p.claimDue())).toEqual([0]);
  });

  it("failures of attempts that started before the replica went out change nothing", () => {
    const { pool: p, transitions } = pool();
    p.failed(0, "transport");
    p.failed(0, "transport");
    expect(transitions.filter((t) => t.change === "out")).toHaveLength(1);
  });

  it("refuses an empty URL list", () => {
    expect(() => new ReplicaPool([])).toThrow(/at least one URL/);
  });
});
