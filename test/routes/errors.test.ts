// Auth, validation, size limits, rate limits, unknown models and routes: OpenAI-shaped errors
// with the right status, param and headers.
import { describe, expect, it } from "vitest";
import { call, chat, doubleLog, keyOf, MODEL, user } from "../helpers";

async function expectError(res: Response, status: number, fields: Record<string, unknown>) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toBe("application/json");
  expect(res.headers.get("x-request-id")).toMatch(/^req_/);
  const body = (await res.json()) as any;
  expect(Object.keys(body)).toEqual(["error"]);
  expect(Object.keys(body.error).sort()).toEqual(["code", "message", "param", "type"]);
  expect(body.error).toMatchObject(fields);
  return body.error;
}

describe("auth", () => {
  it("missing, malformed and wrong keys are 401; keys never echo", async () => {
    await expectError(await call("/v1/models", { tenant: null }), 401, { type: "authentication_error", code: "missing_api_key" });
    // a header that is not "Bearer <one key>" is a wrong key, not a missing one
    await expectError(await call("/v1/models", { tenant: null, headers: { authorization: "Basic abc" } }), 401, { code: "invalid_api_key" });
    await expectError(await call("/v1/models", { tenant: null, headers: { authorization: "Bearer k1 k2" } }), 401, { code: "invalid_api_key" });
    await expectError(await call("/v1/models", { tenant: null, headers: { authorization: "   " } }), 401, { code: "missing_api_key" });
    const e = await expectError(await call("/v1/models", { tenant: null, headers: { authorization: "Bearer sk-wrong-key-123" } }), 401,
      { type: "authentication_error", code: "invalid_api_key" });
    expect(e.message).not.toContain("sk-wrong");
    const ok = await call("/v1/models", { tenant: null, headers: { authorization: `Bearer ${keyOf("tenant-b")}` } });
    expect(ok.status).toBe(200);
  });

  it("unknown routes are OpenAI-shaped 404s", async () => {
    await expectError(await call("/v1/nope"), 404, { code: "unknown_route" });
    const wrongVerb = await call("/v1/chat/completions", { method: "GET" });
    expect(wrongVerb.headers.get("allow")).toBe("POST");
    await expectError(wrongVerb, 405, { code: "method_not_allowed", type: "invalid_request_error" });
    const put = await call("/v1/sessions/abc", { method: "PUT" });
    expect(put.headers.get("allow")).toBe("GET, DELETE");
    expect(put.status).toBe(405);
    // the methods come from the route declarations: /healthz included
    const postHealth = await call("/healthz", { method: "POST", tenant: null });
    expect(postHealth.headers.get("allow")).toBe("GET");
    await expectError(postHealth, 405, { code: "method_not_allowed" });
    expect((await call("/v1/models", { method: "DELETE" })).headers.get("allow")).toBe("GET");
  });
});

describe("request validation", () => {
  const cases: [string, unknown, string | null, string][] = [
    ["missing messages", { model: MODEL }, "messages", "missing_required_parameter"],
    ["missing model", { messages: [user("x")] }, "model", "missing_required_parameter"],
    ["empty messages", { model: MODEL, messages: [] }, "messages", "invalid_value"],
    ["tool role", { model: MODEL, messages: [{ role: "tool", content: "x" }] }, "messages[0].role", "invalid_value"],
    ["image part", { model: MODEL, messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] }, "messages[0].content", "invalid_value"],
    ["temperature > 2", { model: MODEL, messages: [user("x")], temperature: 3 }, "temperature", "invalid_value"],
    ["top_p = 0", { model: MODEL, messages: [user("x")], top_p: 0 }, "top_p", "invalid_value"],
    ["5 stops", { model: MODEL, messages: [user("x")], stop: ["a", "b", "c", "d", "e"] }, "stop", "invalid_value"],
    ["fractional max_tokens", { model: MODEL, messages: [user("x")], max_tokens: 1.5 }, "max_tokens", "invalid_value"],
    ["unknown field", { model: MODEL, messages: [user("x")], frobnicate: 1 }, "frobnicate", "unknown_parameter"],
    ["n = 2", { model: MODEL, messages: [user("x")], n: 2 }, "n", "unsupported_parameter"],
    ["tools", { model: MODEL, messages: [user("x")], tools: [{ type: "function", function: { name: "f" } }] }, "tools", "unsupported_parameter"],
    ["logprobs", { model: MODEL, messages: [user("x")], logprobs: true }, "logprobs", "unsupported_parameter"],
    ["json_schema", { model: MODEL, messages: [user("x")], response_format: { type: "json_schema", json_schema: {} } }, "response_format.type", "unsupported_parameter"],
    ["penalty", { model: MODEL, messages: [user("x")], presence_penalty: 0.5 }, "presence_penalty", "unsupported_parameter"],
    ["logit_bias", { model: MODEL, messages: [user("x")], logit_bias: { "50256": -100 } }, "logit_bias", "unsupported_parameter"],
    ["tool_choice required", { model: MODEL, messages: [user("x")], tool_choice: "required" }, "tool_choice", "unsupported_parameter"],
    ["audio modality", { model: MODEL, messages: [user("x")], modalities: ["text", "audio"] }, "modalities[1]", "unsupported_parameter"],
    ["audio", { model: MODEL, messages: [user("x")], audio: { voice: "alloy" } }, "audio", "unsupported_parameter"],
    ["stream_options without stream", { model: MODEL, messages: [user("x")], stream_options: { include_usage: true } }, "stream_options", "invalid_value"],
    ["max tokens disagree", { model: MODEL, messages: [user("x")], max_tokens: 5, max_completion_tokens: 6 }, "max_completion_tokens", "invalid_value"],
    // an unpaired surrogate is a valid JSON escape but not text: 400 here, never a 502 from the tokenizer
    ["unpaired surrogate in content", { model: MODEL, messages: [user("hi \ud83d")] }, "messages[0].content", "invalid_value"],
    ["unpaired surrogate in a part", { model: MODEL, messages: [{ role: "user", content: [{ type: "text", text: "\udc00" }] }] }, "messages[0].content[0].text", "invalid_value"],
    ["unpaired surrogate in stop", { model: MODEL, messages: [user("x")], stop: ["a", "\ud83d"] }, "stop[1]", "invalid_value"],
    ["missing content", { model: MODEL, messages: [{ role: "user" }] }, "messages[0].content", "missing_required_parameter"],
  ];
  for (const [name, body, param, code] of cases) {
    it(`400 for ${name} (param ${param})`, async () => {
      await expectError(await chat(body), 400, { type: "invalid_request_error", param, code });
    });
  }

  it("seed takes any 64-bit integer, read exactly; a fraction or a bigger number is refused in words", async () => {
    // raw JSON: integer literals beyond 2^53 are read digit for digit, not rounded to a double
    const withSeed = (seed: string) => call("/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" },
      body: `{"model": "${MODEL}", "messages": [{"role": "user", "content": "x"}], "temperature": 1, "seed": ${seed}}` });
    const folded: number[] = [];
    for (const seed of ["-1", "-9223372036854775808", "9223372036854775807", "9223372036854775806", String(2 ** 60), "0"]) {
      const res = await withSeed(seed);
      expect(res.status).toBe(200);
      const log = await doubleLog(res.headers.get("x-request-id")!);
      expect(Number.isSafeInteger(log[0]!.sampling.seed)).toBe(true);
      folded.push(log[0]!.sampling.seed);
    }
    expect(folded[2]).not.toBe(folded[3]); // neighbours beyond 2^53 stay different seeds
    for (const [seed, words] of [["1.5", /seed must be an integer/], ["9223372036854775808", /64-bit integer/],
      ["-9223372036854775809", /64-bit integer/], ["18446744073709551616", /64-bit integer/]] as const) {
      const res = await withSeed(seed);
      expect(res.status).toBe(400);
      const err = ((await res.json()) as any).error;
      expect(err.param).toBe("seed");
      expect(err.message).toMatch(words);
    }
  });

  it("unsupported content parts and too many stop strings say what is allowed", async () => {
    const img = await chat({ model: MODEL, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] });
    expect(((await img.json()) as any).error.message).toMatch(/array of text parts.*image, audio and file parts are not supported/);
    const stops = await chat({ model: MODEL, messages: [user("x")], stop: ["a", "b", "c", "d", "e"] });
    expect(((await stops.json()) as any).error.message).toMatch(/at most 4 strings, each 1-64 characters/);
  });

  const completionCases: [string, unknown, string, string][] = [
    ["missing prompt", { model: MODEL }, "prompt", "missing_required_parameter"],
    ["unpaired surrogate in prompt", { model: MODEL, prompt: "x\ud83d" }, "prompt", "invalid_value"],
    ["unpaired surrogate in prompt[0]", { model: MODEL, prompt: ["x\ud83d"] }, "prompt[0]", "invalid_value"],
    ["a batch of prompts", { model: MODEL, prompt: ["a", "b"] }, "prompt", "invalid_value"],
    ["echo", { model: MODEL, prompt: "x", echo: true }, "echo", "unsupported_parameter"],
    ["best_of", { model: MODEL, prompt: "x", best_of: 3 }, "best_of", "unsupported_parameter"],
    ["suffix", { model: MODEL, prompt: "x", suffix: "end" }, "suffix", "unsupported_parameter"],
  ];
  for (const [name, body, param, code] of completionCases) {
    it(`completions: 400 for ${name} (param ${param})`, async () => {
      const res = await call("/v1/completions", { method: "POST", json: body });
      await expectError(res, 400, { type: "invalid_request_error", param, code });
      expect(await doubleLog(res.headers.get("x-request-id")!)).toEqual([]);
    });
  }

  it("the GPU service's own 400s name the public field, in param and in the message", async () => {
    const e = await expectError(await chat({ model: MODEL, messages: [user("x")], max_tokens: 5000 }), 400,
      { type: "invalid_request_error", param: "max_tokens", code: "invalid_value" });
    expect(e.message).toBe("max_tokens must be an integer in 1..4096");
  });

  it("defaults sent to the service: temperature 1 (OpenAI's), completions max_tokens 16", async () => {
    const chatRes = await chat({ model: MODEL, messages: [user("x")] });
    const chatLog = await doubleLog(chatRes.headers.get("x-request-id")!);
    expect(chatLog[0]!.sampling.temperature).toBe(1);
    expect(chatLog[0]!.sampling.max_tokens).toBeUndefined(); // the service's own default (256)
    const text = await call("/v1/completions", { method: "POST", json: { model: MODEL, prompt: "x" } });
    expect((await doubleLog(text.headers.get("x-request-id")!))[0]!.sampling).toMatchObject({ temperature: 1, max_tokens: 16 });
  });

  it("a Content-Length over the limit is refused before any byte is read", async () => {
    // a body that never ends: only the declared length can answer in time
    const endless = new ReadableStream<Uint8Array>({ start(c) { c.enqueue(new TextEncoder().encode('{"model":')); } });
    const res = await call("/v1/chat/completions", { method: "POST", body: endless,
      headers: { "content-type": "application/json", "content-length": String(1048576 + 1) } });
    await expectError(res, 413, { code: "request_too_large" });
  });

  it("emoji and other astral characters (paired surrogates) are accepted", async () => {
    const res = await chat({ model: MODEL, messages: [user("hi 😀 日本語")], max_tokens: 3, stop: "🎉" });
    expect(res.status).toBe(200);
  });

  it("accepts and ignores harmless fields; accepts n=1, max_tokens, seed, user, metadata", async () => {
    const res = await chat({ model: MODEL, messages: [{ role: "developer", content: [{ type: "text", text: "hi" }] }, user("x")], n: 1,
      max_tokens: 2, seed: 7, user: "u1", metadata: { a: "b" }, store: false, presence_penalty: 0, logit_bias: {}, tool_choice: "none",
      response_format: { type: "text" }, stream: false, service_tier: "auto", parallel_tool_calls: true });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body.usage.completion_tokens).toBe(2);
    const log = await doubleLog(res.headers.get("x-request-id")!);
    expect(log[0]!.messages[0]).toEqual({ role: "developer", content: "hi" });
  });

  it("Content-Type is checked before the body is validated", async () => {
    await expectError(await call("/v1/chat/completions", { method: "POST", body: "model=x", headers: { "content-type": "application/x-www-form-urlencoded" } }),
      415, { code: "unsupported_media_type" });
    await expectError(await call("/v1/chat/completions", { method: "POST", body: "{not json", headers: { "content-type": "application/json" } }),
      400, { code: "invalid_json" });
    await expectError(await call("/v1/chat/completions", { method: "POST", body: "[1]", headers: { "content-type": "application/json" } }),
      400, { code: "invalid_json" });
  });

  it("a Content-Length that is not a number of bytes is a 400 naming the header", async () => {
    for (const bad of ["abc", "-1", "1.5", "12 34"]) {
      const res = await call("/v1/chat/completions", { method: "POST", body: "{}", headers: { "content-type": "application/json", "content-length": bad } });
      await expectError(res, 400, { code: "invalid_header", param: "content-length", type: "invalid_request_error" });
      expect(await doubleLog(res.headers.get("x-request-id")!)).toEqual([]);
    }
  });

  it("413 from Content-Length and from the bytes actually read", async () => {
    const big = JSON.stringify({ model: MODEL, messages: [user("x".repeat(1_100_000))] });
    const e = await expectError(await call("/v1/chat/completions", { method: "POST", body: big, headers: { "content-type": "application/json" } }),
      413, { code: "request_too_large" });
    expect(e.message).toContain("1048576");
    const bytes = new TextEncoder().encode(big);
    const chunked = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < bytes.length; i += 65536) c.enqueue(bytes.slice(i, i + 65536));
        c.close();
      },
    });
    const res = await call("/v1/chat/completions", { method: "POST", body: chunked, headers: { "content-type": "application/json" } });
    await expectError(res, 413, { code: "request_too_large" });
    expect(res.headers.get("x-should-retry")).toBe("false");
  });
});

describe("models", () => {
  it("lists the GPU service's models and gets one", async () => {
    const res = await call("/v1/models");
    const body = (await res.json()) as any;
    expect(body.object).toBe("list");
    expect(body.data.map((m: any) => m.id)).toEqual(["lckv-tiny", "lckv-alt"]);
    expect(body.data[0]).toEqual({ id: "lckv-tiny", object: "model", created: 1764000000, owned_by: "lckv-edge", context_window: 4096, max_prompt_tokens: 4096 });
    const one = await call("/v1/models/lckv-alt");
    expect(((await one.json()) as any).id).toBe("lckv-alt");
    await expectError(await call("/v1/models/gpt-4o"), 404, { code: "model_not_found", param: "id" });
  });

  it("an unknown model is 404 model_not_found without a generation call", async () => {
    const res = await chat({ model: "gpt-4o", messages: [user("x")] });
    const rid = res.headers.get("x-request-id")!;
    await expectError(res, 404, { code: "model_not_found", param: "model", type: "invalid_request_error" });
    expect(await doubleLog(rid)).toEqual([]);
  });

  it("a very long unknown model id is not echoed whole", async () => {
    const res = await call(`/v1/models/${"m".repeat(5000)}`);
    expect(res.status).toBe(404);
    const msg = ((await res.json()) as any).error.message as string;
    expect(msg.length).toBeLessThan(200);
    expect(msg).toContain("m".repeat(100) + "…");
  });
});

describe("GPU service failures", () => {
  it("map to 502/503 without leaking the service's details", async () => {
    const crash = await expectError(await chat({ model: MODEL, messages: [user("@crash")] }), 502, { type: "server_error", code: "upstream_error" });
    expect(crash.message).not.toContain("internal error");
    await expectError(await chat({ model: MODEL, messages: [user("@unauth")] }), 502, { code: "upstream_auth_failed" });
    const res = await chat({ model: MODEL, messages: [user("@overload")] });
    expect(res.headers.get("retry-after")).toBe("2");
    await expectError(res, 503, { code: "overloaded" });
    await expectError(await chat({ model: MODEL, messages: [user("@ctx")] }), 400, { code: "context_length_exceeded", param: "messages" });
  });
});

describe("rate limit", () => {
  it("successful responses carry the tenant's limit, what is left and when the bucket is full", async () => {
    const res = await call("/v1/models", { tenant: "tenant-b" });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-ratelimit-limit-requests")).toBe("1000"); // RATE_LIMIT_RPM in vitest.config.ts
    const remaining = Number(res.headers.get("x-ratelimit-remaining-requests"));
    expect(remaining).toBeGreaterThanOrEqual(0);
    expect(remaining).toBeLessThan(1000);
    expect(res.headers.get("x-ratelimit-reset-requests")).toMatch(/^\d+s$/);
  });

  it("429 with retry-after once a tenant exceeds its requests per minute; others unaffected", async () => {
    let limited: Response | undefined;
    for (let i = 0; i < 10 && !limited; i++) {
      const res = await call("/v1/sessions/none", { tenant: "tenant-rl" });
      if (res.status === 429) limited = res;
      else expect(res.status).toBe(404);
    }
    expect(limited).toBeDefined();
    expect(limited!.headers.get("x-request-id")).toMatch(/^req_/);
    expect(Number(limited!.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(limited!.headers.get("x-ratelimit-remaining-requests")).toBe("0");
    expect(limited!.headers.get("x-ratelimit-limit-requests")).toBe("5"); // RATE_LIMIT_OVERRIDES in vitest.config.ts
    expect(limited!.headers.get("x-ratelimit-reset-requests")).toMatch(/^\d+s$/);
    await expectError(limited!, 429, { type: "rate_limit_error", code: "rate_limit_exceeded" });
    expect((await call("/v1/models", { tenant: "tenant-b" })).status).toBe(200);
  });
});
