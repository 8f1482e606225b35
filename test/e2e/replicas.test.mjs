// End-to-end with two real GPU-service replicas (CPU) behind the real Worker: a session moves between
// replicas through its blob, a frozen replica is skipped within the connect timeout, a replica killed
// under load fails only the streams it was running, and it takes traffic again once restarted.
// Which replica served a request is read from the replicas' own access logs (by request id).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { ROOT } from "../../scripts/stack.mjs";
import { collectStream, startStack } from "./harness.mjs";

const CONNECT_S = 2;
const FIRST_BYTE_S = 4;
const greedy = { temperature: 0, max_tokens: 8 };
const uid = () => Math.random().toString(36).slice(2, 10);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let stack;
let client;
let model;

before(async () => {
  stack = await startStack({ replicas: 2, vars: { UPSTREAM_CONNECT_SECONDS: String(CONNECT_S), UPSTREAM_FIRST_BYTE_SECONDS: String(FIRST_BYTE_S) } });
  // retries as a stock client does them (503 + retry-after while every replica is out)
  client = stack.client(undefined, { maxRetries: 3 });
  model = (await client.models.list()).data[0].id;
});
after(async () => stack?.stop());

/** A replica's access-log lines (JSON) for generations it finished. */
function finished(replica) {
  let text = "";
  try {
    text = readFileSync(join(ROOT, ".e2e", "logs", `gpu-service-${replica}.log`), "utf8");
  } catch {
    return [];
  }
  return text.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l))
    .filter((e) => e.event === "request" && e.path === "/v1/internal/generate" && (e.outcome === "stop" || e.outcome === "length"));
}

/**
 * Replicas (indexes) that finished a generation for this request id. (A frozen replica that is
 * resumed still reads the request its caller gave up on; it logs that one as "disconnected".)
 */
async function servedBy(requestId) {
  for (let i = 0; i < 20; i++) {
    const found = [0, 1].filter((r) => finished(r).some((e) => e.request_id === requestId));
    if (found.length) return found;
    await sleep(100);
  }
  return [];
}

async function turn(key, content, c = client) {
  const { data, response } = await c.chat.completions.create({ model, messages: [{ role: "user", content }], prompt_cache_key: key, ...greedy }).withResponse();
  return { text: data.choices[0].message.content, cached: data.usage.prompt_tokens_details?.cached_tokens ?? 0, id: response.headers.get("x-request-id") };
}

/** Run `fn` while replica `i` is frozen (SIGSTOP), so requests land on the other one. */
async function withFrozen(i, fn) {
  stack.freezeGpu(i, true);
  try {
    return await fn();
  } finally {
    stack.freezeGpu(i, false);
  }
}

/** Wait until the Worker sends requests to replica `i` again (it probes /readyz after a backoff). */
async function untilServedBy(i, deadlineMs) {
  const until = Date.now() + deadlineMs;
  while (Date.now() < until) {
    const r = await turn(undefined, `ping ${uid()}`);
    if ((await servedBy(r.id)).includes(i)) return true;
    await sleep(300);
  }
  return false;
}

/** One round: n sessions take a turn, then n streams run at once and replica 0 is killed mid-reply. */
async function killUnderStreams(n) {
  const keys = Array.from({ length: n }, (_, i) => `rep-kill-${i}-${uid()}`);
  await Promise.all(keys.map((k) => turn(k, "Remember the number seven.")));
  const streams = await Promise.all(keys.map(async (k) => {
    const { data, response } = await stack.client().chat.completions.create({ model, messages: [{ role: "user", content: "Now tell a long story." }],
      prompt_cache_key: k, stream: true, temperature: 0, max_tokens: 160 }).withResponse();
    return { key: k, id: response.headers.get("x-request-id"), iter: data[Symbol.asyncIterator]() };
  }));
  // every stream has produced text before the kill, so the ones on replica 0 are mid-reply unless done
  const firsts = await Promise.all(streams.map(async (s) => {
    for (;;) {
      const r = await s.iter.next();
      if (r.done || r.value.choices[0]?.delta?.content) return r;
    }
  }));
  assert.ok(firsts.every((r) => !r.done), `all ${n} streams are running`);
  await stack.killGpu(0);
  return Promise.all(streams.map(async (s) => {
    try {
      await collectStream({ [Symbol.asyncIterator]: () => s.iter });
      return { ...s, ok: true };
    } catch (err) {
      return { ...s, ok: false, err };
    }
  }));
}

describe("two replicas", () => {
  test("turn 1 on replica A, turn 2 on replica B resumes from the session blob, as one replica would", async () => {
    const [ref, moved] = [`rep-ref-${uid()}`, `rep-moved-${uid()}`];
    // reference: both turns on replica 0
    const refTurns = await withFrozen(1, async () => [await turn(ref, "Tell me about the sea."), await turn(ref, "And the shore?")]);
    assert.deepEqual((await servedBy(refTurns[1].id)), [0]);
    assert.ok(await untilServedBy(1, 40_000), "replica 1 takes traffic again after it was frozen");
    const first = await withFrozen(1, () => turn(moved, "Tell me about the sea."));
    assert.ok(await untilServedBy(1, 40_000));
    const second = await withFrozen(0, () => turn(moved, "And the shore?"));
    assert.deepEqual(await servedBy(first.id), [0]);
    assert.deepEqual(await servedBy(second.id), [1], "turn 2 ran on the other replica");
    assert.equal(first.cached, 0);
    assert.ok(second.cached > 0, `turn 2 resumed from the blob (cached_tokens ${second.cached})`);
    assert.equal(second.cached, refTurns[1].cached);
    assert.equal(first.text, refTurns[0].text);
    assert.equal(second.text, refTurns[1].text, "greedy output identical to the single-replica run");
    assert.equal((await (await stack.session(moved)).json()).turns, 2);
  });

  test("a frozen replica (SIGSTOP) costs a request at most the connect timeout", async (t) => {
    assert.ok(await untilServedBy(0, 40_000));
    const noRetry = stack.client(undefined, { maxRetries: 0 });
    await withFrozen(0, async () => {
      const t0 = Date.now();
      const results = await Promise.all([0, 1, 2, 3].map(async (i) => {
        const r = await turn(`rep-frozen-${uid()}`, `Hello ${i}`, noRetry);
        return { ...r, ms: Date.now() - t0 };
      }));
      t.diagnostic(`latencies with replica 0 frozen: ${results.map((r) => r.ms).join(", ")} ms`);
      for (const r of results) {
        assert.deepEqual(await servedBy(r.id), [1]);
        assert.ok(r.ms < (CONNECT_S + 6) * 1000, `answered in ${r.ms} ms (connect timeout ${CONNECT_S} s)`);
      }
    });
  });

  test("kill -9 of a replica under 16 concurrent streams: its streams end with a typed error, no committed turn is lost, new requests succeed, it comes back", async (t) => {
    // The demo model's replies are ~25 tokens, so replica 0 may finish all its streams before the last
    // stream on replica 1 shows text (a loaded CI host). Such a round tests nothing: replica 0 is
    // restarted and the round repeated, at most 3 times.
    let outcomes = [];
    for (let round = 1; round <= 3; round++) {
      if (round > 1) {
        await stack.restartGpu(0);
        t.diagnostic(`round ${round}: every stream on replica 0 had finished before the kill`);
      }
      assert.ok(await untilServedBy(0, 45_000), "both replicas take traffic before the kill");
      outcomes = await killUnderStreams(16);
      // a stream replica 0 finished was done before the kill: a killed process logs nothing more
      if (outcomes.some((o) => !o.ok)) break;
    }
    const failed = outcomes.filter((o) => !o.ok);
    t.diagnostic(`${failed.length} of 16 streams were on the killed replica`);
    assert.ok(failed.length > 0 && failed.length < 16, `streams on the killed replica fail, the others finish (${failed.length} of 16 failed)`);
    for (const o of failed) {
      assert.ok(o.err instanceof OpenAI.APIError, `typed error, got ${o.err}`);
      assert.match(String(o.err.message), /model service/i);
    }
    for (const o of failed) assert.ok(!(await servedBy(o.id)).includes(1), "only streams of the killed replica fail");
    for (const o of outcomes.filter((x) => x.ok)) assert.equal((await servedBy(o.id)).length, 1, "a finished stream was served once");
    for (const o of outcomes) {
      const turns = (await (await stack.session(o.key)).json()).turns;
      assert.equal(turns, o.ok ? 2 : 1, `session ${o.ok ? "committed its finished turn" : "kept its committed turn"}`);
    }
    // new requests, without client retries: all on the surviving replica
    const noRetry = stack.client(undefined, { maxRetries: 0 });
    const fresh = await Promise.all(outcomes.map((o) => turn(o.key, "Still there?", noRetry)));
    for (const r of fresh) {
      assert.ok(r.cached > 0, "resumed from the committed state");
      assert.deepEqual(await servedBy(r.id), [1]);
    }
    await stack.restartGpu(0);
    const t0 = Date.now();
    assert.ok(await untilServedBy(0, 45_000), "the restarted replica takes traffic again");
    t.diagnostic(`replica 0 served again ${Date.now() - t0} ms after its restart finished`);
  });
});
