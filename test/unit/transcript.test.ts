// The session message-matching rule (pure).
import { describe, expect, it } from "vitest";
import { planFullHistory, planTurn, rebuildPlan, trimToFit } from "../../src/session/transcript";
import type { ChatMessage } from "../../src/upstream/types";

const u = (content: string): ChatMessage => ({ role: "user", content });
const a = (content: string): ChatMessage => ({ role: "assistant", content });
const s = (content: string): ChatMessage => ({ role: "system", content });

describe("planTurn", () => {
  const t = [s("sys"), u("q1"), a("r1")];

  it("empty transcript: a new session sends everything without a blob", () => {
    expect(planTurn([], [u("hi")], false)).toEqual({ mode: "new", send: [u("hi")], useBlob: false, conversation: [u("hi")], keep: 0 });
  });

  it("first message differs: new messages are appended and sent with the blob", () => {
    const p = planTurn(t, [u("q2")], true);
    expect(p).toEqual({ mode: "append", send: [u("q2")], useBlob: true, conversation: [...t, u("q2")], keep: 3 });
  });

  it("full history extending the transcript: only the suffix goes, with the blob", () => {
    const p = planTurn(t, [...t, u("q2")], true);
    expect(p).toMatchObject({ mode: "reuse", send: [u("q2")], useBlob: true, keep: 3 });
    expect(p.conversation).toEqual([...t, u("q2")]);
  });

  it("full history that diverges: rebuild from the request, keeping the common prefix rows", () => {
    const p = planTurn(t, [s("sys"), u("q1"), a("edited"), u("q2")], true);
    expect(p).toEqual({ mode: "rebuild", send: [s("sys"), u("q1"), a("edited"), u("q2")], useBlob: false,
      conversation: [s("sys"), u("q1"), a("edited"), u("q2")], keep: 2 });
  });

  it("role matters, not just content", () => {
    expect(planTurn(t, [u("sys"), u("x")], true).mode).toBe("append");
  });

  it("the same history with nothing new, or a regenerate (the history without its last reply), rebuilds", () => {
    expect(planTurn(t, t, true).mode).toBe("rebuild");
    const long = [...t, u("q2"), a("r2")];
    expect(planTurn(long, [...t, u("q2")], true)).toMatchObject({ mode: "rebuild", send: [...t, u("q2")], keep: 4 });
  });

  it("a new message equal to an earlier one appends: it never rewrites the conversation", () => {
    const conv = [u("hi"), a("hello"), u("My name is Zed."), a("Hi Zed.")];
    expect(planTurn(conv, [u("hi")], true)).toEqual({ mode: "append", send: [u("hi")], useBlob: true, conversation: [...conv, u("hi")], keep: 4 });
    // the same message every turn ("continue") keeps growing the conversation
    expect(planTurn([u("hi"), a("hello")], [u("hi")], true)).toMatchObject({ mode: "append", conversation: [u("hi"), a("hello"), u("hi")] });
    expect(planTurn(t, [s("sys"), u("q1")], true)).toMatchObject({ mode: "append", send: [u("q1")], conversation: [...t, u("q1")] });
  });

  it("a history holding an assistant reply that does not extend the transcript rebuilds (windowed or edited)", () => {
    const conv = [u("u1"), a("a1"), u("u2"), a("a2")];
    expect(planTurn(conv, [u("u2"), a("a2"), u("u3")], true)).toMatchObject({ mode: "rebuild", send: [u("u2"), a("a2"), u("u3")], useBlob: false, keep: 0 });
  });

  it("the session's instructions + new messages append the new ones; other instructions start over", () => {
    expect(planTurn(t, [s("sys"), u("q2")], true)).toEqual({ mode: "append", send: [u("q2")], useBlob: true, conversation: [...t, u("q2")], keep: 3 });
    const dev = { role: "developer", content: "sys" } as ChatMessage;
    expect(planTurn(t, [dev, u("q2")], true)).toMatchObject({ mode: "rebuild", send: [dev, u("q2")], keep: 0 });
    expect(planTurn(t, [s("You are Bob's assistant."), u("hi")], true)).toMatchObject({ mode: "rebuild", keep: 0, useBlob: false });
    expect(planTurn([u("q1"), a("r1")], [s("sys"), u("q2")], true)).toMatchObject({ mode: "rebuild", keep: 0 });
  });

  it("without a stored blob nothing can be reused: send the whole conversation", () => {
    expect(planTurn(t, [u("q2")], false)).toMatchObject({ mode: "rebuild", send: [...t, u("q2")], useBlob: false });
    expect(planTurn(t, [...t, u("q2")], false)).toMatchObject({ mode: "rebuild", send: [...t, u("q2")], useBlob: false });
  });

  it("rebuildPlan (blob refused) resends the whole conversation", () => {
    const p = rebuildPlan(planTurn(t, [u("q2")], true));
    expect(p).toMatchObject({ mode: "rebuild", send: [...t, u("q2")], useBlob: false, keep: 3 });
  });
});

describe("trimToFit", () => {
  const long = [s("rules"), u("x".repeat(100)), a("y".repeat(100)), u("z".repeat(100)), a("w".repeat(100)), u("last")];
  const plan = planTurn([], long, false);

  it("drops the oldest messages, never the instructions nor the last message, aiming under the limit", () => {
    const p = trimToFit(plan, { prompt_tokens: 440, max_prompt_tokens: 200 })!;
    expect(p.send[0]).toEqual(s("rules"));
    expect(p.send.at(-1)).toEqual(u("last"));
    expect(p.send.length).toBeLessThan(long.length);
    expect(p.send[1]!.role).toBe("user"); // the kept part starts with a user turn
    expect(p.conversation).toEqual(long); // what is stored stays whole
  });

  it("without the numbers it halves; it gives up when only the last message is left", () => {
    const half = trimToFit(plan, null)!;
    expect(half.send.length).toBeLessThan(long.length);
    const sends = [plan.send];
    for (let p = trimToFit(plan, null); p; p = trimToFit(p, null)) {
      expect(p.send.length).toBeLessThan(sends.at(-1)!.length);
      sends.push(p.send);
    }
    expect(sends.length).toBeLessThanOrEqual(6);
    // the instructions go last, only when they and the last message alone are still too long
    expect(sends.at(-2)).toEqual([s("rules"), u("last")]);
    expect(sends.at(-1)).toEqual([u("last")]);
    expect(trimToFit(planTurn([], [u("only")], false), { prompt_tokens: 900, max_prompt_tokens: 100 })).toBeNull();
  });
});

describe("planFullHistory (Responses turns carry the whole history)", () => {
  const t = [u("q1"), a("r1")];

  it("extending the transcript reuses the blob and sends only the new input", () => {
    expect(planFullHistory(t, [...t, u("q2")], true)).toEqual({ mode: "reuse", send: [u("q2")], useBlob: true, conversation: [...t, u("q2")], keep: 2 });
  });

  it("anything else rebuilds from the request, never appends: other instructions, a deleted item, no assistant left", () => {
    expect(planFullHistory(t, [s("new"), ...t, u("q2")], true)).toMatchObject({ mode: "rebuild", useBlob: false, keep: 0 });
    expect(planFullHistory(t, [u("q1"), u("q2")], true)).toMatchObject({ mode: "rebuild", send: [u("q1"), u("q2")], keep: 1 });
    expect(planFullHistory(t, [u("q2")], true)).toMatchObject({ mode: "rebuild", send: [u("q2")], conversation: [u("q2")] });
  });

  it("without a blob even an extension is rebuilt; an empty transcript is new", () => {
    expect(planFullHistory(t, [...t, u("q2")], false)).toMatchObject({ mode: "rebuild", useBlob: false, send: [...t, u("q2")] });
    expect(planFullHistory([], [u("hi")], true)).toMatchObject({ mode: "new", useBlob: false });
  });
});
