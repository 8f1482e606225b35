// Session turns through the Durable Object: reuse, append, divergence, info, delete, tenancy.
import { describe, expect, it } from "vitest";
import { call, chat, doubleLog, MODEL, user } from "../helpers";

const sessionChat = (sid: string, messages: unknown[], extra: Record<string, unknown> = {}, tenant = "tenant-a") =>
  chat({ model: MODEL, messages, prompt_cache_key: sid, ...extra }, { tenant });

async function turn(sid: string, messages: unknown[], tenant = "tenant-a") {
  const res = await sessionChat(sid, messages, {}, tenant);
  expect(res.status).toBe(200);
  expect(res.headers.get("x-session-id")).toBe(sid);
  const body = (await res.json()) as any;
  return { body, reply: body.choices[0].message.content as string, log: await doubleLog(res.headers.get("x-request-id")!) };
}

const info = async (sid: string, tenant = "tenant-a") => {
  const res = await call(`/v1/sessions/${sid}`, { tenant });
  return { status: res.status, body: (await res.json()) as any };
};

describe("session turns", () => {
  it("first turn sends everything without a blob and creates the session", async () => {
    const t = await turn("s-first", [{ role: "system", content: "be brief" }, user("hi")]);
    expect(t.log).toHaveLength(1);
    expect(t.log[0]).toMatchObject({ blob_in_bytes: 0, return_blob: true, outcome: "done" });
    expect(t.log[0]!.messages).toHaveLength(2);
    expect(t.body.usage.prompt_tokens_details.cached_tokens).toBe(0);
    const i = await info("s-first");
    expect(i.status).toBe(200);
    expect(i.body).toMatchObject({ id: "s-first", object: "session", model: MODEL, turns: 1, messages: 3, cached_tokens: 0 });
    expect(i.body.cache_bytes).toBeGreaterThan(64);
    expect(JSON.stringify(i.body)).not.toContain("be brief"); // counters only, never contents
  });

  it("a second turn with only the new message appends it and reuses the blob", async () => {
    await turn("s-append", [user("hello there")]);
    const seen = (await info("s-append")).body.tokens_seen;
    const t2 = await turn("s-append", [user("and then?")]);
    expect(t2.log[0]!.messages).toEqual([{ role: "user", content: "and then?" }]);
    expect(t2.log[0]!.blob_in_bytes).toBeGreaterThan(0);
    // everything the first turn covered (prompt, reply, end-of-turn) is reused
    expect(t2.body.usage.prompt_tokens_details.cached_tokens).toBe(seen);
    expect(t2.body.usage.prompt_tokens).toBeGreaterThan(seen);
    expect((await info("s-append")).body).toMatchObject({ turns: 2, messages: 4 });
  });

  it("a full history that extends the transcript sends only the suffix and reports cached tokens", async () => {
    const first = [{ role: "system", content: "sys" }, user("tell me a story")];
    const t1 = await turn("s-full", first);
    const history = [...first, { role: "assistant", content: t1.reply }, user("more please")];
    const t2 = await turn("s-full", history);
    expect(t2.log[0]!.messages).toEqual([{ role: "user", content: "more please" }]);
    expect(t2.log[0]!.blob_in_bytes).toBeGreaterThan(0);
    const cached = t2.body.usage.prompt_tokens_details.cached_tokens;
    expect(cached).toBeGreaterThan(0);
    expect(cached).toBe((await info("s-full")).body.cached_tokens);
    // Independent check of concatenative reuse: the same history sent statelessly (no blob,
    // everything prefilled) yields the same prompt size and the same reply.
    const res = await chat({ model: MODEL, messages: history });
    const stateless = (await res.json()) as any;
    expect(stateless.usage.prompt_tokens).toBe(t2.body.usage.prompt_tokens);
    expect(stateless.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(stateless.choices[0].message.content).toBe(t2.reply);
  });

  it("a divergent history rebuilds the session from what was sent, without the blob", async () => {
    const t1 = await turn("s-div", [user("first question")]);
    await turn("s-div", [user("first question"), { role: "assistant", content: t1.reply }, user("second")]);
    const edited = [user("first question"), { role: "assistant", content: "an edited answer" }, user("second")];
    const t3 = await turn("s-div", edited);
    expect(t3.log[0]!.blob_in_bytes).toBe(0);
    expect(t3.log[0]!.messages).toEqual(edited);
    expect(t3.body.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect((await info("s-div")).body).toMatchObject({ turns: 3, messages: 4 });
    // the rebuilt transcript is the base for the next turn
    const t4 = await turn("s-div", [...edited, { role: "assistant", content: t3.reply }, user("third")]);
    expect(t4.log[0]!.messages).toEqual([user("third")]);
  });

  it("x-session-id works like prompt_cache_key and is validated", async () => {
    const res = await chat({ model: MODEL, messages: [user("hey")] }, { headers: { "x-session-id": "hdr:1" } });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-session-id")).toBe("hdr:1");
    expect((await info("hdr:1")).body.turns).toBe(1);
    const bad = await chat({ model: MODEL, messages: [user("hey")] }, { headers: { "x-session-id": "h".repeat(257) } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as any).error).toMatchObject({ param: "x-session-id", code: "invalid_value" });
    for (const badKey of ["x".repeat(257), "", "tab\there", "nul\u0000", ".", ".."]) {
      const res = await sessionChat(badKey, [user("hey")]);
      expect(res.status).toBe(400);
      expect(((await res.json()) as any).error.param).toBe("prompt_cache_key");
    }
    const both = await chat({ model: MODEL, messages: [user("x")], prompt_cache_key: "a" }, { headers: { "x-session-id": "b" } });
    expect(both.status).toBe(400);
  });

  it("prompt_cache_key may be any text, as at OpenAI: e-mail addresses, paths, other scripts", async () => {
    for (const key of ["user@example.com", "conv/123", "a b", "日本語のセッション 🦊", " padded ", "%E6%97%A5", "k".repeat(256)]) {
      const res = await sessionChat(key, [user("hey")]);
      expect(res.status).toBe(200);
      // echoed only where a header carries it exactly (printable ASCII, no edge spaces)
      const exact = /^[\x20-\x7e]+$/.test(key) && key.trim() === key;
      expect(res.headers.get("x-session-id")).toBe(exact ? key : null);
      const got = await call(`/v1/sessions/${encodeURIComponent(key)}`);
      expect(got.status).toBe(200);
      expect(((await got.json()) as any).turns).toBe(1);
    }
  });

  it("DELETE removes a session; GET and DELETE of a missing one are 404", async () => {
    await turn("s-del", [user("bye")]);
    const del = await call("/v1/sessions/s-del", { method: "DELETE" });
    expect(del.status).toBe(200);
    expect(await del.json()).toEqual({ id: "s-del", object: "session.deleted", deleted: true });
    expect((await info("s-del")).status).toBe(404);
    const again = await call("/v1/sessions/s-del", { method: "DELETE" });
    expect(again.status).toBe(404);
    expect(((await again.json()) as any).error.code).toBe("session_not_found");
    // a deleted session starts over
    const t = await turn("s-del", [user("back")]);
    expect(t.log[0]!.blob_in_bytes).toBe(0);
  });

  it("another tenant can neither read, continue nor delete a session", async () => {
    const t1 = await turn("shared-name", [user("secret plans for tenant a")]);
    const other = await info("shared-name", "tenant-b");
    expect(other.status).toBe(404);
    expect(JSON.stringify(other.body)).not.toContain("secret");
    expect((await call("/v1/sessions/shared-name", { method: "DELETE", tenant: "tenant-b" })).status).toBe(404);
    // tenant b using the same key gets its own, fresh session: nothing of a's is sent
    const tb = await turn("shared-name", [user("hello from b")], "tenant-b");
    expect(tb.log[0]!.blob_in_bytes).toBe(0);
    expect(tb.log[0]!.messages).toEqual([user("hello from b")]);
    expect((await info("shared-name")).body.turns).toBe(1);
    expect(t1.reply.length).toBeGreaterThan(0);
  });
});
