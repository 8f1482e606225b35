// The Conversations API and responses that continue a conversation.
import { describe, expect, it } from "vitest";
import { call, chat, MODEL, user } from "../helpers";

const post = (path: string, json: unknown, tenant = "tenant-a") => call(path, { method: "POST", json, tenant });
const body = async (res: Response, status = 200) => {
  const b = (await res.json()) as any;
  expect(res.status, JSON.stringify(b)).toBe(status);
  return b;
};
const respond = async (json: Record<string, unknown>) =>
  body(await post("/v1/responses", { model: MODEL, temperature: 0, ...json }));
const statelessText = async (messages: unknown[]) =>
  ((await body(await chat({ model: MODEL, messages, temperature: 0 }))) as any).choices[0].message.content as string;

describe("conversations", () => {
  it("create with items, respond twice (cache reused, text equal to the whole history), list, add, delete", async () => {
    const conv = await body(await post("/v1/conversations", { items: [{ role: "user", content: "context item" }], metadata: { k: "v" } }));
    expect(conv).toMatchObject({ object: "conversation", metadata: { k: "v" } });
    expect(conv.id).toMatch(/^conv_[0-9a-f]{48}$/);
    const r1 = await respond({ input: "question one", conversation: conv.id });
    const t1 = r1.output[0].content[0].text;
    expect(r1.conversation).toEqual({ id: conv.id });
    expect(t1).toBe(await statelessText([user("context item"), user("question one")]));
    const r2 = await respond({ input: "question two", conversation: { id: conv.id } });
    expect(r2.usage.input_tokens_details.cached_tokens).toBeGreaterThan(0);
    const history = [user("context item"), user("question one"), { role: "assistant", content: t1 }, user("question two")];
    expect(r2.output[0].content[0].text).toBe(await statelessText(history));

    const list = await body(await call(`/v1/conversations/${conv.id}/items?order=asc`));
    expect(list.data.map((i: any) => [i.role, i.content[0].text])).toEqual([
      ["user", "context item"], ["user", "question one"], ["assistant", t1], ["user", "question two"], ["assistant", r2.output[0].content[0].text]]);
    expect(list.data[2].id).toBe(r1.output[0].id);

    const added = await body(await post(`/v1/conversations/${conv.id}/items`, { items: [{ role: "user", content: [{ type: "input_text", text: "note" }] }] }));
    const one = await body(await call(`/v1/conversations/${conv.id}/items/${added.data[0].id}`));
    expect(one).toMatchObject({ type: "message", role: "user", content: [{ type: "input_text", text: "note" }] });
    await body(await call(`/v1/conversations/${conv.id}/items/${added.data[0].id}`, { method: "DELETE" }));
    expect((await call(`/v1/conversations/${conv.id}/items/${added.data[0].id}`)).status).toBe(404);

    // deleting an earlier item changes what the next turn sees (rebuilt from the remaining items)
    await body(await call(`/v1/conversations/${conv.id}/items/${list.data[0].id}`, { method: "DELETE" }));
    const r3 = await respond({ input: "question three", conversation: conv.id });
    expect(r3.output[0].content[0].text).toBe(await statelessText([...history.slice(1),
      { role: "assistant", content: r2.output[0].content[0].text }, user("question three")]));

    const upd = await body(await post(`/v1/conversations/${conv.id}`, { metadata: { k: "w" } }));
    expect(upd.metadata).toEqual({ k: "w" });
    expect((await call(`/v1/conversations/${conv.id}`, { tenant: "tenant-b" })).status).toBe(404);
    expect((await post("/v1/responses", { model: MODEL, input: "x", conversation: conv.id }, "tenant-b")).status).toBe(404);
    expect(await body(await call(`/v1/conversations/${conv.id}`, { method: "DELETE" }))).toEqual({ id: conv.id, object: "conversation.deleted", deleted: true });
    expect((await call(`/v1/conversations/${conv.id}`)).status).toBe(404);
    const gone = await body(await post("/v1/responses", { model: MODEL, input: "x", conversation: conv.id }), 404);
    expect(gone.error).toMatchObject({ code: "conversation_not_found", param: "conversation" });
  });

  it("bad input names the parameter and changes nothing", async () => {
    const conv = await body(await post("/v1/conversations", {}));
    const bad = await body(await post(`/v1/conversations/${conv.id}/items`, { items: [{ type: "function_call", name: "f" }] }), 400);
    expect(bad.error.param).toMatch(/^items/);
    expect(await body(await post(`/v1/conversations/${conv.id}`, { metadata: { k: 1 } }), 400)).toMatchObject({ error: { param: "metadata.k" } });
    const both = await body(await post("/v1/responses", { model: MODEL, input: "x", conversation: conv.id, previous_response_id: `resp_${"1".repeat(48)}` }), 400);
    expect(both.error.param).toBe("conversation");
    expect((await body(await call(`/v1/conversations/${conv.id}/items`))).data).toEqual([]);
  });
});
