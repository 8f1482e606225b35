// openapi.yaml stays true: it is the document generated from the route declarations (the schemas
// the Worker validates with), every app route is in it, and real responses (JSON bodies, SSE
// chunks, errors) validate against the documented schemas.
import { Validator } from "@cfworker/json-schema";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import app from "../src/index";
import { openApiYaml } from "../src/spec";
import spec from "../openapi.yaml?raw";
import { call, chat, MODEL, sseData, typedEvents, user } from "./helpers";

const doc = parse(spec) as any;

function validate(schemaRef: any, instance: unknown): void {
  // Resolve "#/components/..." refs against the whole document.
  const v = new Validator({ ...schemaRef, components: doc.components } as any, "2020-12", false);
  const r = v.validate(instance);
  expect(r.valid, JSON.stringify({ instance, errors: r.errors.slice(0, 4) }, null, 1)).toBe(true);
}

const toOpenApiPath = (p: string) => p.replace(/:(\w+)(\{[^}]*\})?/g, "{$1}");

function responseSchema(method: string, path: string, status: number, type = "application/json") {
  const op = doc.paths[path]?.[method.toLowerCase()];
  expect(op, `${method} ${path} documented`).toBeDefined();
  let resp = op.responses[String(status)];
  expect(resp, `${method} ${path} documents ${status}`).toBeDefined();
  if (resp.$ref) resp = doc.components.responses[resp.$ref.split("/").pop()];
  return resp.content[type].schema;
}

async function check(method: string, path: string, res: Response): Promise<any> {
  const body = await res.json();
  validate(responseSchema(method, path, res.status), body);
  return body;
}

describe("openapi.yaml", () => {
  it("is the document the route declarations generate (run `npm run openapi` after changing them)", () => {
    expect(spec === openApiYaml(), "openapi.yaml differs from the generated document: run `npm run openapi`").toBe(true);
  });

  it("is OpenAPI 3.1 and documents every route the app serves", () => {
    expect(doc.openapi).toBe("3.1.0");
    const routes = app.routes.filter((r) => r.method !== "ALL").map((r) => [r.method.toLowerCase(), toOpenApiPath(r.path)] as const);
    expect(routes.length).toBeGreaterThanOrEqual(7);
    for (const [method, path] of routes) expect(doc.paths[path]?.[method], `${method} ${path}`).toBeDefined();
  });

  it("JSON responses and errors validate against their schemas", async () => {
    await check("GET", "/healthz", await call("/healthz", { tenant: null }));
    await check("GET", "/v1/models", await call("/v1/models"));
    await check("GET", "/v1/models/{id}", await call("/v1/models/lckv-tiny"));
    await check("GET", "/v1/models/{id}", await call("/v1/models/nope"));
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("hi")], prompt_cache_key: "oa-1" }));
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("hi")], n: 3 }));
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("hi")] }, { tenant: null }));
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("@overload")] }));
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("@crash")] }));
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("@hang")] })); // 504 upstream_timeout
    await check("POST", "/v1/chat/completions", await chat({ model: MODEL, messages: [user("x")], stream_options: { include_usage: true } }));
    await check("POST", "/v1/completions", await call("/v1/completions", { method: "POST", json: { model: MODEL, prompt: "x" } }));
    await check("POST", "/v1/completions", await call("/v1/completions", { method: "POST", body: "x", headers: { "content-type": "text/plain" } }));
    await check("GET", "/v1/sessions/{session_id}", await call("/v1/sessions/oa-1"));
    await check("GET", "/v1/sessions/{session_id}", await call("/v1/sessions/bad%01id"));
    await check("DELETE", "/v1/sessions/{session_id}", await call("/v1/sessions/oa-1", { method: "DELETE" }));
    await check("DELETE", "/v1/sessions/{session_id}", await call("/v1/sessions/oa-1", { method: "DELETE" }));
  });

  it("SSE chunks validate as ChatCompletionChunk / TextCompletionChunk", async () => {
    const chatSse = sseData(await (await chat({ model: MODEL, messages: [user("hi")], stream: true, stream_options: { include_usage: true } })).text());
    for (const d of chatSse.slice(0, -1)) validate({ $ref: "#/components/schemas/ChatCompletionChunk" }, JSON.parse(d));
    const textSse = sseData(await (await call("/v1/completions", { method: "POST", json: { model: MODEL, prompt: "x", stream: true } })).text());
    for (const d of textSse.slice(0, -1)) validate({ $ref: "#/components/schemas/TextCompletionChunk" }, JSON.parse(d));
    const failed = sseData(await (await chat({ model: MODEL, messages: [user("@fail")], stream: true })).text());
    validate({ $ref: "#/components/schemas/ErrorResponse" }, JSON.parse(failed.at(-1)!));
  });

  it("Responses and Conversations objects validate, the stream's responses and items too", async () => {
    const post = (path: string, json: unknown) => call(path, { method: "POST", json });
    const r = await check("POST", "/v1/responses", await post("/v1/responses", { model: MODEL, input: "hi", metadata: { a: "b" } }));
    await check("POST", "/v1/responses", await post("/v1/responses", { model: MODEL, input: "next", previous_response_id: r.id, max_output_tokens: 1 }));
    await check("POST", "/v1/responses", await post("/v1/responses", { model: MODEL, input: [{ type: "image" }] }));
    await check("GET", "/v1/responses/{response_id}", await call(`/v1/responses/${r.id}`));
    await check("GET", "/v1/responses/{response_id}/input_items", await call(`/v1/responses/${r.id}/input_items`));
    await check("DELETE", "/v1/responses/{response_id}", await call(`/v1/responses/${r.id}`, { method: "DELETE" }));
    await check("GET", "/v1/responses/{response_id}", await call(`/v1/responses/${r.id}`));
    const conv = await check("POST", "/v1/conversations", await post("/v1/conversations", { items: [user("hello")] }));
    const items = await check("GET", "/v1/conversations/{conversation_id}/items", await call(`/v1/conversations/${conv.id}/items`));
    await check("GET", "/v1/conversations/{conversation_id}/items/{item_id}", await call(`/v1/conversations/${conv.id}/items/${items.data[0].id}`));
    await check("POST", "/v1/conversations/{conversation_id}/items", await post(`/v1/conversations/${conv.id}/items`, { items: [user("more")] }));
    await check("POST", "/v1/conversations/{conversation_id}", await post(`/v1/conversations/${conv.id}`, { metadata: { x: "y" } }));
    await check("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}",
      await call(`/v1/conversations/${conv.id}/items/${items.data[0].id}`, { method: "DELETE" }));
    await check("DELETE", "/v1/conversations/{conversation_id}", await call(`/v1/conversations/${conv.id}`, { method: "DELETE" }));
    await check("GET", "/v1/conversations/{conversation_id}", await call(`/v1/conversations/${conv.id}`));
    for (const input of ["stream", "@fail"]) {
      const events = typedEvents(await (await post("/v1/responses", { model: MODEL, input, stream: true })).text());
      for (const ev of events) {
        if (ev.response) validate({ $ref: "#/components/schemas/Response" }, ev.response);
        if (ev.item) validate({ $ref: "#/components/schemas/OutputMessage" }, ev.item);
      }
    }
  });

  it("the validator is not vacuous: wrong shapes fail", () => {
    const v = (ref: string, x: unknown) =>
      new Validator({ $ref: `#/components/schemas/${ref}`, components: doc.components } as any, "2020-12").validate(x).valid;
    expect(v("ErrorResponse", { error: { message: "m", type: "invalid_request_error", param: null } })).toBe(false);
    expect(v("ChatCompletionChunk", { id: "chatcmpl-1", object: "chat.completion.chunk", created: 1, model: "m",
      choices: [{ index: 0, delta: { content: 1 }, logprobs: null, finish_reason: null }] })).toBe(false);
    expect(v("Usage", { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, prompt_tokens_details: {} })).toBe(false);
    expect(v("Session", { id: "x" })).toBe(false);
  });

  it("the request schemas are as strict as the server", () => {
    const ok = (ref: string, x: unknown) =>
      new Validator({ $ref: `#/components/schemas/${ref}`, components: doc.components } as any, "2020-12").validate(x).valid;
    const base = { model: MODEL, messages: [user("hi")] };
    expect(ok("ChatCompletionRequest", base)).toBe(true);
    expect(ok("ChatCompletionRequest", { ...base, model: "" })).toBe(false);
    expect(ok("ChatCompletionRequest", { ...base, stream_options: { include_usage: true } })).toBe(false);
    expect(ok("ChatCompletionRequest", { ...base, stream: true, stream_options: { include_usage: true } })).toBe(true);
    expect(ok("ChatCompletionRequest", { ...base, response_format: {} })).toBe(false);
    expect(ok("ChatCompletionRequest", { ...base, response_format: { type: "json_object" } })).toBe(false);
    expect(ok("ChatCompletionRequest", { ...base, n: 2 })).toBe(false);
    expect(ok("CompletionRequest", { model: MODEL, prompt: ["a", "b"] })).toBe(false);
  });

  it("request examples the tests send validate against the request schemas", () => {
    validate({ $ref: "#/components/schemas/ChatCompletionRequest" }, { model: MODEL, messages: [user("hi")], stream: true,
      stream_options: { include_usage: true }, prompt_cache_key: "s-1", max_completion_tokens: 5, stop: ["\n"], n: 1 });
    validate({ $ref: "#/components/schemas/CompletionRequest" }, { model: MODEL, prompt: ["x"], max_tokens: 3 });
  });
});
