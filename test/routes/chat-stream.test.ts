// Streaming chat and completions: exact OpenAI SSE framing, usage chunk, in-band errors, cancel.
import { describe, expect, it } from "vitest";
import { call, chat, doubleLog, eventually, MODEL, sseData, user } from "../helpers";

async function streamOf(res: Response) {
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toBe("text/event-stream");
  expect(res.headers.get("x-request-id")).toMatch(/^req_/);
  const data = sseData(await res.text());
  return { data, chunks: data.filter((d) => d !== "[DONE]").map((d) => JSON.parse(d)) };
}

describe("chat streaming", () => {
  it("role chunk, content chunks, finish chunk, [DONE] (no usage field without include_usage)", async () => {
    const { data, chunks } = await streamOf(await chat({ model: MODEL, messages: [user("stream me")], stream: true }));
    expect(data.at(-1)).toBe("[DONE]");
    expect(chunks[0].choices[0]).toEqual({ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null });
    const last = chunks.at(-1);
    expect(last.choices[0]).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: "stop" });
    for (const c of chunks) {
      expect(c).toMatchObject({ object: "chat.completion.chunk", model: MODEL, id: chunks[0].id, created: chunks[0].created });
      expect(c).not.toHaveProperty("usage");
    }
    const text = chunks.slice(1, -1).map((c) => c.choices[0].delta.content).join("");
    // the same request non-streamed gives the same text (the double is deterministic)
    const plain = (await (await chat({ model: MODEL, messages: [user("stream me")] })).json()) as any;
    expect(text).toBe(plain.choices[0].message.content);
    expect(chunks.slice(1, -1).every((c) => c.choices[0].finish_reason === null && c.choices[0].delta.content.length > 0)).toBe(true);
  });

  it("include_usage: usage: null on every chunk, then a choices: [] usage chunk before [DONE]", async () => {
    const { data, chunks } = await streamOf(await chat({ model: MODEL, messages: [user("count")], stream: true,
      stream_options: { include_usage: true }, max_completion_tokens: 3 }));
    expect(data.at(-1)).toBe("[DONE]");
    const usage = chunks.at(-1);
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toMatchObject({ completion_tokens: 3, prompt_tokens_details: { cached_tokens: 0 } });
    expect(usage.usage.total_tokens).toBe(usage.usage.prompt_tokens + 3);
    for (const c of chunks.slice(0, -1)) expect(c.usage).toBeNull();
    expect(chunks.at(-2).choices[0].finish_reason).toBe("length");
  });

  it("a failure after the 200 arrives in-band as data: {error} and the stream closes", async () => {
    const { data } = await streamOf(await chat({ model: MODEL, messages: [user("@fail")], stream: true }));
    expect(data).not.toContain("[DONE]");
    expect(JSON.parse(data.at(-1)!)).toEqual({ error: { message: "The model service failed to complete the request.",
      type: "server_error", param: null, code: "upstream_error" } });
    const cut = await streamOf(await chat({ model: MODEL, messages: [user("@cut")], stream: true }));
    expect(JSON.parse(cut.data.at(-1)!).error.code).toBe("upstream_protocol_error");
  });

  it("errors before streaming starts are plain HTTP errors even with stream: true", async () => {
    const res = await chat({ model: MODEL, messages: [user("@ctx")], stream: true });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(((await res.json()) as any).error.code).toBe("context_length_exceeded");
  });

  it("a client that disconnects cancels the stateless upstream call", async () => {
    const res = await chat({ model: MODEL, messages: [user("@drip")], stream: true });
    const rid = res.headers.get("x-request-id")!;
    const reader = res.body!.getReader();
    await reader.read();
    await reader.read();
    await reader.cancel();
    const log = await eventually(() => doubleLog(rid), (l) => l[0]?.outcome === "cancelled");
    expect(log[0]!.outcome).toBe("cancelled");
  });

  it("stop strings end the text with finish_reason stop", async () => {
    const plain = (await (await chat({ model: MODEL, messages: [user("stops")] })).json()) as any;
    const words = plain.choices[0].message.content.split(" ");
    const res = (await (await chat({ model: MODEL, messages: [user("stops")], stop: [` ${words[2]}`] })).json()) as any;
    expect(res.choices[0].message.content).toBe(words.slice(0, 2).join(" "));
    expect(res.choices[0].finish_reason).toBe("stop");
  });
});

describe("completions", () => {
  const complete = (json: unknown) => call("/v1/completions", { method: "POST", json });

  it("non-streaming text_completion, stateless, default max_tokens 16", async () => {
    const res = await complete({ model: MODEL, prompt: "Once upon", prompt_cache_key: "ignored" });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-session-id")).toBeNull();
    const body = (await res.json()) as any;
    expect(body).toMatchObject({ object: "text_completion", model: MODEL, choices: [{ index: 0, logprobs: null, finish_reason: "stop" }] });
    expect(body.id).toMatch(/^cmpl-/);
    const log = await doubleLog(res.headers.get("x-request-id")!);
    expect(log[0]).toMatchObject({ kind: "completion", prompt: "Once upon", return_blob: false, blob_in_bytes: 0 });
  });

  it("an empty prompt is passed on (the service starts a new document), as at OpenAI", async () => {
    const res = await complete({ model: MODEL, prompt: "" });
    expect(res.status).toBe(200);
    const log = await doubleLog(res.headers.get("x-request-id")!);
    expect(log[0]).toMatchObject({ kind: "completion", prompt: "" });
  });

  it("streams text_completion chunks with a usage chunk and [DONE]", async () => {
    const res = await complete({ model: MODEL, prompt: ["Once"], stream: true, stream_options: { include_usage: true } });
    const { data, chunks } = await streamOf(res);
    expect(data.at(-1)).toBe("[DONE]");
    expect(chunks.at(-1).choices).toEqual([]);
    expect(chunks.at(-2).choices[0].finish_reason).toBe("stop");
    expect(chunks[0].object).toBe("text_completion");
    expect(chunks.slice(0, -2).every((c) => c.choices[0].text.length > 0 && c.usage === null)).toBe(true);
  });

  it("rejects what it does not implement, naming the parameter", async () => {
    for (const [body, param] of [
      [{ model: MODEL, prompt: "x", echo: true }, "echo"],
      [{ model: MODEL, prompt: ["a", "b"] }, "prompt"],
      [{ model: MODEL, prompt: [1, 2, 3] }, "prompt"],
      [{ model: MODEL, prompt: "x", best_of: 2 }, "best_of"],
      [{ model: MODEL, prompt: "x", logprobs: 2 }, "logprobs"],
      [{ model: MODEL }, "prompt"],
    ] as const) {
      const res = await complete(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(((await res.json()) as any).error.param).toBe(param);
    }
  });
});
