// SSE keep-alive ticks are interleaved while the turn is quiet, without losing or reordering events.
import { describe, expect, it } from "vitest";
import { TICK, withTicks } from "../../src/openai/sse";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("withTicks", () => {
  it("yields TICK during gaps and every event in order", async () => {
    async function* events() {
      yield 1;
      await sleep(70);
      yield 2;
      yield 3;
    }
    const out: (number | typeof TICK)[] = [];
    for await (const ev of withTicks(events(), 20)) out.push(ev);
    expect(out.filter((e) => e !== TICK)).toEqual([1, 2, 3]);
    expect(out[0]).toBe(1);
    expect(out.filter((e) => e === TICK).length).toBeGreaterThanOrEqual(2);
    expect(out.indexOf(2)).toBeGreaterThan(1);
  });
});
