// The Responses API through the chain objects: continuation by previous_response_id (cache
// reused, text equal to a stateless request), forks, store: false, retrieve/delete/input_items,
// tenancy, bad input, and the typed stream.
import { describe, expect, it } from "vitest";
import { call, chat, doubleLog, MODEL, typedEvents, user } from "../helpers";

const create = (json: Record<string, unknown>, tenant = "tenant-a") =>
  call("/v1/responses", { method: "POST", json: { model: MODEL, temperature: 0, ...json }, tenant });

async function ok(json: Record<string, unknown>, tenant = "tenant-a") {
  const res = await create(json, tenant);
  const body = (await res.json()) as any;
  expect(res.status, JSON.stringify(body)).toBe(200);
  return { body, text: body.output[0].content[0].text as string, log: await doubleLog(res.headers.get("x-request-id")!) };
}

async function statelessText(messages: unknown[]) {
  const res = await chat({ model: MODEL, messages, temperature: 0 });
  return ((await res.json()) as any).choices[0].message.content as string;
}

describe("responses", () => {
  it("continues a chain three turns deep from the cache, equal to the whole history sent statelessly", async () => {
    const history: { role: string; content: string }[] = [];
    let prev: string | null = null;
    for (const [i, q] of ["first question", "second question", "third question"].entries()) {
      const r = await ok({ input: q, previous_response_id: prev });
      expect(r.body).toMatchObject({ object: "response", status: "completed", previous_response_id: prev, store: true });
      expect(r.body.id).toMatch(/^resp_[0-9a-f]{48}$/);
      history.push(user(q));
      expect(r.text).toBe(await statelessText(history));
      if (i === 0) expect(r.body.usage.input_tokens_details.cached_tokens).toBe(0);
      else {
        expect(r.body.usage.input_tokens_details.cached_tokens).toBeGreaterThan(0);
        expect(r.log[0]!.messages).toEqual([user(q)]); // only the new input is prefilled
      }
      history.push({ role: "assistant", content: r.text });
      prev = r.body.id;
    }
    const got = await call(`/v1/responses/${prev}`);
    expect(got.status).toBe(200);
    expect(((await got.json()) as any).output[0].content[0].text).toBe(history.at(-1)!.content);
  });

  it("a fork from an older response sees that chain's history and leaves the chain intact", async () => {
    const a = await ok({ input: "root" });
    const b = await ok({ input: "branch one", previous_response_id: a.body.id });
    const fork = await ok({ input: "branch two", previous_response_id: a.body.id });
    expect(fork.body.previous_response_id).toBe(a.body.id);
    expect(fork.body.usage.input_tokens_details.cached_tokens).toBe(0); // a fork prefills its history
    expect(fork.text).toBe(await statelessText([user("root"), { role: "assistant", content: a.text }, user("branch two")]));
    const c = await ok({ input: "after b", previous_response_id: b.body.id });
    expect(c.body.usage.input_tokens_details.cached_tokens).toBeGreaterThan(0); // the original chain still continues its cache
    expect(c.text).toBe(await statelessText([user("root"), { role: "assistant", content: a.text }, user("branch one"),
      { role: "assistant", content: b.text }, user("after b")]));
  });

  it("instructions are a system message of this response only", async () => {
    const a = await ok({ input: "hi", instructions: "be terse" });
    expect(a.log[0]!.messages).toEqual([{ role: "system", content: "be terse" }, user("hi")]);
    const b = await ok({ input: "again", previous_response_id: a.body.id });
    expect(b.text).toBe(await statelessText([user("hi"), { role: "assistant", content: a.text }, user("again")]));
  });

  it("store: false leaves nothing behind", async () => {
    const a = await ok({ input: "secret", store: false });
    expect((await call(`/v1/responses/${a.body.id}`)).status).toBe(404);
    const res = await create({ input: "next", previous_response_id: a.body.id });
    expect(res.status).toBe(404);
    expect(((await res.json()) as any).error).toMatchObject({ code: "response_not_found", param: "previous_response_id" });
    // continuing a stored response without storing: its history, nothing appended
    const s = await ok({ input: "stored" });
    const t = await ok({ input: "unstored", previous_response_id: s.body.id, store: false });
    expect(t.text).toBe(await statelessText([user("stored"), { role: "assistant", content: s.text }, user("unstored")]));
    const u = await ok({ input: "continues", previous_response_id: s.body.id });
    expect(u.body.usage.input_tokens_details.cached_tokens).toBeGreaterThan(0);
  });

  it("input_items pages, delete, and another tenant's ids are 404", async () => {
    const a = await ok({ input: [{ role: "user", content: "one" }, { role: "user", content: [{ type: "input_text", text: "two" }] }] });
    const page = (await (await call(`/v1/responses/${a.body.id}/input_items?order=asc&limit=1`)).json()) as any;
    expect(page).toMatchObject({ object: "list", has_more: true, data: [{ type: "message", role: "user", content: [{ type: "input_text", text: "one" }] }] });
    const rest = (await (await call(`/v1/responses/${a.body.id}/input_items?order=asc&after=${page.last_id}`)).json()) as any;
    expect(rest.data.map((i: any) => i.content[0].text)).toEqual(["two"]);
    expect(rest.has_more).toBe(false);
    expect((await call(`/v1/responses/${a.body.id}`, { tenant: "tenant-b" })).status).toBe(404);
    expect((await call(`/v1/responses/${a.body.id}`, { method: "DELETE", tenant: "tenant-b" })).status).toBe(404);
    expect((await create({ input: "x", previous_response_id: a.body.id }, "tenant-b")).status).toBe(404);
    const del = await call(`/v1/responses/${a.body.id}`, { method: "DELETE" });
    expect(await del.json()).toEqual({ id: a.body.id, object: "response", deleted: true });
    expect((await call(`/v1/responses/${a.body.id}`)).status).toBe(404);
  });

  it("bad input is a 400 naming the parameter and changes nothing", async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{ input: [{ type: "function_call_output", call_id: "x", output: "y" }] }, "input", "invalid_value"],
      [{ input: [{ role: "user", content: [{ type: "input_image", image_url: "x" }] }] }, "input", "invalid_value"],
      [{ input: "x", previous_response_id: "resp_nope" }, "previous_response_id", "invalid_value"],
      [{ input: "x", conversation: "conv_1" }, "conversation", "invalid_value"],
      [{ input: "x", text: { format: { type: "json_object" } } }, "text.format.type", "unsupported_parameter"],
      [{ input: "x", tools: [{ type: "function", name: "f" }] }, "tools", "unsupported_parameter"],
    ];
    for (const [json, param, code] of cases) {
      const res = await create(json);
      const body = (await res.json()) as any;
      expect(res.status, JSON.stringify(json)).toBe(400);
      expect(body.error.param, JSON.stringify(body)).toBe(param);
      expect(body.error.code, JSON.stringify(body)).toBe(code);
    }
    const missing = await create({ input: "x", previous_response_id: `resp_${"0".repeat(48)}` });
    expect(missing.status).toBe(404);
  });

  it("streams the typed events in order", async () => {
    const res = await create({ input: "stream me", stream: true });
    expect(res.status).toBe(200);
    const events = typedEvents(await res.text());
    const types = events.map((e) => e.type);
    expect(types.slice(0, 4)).toEqual(["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]);
    expect(types.slice(-4)).toEqual(["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]);
    expect(types.slice(4, -4).every((t) => t === "response.output_text.delta")).toBe(true);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    const done = events.at(-1).response;
    expect(events.slice(4, -4).map((e) => e.delta).join("")).toBe(done.output[0].content[0].text);
    const got = (await (await call(`/v1/responses/${done.id}`)).json()) as any;
    expect(got).toEqual(done);
  });

  it("a failure after the start is an error event then response.failed, and nothing is stored", async () => {
    const a = await ok({ input: "before" });
    const res = await create({ input: "@fail now", previous_response_id: a.body.id, stream: true });
    expect(res.status).toBe(200);
    const events = typedEvents(await res.text());
    const types = events.map((e) => e.type);
    expect(types.slice(-2)).toEqual(["error", "response.failed"]);
    expect(events.at(-1).response).toMatchObject({ status: "failed", output: [], usage: null });
    expect(events.at(-1).response.error.code).toBe(events.at(-2).code);
    expect((await call(`/v1/responses/${events[0].response.id}`)).status).toBe(404);
    const next = await ok({ input: "after", previous_response_id: a.body.id }); // a is still the latest
    expect(next.body.usage.input_tokens_details.cached_tokens).toBeGreaterThan(0);
  });
});
