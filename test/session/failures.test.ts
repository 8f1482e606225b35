// Session turns that fail, race, get cancelled or expire: the previous state must stay intact.
import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { sessionStub } from "../../src/session/key";
import { call, chat, doubleLog, eventually, MODEL, sseData, user } from "../helpers";

const sessionChat = (sid: string, messages: unknown[], extra: Record<string, unknown> = {}) =>
  chat({ model: MODEL, messages, prompt_cache_key: sid, ...extra });

const info = async (sid: string) => (await (await call(`/v1/sessions/${sid}`)).json()) as any;

/** Runs `body` inside the session object `sid` (untyped: its RPC types are too deep for tsc here). */
const insideSession = (sid: string, body: (obj: any) => Promise<void>) =>
  (runInDurableObject as any)(sessionStub(env, "tenant-a", sid), body) as Promise<void>;
const ask = (content: string) => ({ requestId: `req-${content}`, model: MODEL, messages: [user(content)], sampling: {} });

async function okTurn(sid: string, content: string) {
  const res = await sessionChat(sid, [user(content)]);
  expect(res.status).toBe(200);
  return (await res.json()) as any;
}

describe("session failures", () => {
  it("a concurrent turn gets 409 session_busy with x-should-retry: false", async () => {
    await okTurn("s-busy", "warm up");
    const first = await sessionChat("s-busy", [user("@drip please")], { stream: true });
    expect(first.status).toBe(200);
    const reader = first.body!.getReader();
    await reader.read(); // the turn is running
    const second = await sessionChat("s-busy", [user("me too")]);
    expect(second.status).toBe(409);
    expect(second.headers.get("x-should-retry")).toBe("false");
    expect(((await second.json()) as any).error).toMatchObject({ code: "session_busy", type: "invalid_request_error" });
    const del = await call("/v1/sessions/s-busy", { method: "DELETE" });
    expect(del.status).toBe(409);
    await reader.read();
    await reader.cancel(); // the client disconnects
    // once the first turn is gone, the session accepts turns again
    const third = await eventually(() => sessionChat("s-busy", [user("now")]), (r) => r.status !== 409);
    expect(third.status).toBe(200);
  });

  it("a turn that arrives just before the previous turn's cancel waits for it instead of a 409", async () => {
    await okTurn("s-race", "warm up");
    await insideSession("s-race", async (obj) => {
      const first = await obj.turn(ask("@drip long"));
      expect(first.ok).toBe(true);
      const second = obj.turn(ask("right after")); // the client's cancel of the first is still on its way
      await new Promise((r) => setTimeout(r, 200));
      await obj.cancelTurn(first.turnId);
      const reply = await second;
      expect(reply.ok).toBe(true);
      await reply.stream.pipeTo(new WritableStream());
    });
  });

  it("the same holds while the previous turn still waits for the service's first frame", async () => {
    await okTurn("s-race-cold", "warm up");
    await insideSession("s-race-cold", async (obj) => {
      const first = obj.turn(ask("@slowstart @drip long")); // its client leaves before the first frame
      const second = obj.turn(ask("asked at once"));
      const r1 = await first;
      await obj.cancelTurn(r1.turnId); // what the route does once turn() returns to a gone client
      const reply = await second;
      expect(reply.ok).toBe(true);
      await reply.stream.pipeTo(new WritableStream());
    });
  });

  it("a turn asked right after the client aborted the previous one waits for it to wind down (no 409)", async () => {
    await okTurn("s-abort-next", "warm up");
    const before = await info("s-abort-next");
    const first = await sessionChat("s-abort-next", [user("@drip please")], { stream: true });
    const reader = first.body!.getReader();
    await reader.read();
    await reader.cancel(); // the client stops reading and asks again at once
    const next = await sessionChat("s-abort-next", [user("next question")]);
    expect(next.status).toBe(200);
    const after = await info("s-abort-next");
    expect(after.turns).toBe(before.turns + 1); // the aborted turn committed nothing, the new one did
  });

  it("an upstream failure mid-turn leaves the session unchanged (in-band SSE error)", async () => {
    await okTurn("s-fail", "hello");
    const before = await info("s-fail");
    const res = await sessionChat("s-fail", [user("@fail now")], { stream: true });
    const events = sseData(await res.text());
    expect(JSON.parse(events.at(-1)!)).toEqual({ error: { message: "The model service failed to complete the request.", type: "server_error", param: null, code: "upstream_error" } });
    expect(events).not.toContain("[DONE]");
    expect(await info("s-fail")).toEqual(before);
    // non-streaming: the same failure is a plain 502
    const res2 = await sessionChat("s-fail", [user("@fail again")]);
    expect(res2.status).toBe(502);
    expect(await info("s-fail")).toEqual(before);
    // and the next good turn continues from the old state (reuses the old blob)
    const next = await sessionChat("s-fail", [user("retry")]);
    const log = await doubleLog(next.headers.get("x-request-id")!);
    expect(log[0]!.messages).toEqual([user("retry")]);
    expect(log[0]!.blob_in_bytes).toBe(before.cache_bytes);
  });

  it("a stream cut off before done, or in the middle of the blob, commits nothing", async () => {
    await okTurn("s-cut", "hello");
    const before = await info("s-cut");
    for (const directive of ["@cut", "@cutblob @blob=2500000"]) {
      const res = await sessionChat("s-cut", [user(directive)]);
      expect(res.status).toBe(502);
      expect(((await res.json()) as any).error.code).toBe("upstream_protocol_error");
      expect(await info("s-cut")).toEqual(before);
    }
  });

  it("a connection that fails mid-reply is upstream_unavailable (502 or in-band) and commits nothing", async () => {
    await okTurn("s-reset", "hello");
    const before = await info("s-reset");
    const res = await sessionChat("s-reset", [user("@reset now")]);
    expect(res.status).toBe(502);
    expect(((await res.json()) as any).error).toMatchObject({ code: "upstream_unavailable", type: "server_error" });
    expect(await info("s-reset")).toEqual(before);
    const streamed = await sessionChat("s-reset", [user("@reset streamed")], { stream: true });
    expect(streamed.status).toBe(200);
    const events = sseData(await streamed.text());
    expect(JSON.parse(events.at(-1)!).error).toMatchObject({ code: "upstream_unavailable", type: "server_error" });
    expect(await info("s-reset")).toEqual(before);
  });

  it("a service that goes silent is cut after UPSTREAM_IDLE_SECONDS: 504 upstream_timeout, session unchanged and free", async () => {
    await okTurn("s-stall", "hello");
    const before = await info("s-stall");
    const t0 = Date.now();
    const res = await sessionChat("s-stall", [user("@hang here")]);
    expect(res.status).toBe(504);
    expect(((await res.json()) as any).error).toMatchObject({ code: "upstream_timeout", type: "server_error" });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1900); // the test env's UPSTREAM_IDLE_SECONDS is 2
    expect(await info("s-stall")).toEqual(before);
    const streamed = await sessionChat("s-stall", [user("@hang streamed")], { stream: true });
    const events = sseData(await streamed.text());
    expect(JSON.parse(events.at(-1)!).error).toMatchObject({ code: "upstream_timeout" });
    expect((await sessionChat("s-stall", [user("next")])).status).toBe(200); // the lock was released
    const log = await doubleLog(streamed.headers.get("x-request-id")!);
    expect(log[0]!.outcome).toBe("cancelled");
  });

  it("a reply whose blob is shorter than announced, or that does not begin with start, is a protocol error and commits nothing", async () => {
    await okTurn("s-short", "hello");
    const before = await info("s-short");
    const short = await sessionChat("s-short", [user("@shortblob")]);
    expect(short.status).toBe(502);
    expect(((await short.json()) as any).error).toMatchObject({ code: "upstream_protocol_error", type: "server_error" });
    const early = await sessionChat("s-short", [user("@nostart")]);
    expect(early.status).toBe(502);
    expect(((await early.json()) as any).error).toMatchObject({ code: "upstream_protocol_error", message: expect.stringMatching(/missing start frame/) });
    expect(await info("s-short")).toEqual(before);
  });

  it("the idle limit is per silence, not per reply: a reply that keeps coming outlasts it", async () => {
    const t0 = Date.now();
    const res = await chat({ model: MODEL, messages: [user("@drip long")], max_tokens: 70 }); // 70 deltas 40 ms apart
    expect(res.status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThan(2500); // longer than UPSTREAM_IDLE_SECONDS (2)
    expect(((await res.json()) as any).usage.completion_tokens).toBe(70);
  });

  it("a client that disconnects cancels the upstream and commits nothing", async () => {
    await okTurn("s-abort", "hello");
    const before = await info("s-abort");
    const res = await sessionChat("s-abort", [user("@hang")], { stream: true });
    const rid = res.headers.get("x-request-id")!;
    const reader = res.body!.getReader();
    await reader.read();
    await reader.cancel();
    const log = await eventually(() => doubleLog(rid), (l) => l[0]?.outcome === "cancelled");
    expect(log[0]!.outcome).toBe("cancelled");
    expect(await info("s-abort")).toEqual(before);
  });

  it("a turn commits when the upstream completes, even while the client is still reading", async () => {
    const res = await sessionChat("s-slowreader", [user("@slow hello")], { stream: true });
    const reader = res.body!.getReader();
    await reader.read(); // read one chunk, then stop reading
    const i = await eventually(() => info("s-slowreader"), (b) => b.turns === 1);
    expect(i.turns).toBe(1);
    await reader.cancel();
  });

  it("a blob larger than 2 MB round-trips through 1 MiB rows intact", async () => {
    const first = await okTurn("s-big", "@blob=2600000 big");
    expect(first.usage.prompt_tokens_details.cached_tokens).toBe(0);
    const i = await info("s-big");
    expect(i.cache_bytes).toBeGreaterThan(2_600_000);
    expect(await sessionStub(env, "tenant-a", "s-big").blobRows()).toBe(3);
    // the double verifies every byte of the blob it gets back (400 blob_invalid otherwise)
    const res = await sessionChat("s-big", [user("next")]);
    expect(res.status).toBe(200);
    const log = await doubleLog(res.headers.get("x-request-id")!);
    expect(log[0]).toMatchObject({ blob_in_bytes: i.cache_bytes, outcome: "done" });
    expect(((await res.json()) as any).usage.prompt_tokens_details.cached_tokens).toBe(i.tokens_seen);
  });

  it("a blob made for another model is rebuilt from the transcript, not failed", async () => {
    await okTurn("s-mm", "hello tiny");
    const res = await chat({ model: "lckv-alt", messages: [user("now alt")], prompt_cache_key: "s-mm" });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    const log = await doubleLog(res.headers.get("x-request-id")!);
    expect(log.map((l) => [l.status, l.blob_in_bytes > 0])).toEqual([[409, true], [200, false]]);
    expect(log[1]!.messages.map((m) => m.role)).toEqual(["user", "assistant", "user"]);
    expect(log[1]!.messages[0]).toEqual(user("hello tiny"));
    expect(body.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(await info("s-mm")).toMatchObject({ model: "lckv-alt", turns: 2, messages: 4 });
  });

  it("a blob of another format version, or one that fails its checks, is rebuilt from the transcript too", async () => {
    for (const directive of ["@blobversion", "@blobinvalid"]) {
      const sid = `s-blob-${directive.slice(1)}`;
      await okTurn(sid, "hello tiny");
      const res = await sessionChat(sid, [user(`${directive} next`)]);
      expect(res.status).toBe(200);
      const log = await doubleLog(res.headers.get("x-request-id")!);
      expect(log.map((l) => [l.status, l.blob_in_bytes > 0])).toEqual([[directive === "@blobversion" ? 409 : 400, true], [200, false]]);
      expect(await info(sid)).toMatchObject({ turns: 2, messages: 4 });
    }
  });

  it("a rebuild too long for one prefill sends the recent part of the conversation and keeps all of it", async () => {
    const sid = "s-long-rebuild";
    const first = await sessionChat(sid, [{ role: "system", content: "rules @limit=420" }, user("q".repeat(120))]);
    expect(first.status).toBe(200);
    for (const c of ["r", "t"]) expect((await sessionChat(sid, [user(c.repeat(120))])).status).toBe(200); // appends: only new text goes
    const before = await info(sid);
    const res = await sessionChat(sid, [user("@blobinvalid now")]); // forces a rebuild from the whole transcript
    expect(res.status).toBe(200);
    const log = await doubleLog(res.headers.get("x-request-id")!);
    expect(log[0]!.status).toBe(400); // the blob refused
    expect(log.at(-1)!.status).toBe(200);
    expect(log.slice(1, -1).every((l) => l.status === 400)).toBe(true); // too long, trimmed, retried
    const sent = log.at(-1)!.messages;
    expect(sent[0]).toEqual({ role: "system", content: "rules @limit=420" });
    expect(sent.at(-1)).toEqual(user("@blobinvalid now"));
    expect(sent.length).toBeLessThan(before.messages + 1);
    expect(await info(sid)).toMatchObject({ turns: before.turns + 1, messages: before.messages + 2 });
    // one message that alone is too long still fails, naming messages
    const huge = await sessionChat(sid, [user("@blobinvalid @limit=420 " + "h".repeat(600))]);
    expect(huge.status).toBe(400);
    expect(((await huge.json()) as any).error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
  });

  it("an idle session expires when its alarm runs", async () => {
    await okTurn("s-ttl", "hello");
    const stub = sessionStub(env, "tenant-a", "s-ttl");
    const alarm = await runInDurableObject(stub, (_o, state) => state.storage.getAlarm());
    const ttl = Number(env.SESSION_TTL_SECONDS);
    expect(alarm).toBeGreaterThan(Date.now() + (ttl - 60) * 1000);
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    expect((await call("/v1/sessions/s-ttl")).status).toBe(404);
    const rows = await runInDurableObject(stub, (_o, state) =>
      state.storage.sql.exec("SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM blob_chunks) AS n").one().n);
    expect(rows).toBe(0);
  });

  it("the alarm firing during a turn only moves itself: the turn commits onto the whole session", async () => {
    await okTurn("s-ttl-busy", "hello");
    const stub = sessionStub(env, "tenant-a", "s-ttl-busy");
    const res = await sessionChat("s-ttl-busy", [user("@drip and more")], { stream: true, max_tokens: 20 });
    const reader = res.body!.getReader();
    await reader.read(); // the turn is running
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    const moved = await runInDurableObject(stub, (_o, state) => state.storage.getAlarm());
    expect(moved).toBeGreaterThan(Date.now() + (Number(env.SESSION_TTL_SECONDS) - 60) * 1000);
    while (!(await reader.read()).done);
    const after = await eventually(() => info("s-ttl-busy"), (i) => i.turns === 2);
    expect(after).toMatchObject({ turns: 2, messages: 4 });
  });

  it("errors before generation (context length, overload) change nothing", async () => {
    await okTurn("s-pre", "hello");
    const before = await info("s-pre");
    const ctx = await sessionChat("s-pre", [user("@ctx")]);
    expect(ctx.status).toBe(400);
    expect(((await ctx.json()) as any).error).toMatchObject({ code: "context_length_exceeded", param: "messages" });
    const busy = await sessionChat("s-pre", [user("@overload")]);
    expect(busy.status).toBe(503);
    expect(busy.headers.get("retry-after")).toBe("2");
    expect(await info("s-pre")).toEqual(before);
  });
});
