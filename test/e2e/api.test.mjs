// End-to-end: the official openai client against the real stack (Worker in workerd + GPU service on CPU).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import OpenAI from "openai";
import { KEY_A, KEY_B, collectStream, startStack } from "./harness.mjs";

let stack;
let client;
let model;
const greedy = { temperature: 0, max_tokens: 12 };
const uid = () => Math.random().toString(36).slice(2, 10);

before(async () => {
  stack = await startStack();
  client = stack.client();
  const models = await client.models.list();
  model = models.data[0].id;
});
after(async () => stack?.stop());

describe("public API", () => {
  test("GET /v1/models lists the served model", async () => {
    const models = await client.models.list();
    assert.ok(models.data.length >= 1);
    assert.equal(models.data[0].object, "model");
    const one = await client.models.retrieve(model);
    assert.equal(one.id, model);
  });

  test("non-streaming chat completion", async () => {
    const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Hello there" }], ...greedy });
    assert.equal(r.object, "chat.completion");
    assert.equal(r.choices[0].message.role, "assistant");
    assert.equal(typeof r.choices[0].message.content, "string");
    assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
    assert.ok(r.usage.prompt_tokens > 0 && r.usage.completion_tokens > 0);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  });

  test("streaming chat completion with include_usage", async () => {
    const stream = await client.chat.completions.create({
      model, messages: [{ role: "user", content: "Tell me about the sea" }], stream: true, stream_options: { include_usage: true }, ...greedy,
    });
    const { chunks, text, usage } = await collectStream(stream);
    assert.equal(chunks[0].object, "chat.completion.chunk");
    assert.equal(chunks[0].choices[0].delta.role, "assistant");
    const final = chunks.findLast((c) => c.choices.length > 0);
    assert.ok(["stop", "length"].includes(final.choices[0].finish_reason));
    assert.deepEqual(chunks.at(-1).choices, []);
    assert.ok(usage.completion_tokens > 0);
    // Same text as the non-streaming call with the same greedy parameters.
    const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Tell me about the sea" }], ...greedy });
    assert.equal(text, r.choices[0].message.content);
  });

  test("legacy completions", async () => {
    const r = await client.completions.create({ model, prompt: "In the beginning", max_tokens: 8, temperature: 0 });
    assert.equal(r.object, "text_completion");
    assert.equal(typeof r.choices[0].text, "string");
    assert.ok(r.usage.completion_tokens > 0);
  });
});

describe("sessions", () => {
  test("3 turns via prompt_cache_key reuse the cache and match a stateless request", async () => {
    const key = `e2e-${uid()}`;
    const history = [];
    for (const [turn, content] of ["Who made the stars?", "And the moon?", "Say more."].entries()) {
      history.push({ role: "user", content });
      const r = await client.chat.completions.create({ model, messages: [{ role: "user", content }], prompt_cache_key: key, ...greedy });
      const reply = r.choices[0].message.content;
      const cached = r.usage.prompt_tokens_details?.cached_tokens ?? 0;
      if (turn === 0) assert.equal(cached, 0);
      else assert.ok(cached > 0, `turn ${turn + 1} reports cached_tokens > 0 (got ${cached})`);
      const stateless = await client.chat.completions.create({ model, messages: history, ...greedy });
      assert.equal(reply, stateless.choices[0].message.content, `turn ${turn + 1}: session text == stateless text`);
      assert.equal(r.usage.prompt_tokens, stateless.usage.prompt_tokens);
      history.push({ role: "assistant", content: reply });
    }
    const s = await (await stack.session(key)).json();
    assert.equal(s.turns, 3);
  });

  test("a stock client resending the whole history also gets reuse", async () => {
    const key = `e2e-${uid()}`;
    const history = [{ role: "system", content: "You are terse." }];
    for (const [turn, content] of ["First question?", "Second question?", "Third?"].entries()) {
      history.push({ role: "user", content });
      const r = await client.chat.completions.create({ model, messages: history, prompt_cache_key: key, ...greedy });
      const cached = r.usage.prompt_tokens_details?.cached_tokens ?? 0;
      if (turn > 0) assert.ok(cached > 0, `turn ${turn + 1} cached_tokens > 0`);
      history.push({ role: "assistant", content: r.choices[0].message.content });
    }
  });

  test("the x-session-id header works like prompt_cache_key and is echoed back", async () => {
    const key = `e2e-hdr-${uid()}`;
    const { response } = await client.chat.completions
      .create({ model, messages: [{ role: "user", content: "Hi" }], ...greedy }, { headers: { "x-session-id": key } })
      .withResponse();
    assert.equal(response.headers.get("x-session-id"), key);
    assert.equal((await stack.session(key)).status, 200);
  });

  test("two API keys using the same session id see separate sessions", async () => {
    const key = `e2e-shared-${uid()}`;
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "Secret of A" }], prompt_cache_key: key, ...greedy });
    assert.equal((await stack.session(key, KEY_B)).status, 404);
    const b = stack.client(KEY_B);
    const r = await b.chat.completions.create({ model, messages: [{ role: "user", content: "Hello from B" }], prompt_cache_key: key, ...greedy });
    assert.equal(r.usage.prompt_tokens_details?.cached_tokens ?? 0, 0);
    assert.equal((await (await stack.session(key, KEY_A)).json()).turns, 1);
    assert.equal((await (await stack.session(key, KEY_B)).json()).turns, 1);
  });

  test("a client abort mid-stream leaves the session's previous state", async () => {
    const key = `e2e-abort-${uid()}`;
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "Start" }], prompt_cache_key: key, ...greedy });
    const before = await (await stack.session(key)).json();
    const stream = await client.chat.completions.create({
      model, messages: [{ role: "user", content: "Write a long story" }], prompt_cache_key: key, stream: true, temperature: 0, max_tokens: 400,
    });
    let n = 0;
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta?.content && ++n >= 2) {
        stream.controller.abort();
        break;
      }
    }
    await new Promise((r) => setTimeout(r, 500));
    const afterAbort = await (await stack.session(key)).json();
    assert.equal(afterAbort.turns, before.turns);
    const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Still there?" }], prompt_cache_key: key, ...greedy });
    assert.ok((r.usage.prompt_tokens_details?.cached_tokens ?? 0) > 0);
    assert.equal((await (await stack.session(key)).json()).turns, before.turns + 1);
  });

  test("killing the GPU service mid-stream gives an SDK error and an intact session after restart", async () => {
    const key = `e2e-kill-${uid()}`;
    await client.chat.completions.create({ model, messages: [{ role: "user", content: "Remember this" }], prompt_cache_key: key, ...greedy });
    const before = await (await stack.session(key)).json();
    const stream = await client.chat.completions.create({
      model, messages: [{ role: "user", content: "Go on and on" }], prompt_cache_key: key, stream: true, temperature: 0, max_tokens: 400,
    });
    await assert.rejects(async () => {
      let killed = false;
      for await (const chunk of stream) {
        if (!killed && chunk.choices[0]?.delta?.content) {
          killed = true;
          await stack.killGpu();
        }
      }
    }, OpenAI.APIError);
    await stack.restartGpu();
    assert.equal((await (await stack.session(key)).json()).turns, before.turns);
    const r = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Back?" }], prompt_cache_key: key, ...greedy });
    assert.ok((r.usage.prompt_tokens_details?.cached_tokens ?? 0) > 0);
  });
});

describe("errors surface as the SDK's typed errors", () => {
  test("bad key -> 401 AuthenticationError", async () => {
    const bad = stack.client("sk-not-a-key");
    await assert.rejects(bad.chat.completions.create({ model, messages: [{ role: "user", content: "x" }] }), OpenAI.AuthenticationError);
  });

  test("unknown model -> 404 NotFoundError", async () => {
    await assert.rejects(client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] }), (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      assert.equal(e.code, "model_not_found");
      return true;
    });
  });

  test("bad parameter -> 400 BadRequestError naming the param", async () => {
    await assert.rejects(client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], temperature: 7 }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.param, "temperature");
      return true;
    });
  });

  test("oversize body -> 413", async () => {
    const huge = "a".repeat(3 * 1024 * 1024);
    await assert.rejects(client.chat.completions.create({ model, messages: [{ role: "user", content: huge }] }), (e) => {
      assert.ok(e instanceof OpenAI.APIError);
      assert.equal(e.status, 413);
      return true;
    });
  });
});
