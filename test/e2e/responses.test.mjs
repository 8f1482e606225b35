// End-to-end: the Responses and Conversations APIs with the official openai client against the real
// stack (Worker in workerd + GPU service on CPU): chains by previous_response_id reuse the cache and
// are token-identical to the whole history sent statelessly, conversations, forks, the typed stream
// (live, and replayed by retrieve with stream: true), retrieve/input_items/delete, store: false,
// tenancy, a GPU-service restart between turns.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { KEY_B, startStack } from "./harness.mjs";

let stack;
let client;
let model;
const greedy = { temperature: 0, max_output_tokens: 12 };

before(async () => {
  stack = await startStack();
  client = stack.client();
  model = (await client.models.list()).data[0].id;
});
after(async () => stack?.stop());

/** The same history as a stateless chat completion: text and prompt tokens. */
async function stateless(messages) {
  const r = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 12 });
  return { text: r.choices[0].message.content, promptTokens: r.usage.prompt_tokens };
}

const cached = (r) => r.usage.input_tokens_details.cached_tokens;

describe("responses", () => {
  test("a 3-turn chain by previous_response_id reuses the cache and equals the whole history sent statelessly", async () => {
    const history = [];
    let prev;
    for (const [i, input] of ["Who made the stars?", "And the moon?", "Say more."].entries()) {
      const r = await client.responses.create({ model, input, ...(prev ? { previous_response_id: prev } : {}), ...greedy });
      assert.equal(r.object, "response");
      assert.ok(["completed", "incomplete"].includes(r.status));
      history.push({ role: "user", content: input });
      const ref = await stateless(history);
      assert.equal(r.output_text, ref.text, `turn ${i + 1}: chain text == stateless text`);
      assert.equal(r.usage.input_tokens, ref.promptTokens, `turn ${i + 1}: same prompt tokens`);
      if (i === 0) assert.equal(cached(r), 0);
      else assert.ok(cached(r) > 0, `turn ${i + 1} cached_tokens > 0 (got ${cached(r)})`);
      history.push({ role: "assistant", content: r.output_text });
      prev = r.id;
    }
    const got = await client.responses.retrieve(prev);
    assert.equal(got.output_text, history.at(-1).content);
    const items = await client.responses.inputItems.list(prev);
    assert.deepEqual(items.data.map((i) => i.content[0].text), ["Say more."]);
  });

  test("a fork from an older response sees that chain's history; the chain goes on from its cache", async () => {
    const a = await client.responses.create({ model, input: "Tell me about rivers.", ...greedy });
    const b = await client.responses.create({ model, input: "And lakes?", previous_response_id: a.id, ...greedy });
    const fork = await client.responses.create({ model, input: "And seas?", previous_response_id: a.id, ...greedy });
    const base = [{ role: "user", content: "Tell me about rivers." }, { role: "assistant", content: a.output_text }];
    assert.equal(fork.output_text, (await stateless([...base, { role: "user", content: "And seas?" }])).text);
    assert.equal(fork.previous_response_id, a.id);
    const c = await client.responses.create({ model, input: "Why?", previous_response_id: b.id, ...greedy });
    assert.ok(cached(c) > 0);
    assert.equal(c.output_text, (await stateless([...base, { role: "user", content: "And lakes?" },
      { role: "assistant", content: b.output_text }, { role: "user", content: "Why?" }])).text);
  });

  test("the same conversation by conversation id", async () => {
    const conv = await client.conversations.create({ metadata: { topic: "sky" } });
    const r1 = await client.responses.create({ model, input: "Who made the stars?", conversation: conv.id, ...greedy });
    const r2 = await client.responses.create({ model, input: "And the moon?", conversation: conv.id, ...greedy });
    assert.ok(cached(r2) > 0);
    assert.equal(r2.output_text, (await stateless([{ role: "user", content: "Who made the stars?" },
      { role: "assistant", content: r1.output_text }, { role: "user", content: "And the moon?" }])).text);
    const items = await client.conversations.items.list(conv.id, { order: "asc" });
    assert.deepEqual(items.data.map((i) => i.role), ["user", "assistant", "user", "assistant"]);
    assert.equal((await client.conversations.retrieve(conv.id)).metadata.topic, "sky");
    await client.conversations.delete(conv.id);
    await assert.rejects(client.conversations.retrieve(conv.id), OpenAI.NotFoundError);
  });

  test("client.responses.stream: the typed events in order", async () => {
    const stream = client.responses.stream({ model, input: "Tell me about the sea", ...greedy });
    const types = [];
    let deltas = "";
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === "response.output_text.delta") deltas += ev.delta;
    }
    const final = await stream.finalResponse();
    const head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    const tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done"];
    assert.deepEqual(types.slice(0, 4), head);
    assert.deepEqual(types.slice(-4, -1), tail);
    assert.ok(["response.completed", "response.incomplete"].includes(types.at(-1)));
    assert.equal(final.output_text, deltas);
    assert.equal((await client.responses.retrieve(final.id)).output_text, deltas);
  });

  test("retrieve with stream: true replays the stored response's events: the same text and final response", async () => {
    const live = [];
    for await (const ev of await client.responses.create({ model, input: "Tell me about the wind", stream: true, ...greedy })) live.push(ev);
    const original = live.at(-1).response;
    const replay = await client.responses.retrieve(original.id, { stream: true });
    const events = [];
    for await (const ev of replay) events.push(ev);
    const head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    const tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done"];
    assert.deepEqual(events.map((e) => e.type), [...head, "response.output_text.delta", ...tail, live.at(-1).type]);
    assert.deepEqual(events.map((e) => e.sequence_number), events.map((_, i) => i));
    assert.equal(events[4].delta, live.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join(""));
    assert.deepEqual(events.at(-1).response, original);
    assert.equal(events.at(-1).response.status, (await client.responses.retrieve(original.id)).status);
    const rest = [];
    for await (const ev of await client.responses.retrieve(original.id, { stream: true, starting_after: 4 })) rest.push(ev);
    assert.deepEqual(rest, events.slice(5));
    const bad = await client.responses.retrieve(original.id, { stream: true, starting_after: -1 }).catch((e) => e);
    assert.ok(bad instanceof OpenAI.BadRequestError);
    assert.equal(bad.param, "starting_after");
    await assert.rejects(stack.client(KEY_B).responses.retrieve(original.id, { stream: true }), OpenAI.NotFoundError);
  });

  test("store: false, delete, another tenant's ids, bad input", async () => {
    const unstored = await client.responses.create({ model, input: "forget me", store: false, ...greedy });
    await assert.rejects(client.responses.retrieve(unstored.id), OpenAI.NotFoundError);
    await assert.rejects(client.responses.create({ model, input: "x", previous_response_id: unstored.id, ...greedy }), OpenAI.NotFoundError);
    const r = await client.responses.create({ model, input: "mine", ...greedy });
    const other = stack.client(KEY_B);
    await assert.rejects(other.responses.retrieve(r.id), OpenAI.NotFoundError);
    await assert.rejects(other.responses.create({ model, input: "x", previous_response_id: r.id }), OpenAI.NotFoundError);
    const bad = await client.responses.create({ model, input: [{ type: "function_call_output", call_id: "c", output: "o" }] })
      .catch((e) => e);
    assert.ok(bad instanceof OpenAI.BadRequestError);
    assert.equal(bad.param, "input");
    const del = await client.responses.delete(r.id);
    assert.deepEqual(del, { id: r.id, object: "response", deleted: true });
    await assert.rejects(client.responses.retrieve(r.id), OpenAI.NotFoundError);
  });

  test("a restart of the GPU service between turns keeps the chain (cached_tokens still > 0)", async () => {
    const a = await client.responses.create({ model, input: "Remember the number seven.", ...greedy });
    await stack.killGpu();
    await stack.restartGpu();
    const b = await client.responses.create({ model, input: "What was it?", previous_response_id: a.id, ...greedy });
    assert.ok(cached(b) > 0, `cached_tokens after restart: ${cached(b)}`);
  });
});
