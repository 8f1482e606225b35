// Assembles the API: middleware order, routes (each declared with its schemas), the 404/405
// answers and error rendering; and the OpenAPI document generated from the routes.
import { OpenAPIHono } from "@hono/zod-openapi";
import type { AppEnv } from "./env";
import { ApiError, clip } from "./errors";
import { auth } from "./middleware/auth";
import { onError } from "./middleware/on-error";
import { ChatCompletionChunk, TextCompletionChunk } from "./openai/response-schemas";
import { rateLimit } from "./middleware/rate-limit";
import { requestLog } from "./middleware/request-log";
import { chat } from "./routes/chat";
import { completions } from "./routes/completions";
import { conversations } from "./routes/conversations";
import { health } from "./routes/health";
import { models } from "./routes/models";
import { responses } from "./routes/responses";
import { sessions } from "./routes/sessions";

export const app = new OpenAPIHono<AppEnv>();

app.use("*", requestLog());
app.route("/", health);
app.use("/v1/*", auth(), rateLimit());
app.route("/", chat);
app.route("/", completions);
app.route("/", models);
app.route("/", sessions);
app.route("/", responses);
app.route("/", conversations);

const registry = app.openAPIRegistry;
// the SSE chunks' schemas (a stream's payloads, not a response body of their own)
registry.register("ChatCompletionChunk", ChatCompletionChunk);
registry.register("TextCompletionChunk", TextCompletionChunk);
registry.registerComponent("securitySchemes", "bearer", {
  type: "http",
  scheme: "bearer",
  description: "An API key; the server stores only its SHA-256 and the tenant it belongs to.",
});
registry.registerComponent("headers", "RequestId", {
  description: "Unique id of this request (also in the server's logs).",
  schema: { type: "string", pattern: "^req_[0-9a-f]{32}$" },
});
registry.registerComponent("headers", "SessionIdEcho", {
  description: "The session this turn belonged to (echo of prompt_cache_key / x-session-id); absent when a header cannot carry "
    + "the id exactly (not printable ASCII, or leading/trailing spaces).",
  schema: { type: "string", pattern: "^[\\x20-\\x7e]{1,256}$" },
});
registry.registerComponent("headers", "RetryAfter", {
  description: "Seconds to wait before retrying.",
  schema: { type: "string", pattern: "^[0-9]+$" },
});
registry.registerComponent("headers", "ShouldRetry", {
  description: '"false" on errors that retrying cannot fix (the OpenAI SDK then does not retry).',
  schema: { type: "string", const: "false" },
});
registry.registerComponent("headers", "RateLimitLimit", {
  description: "The tenant's requests per minute.",
  schema: { type: "string", pattern: "^[0-9]+$" },
});
registry.registerComponent("headers", "RateLimitRemaining", {
  description: "Requests left in the tenant's bucket.",
  schema: { type: "string", pattern: "^[0-9]+$" },
});
registry.registerComponent("headers", "RateLimitReset", {
  description: "Time until the bucket is full again, e.g. \"6s\".",
  schema: { type: "string", pattern: "^[0-9]+s$" },
});

/** The methods each declared path answers, from the route declarations (a path with any other is a 405). */
const allowed: [RegExp, string][] = (() => {
  const byPath = new Map<string, string[]>();
  for (const def of registry.definitions) {
    if (def.type !== "route") continue;
    byPath.set(def.route.path, [...(byPath.get(def.route.path) ?? []), def.route.method.toUpperCase()]);
  }
  return [...byPath].map(([path, methods]) => {
    const re = new RegExp(`^${path.replace(/\{[^}]+\}/g, "[^/]+")}$`);
    return [re, methods.join(", ")];
  });
})();

app.notFound((c) => {
  const allow = allowed.find(([re]) => re.test(c.req.path))?.[1];
  if (allow) {
    const res = new ApiError(405, `Method ${c.req.method} is not allowed here; use ${allow}.`, { code: "method_not_allowed" }).toResponse();
    res.headers.set("allow", allow);
    return res;
  }
  return new ApiError(404, `Unknown route: ${c.req.method} ${clip(c.req.path, 200)}`, { code: "unknown_route" }).toResponse();
});
app.onError(onError);

const DESCRIPTION = `OpenAI-compatible chat and text completions at the edge, with server-side sessions.

A subset of OpenAI's API (unmodified OpenAI clients work) served by Layer-Condensed KV Cache
models. Conversations continue across requests through sessions: pass \`prompt_cache_key\`
(OpenAI's own field) or an \`x-session-id\` header, or through the Responses API
(\`previous_response_id\`, \`conversation\`) and the Conversations API, whose chains live in the same
session objects. See docs/edge.md for the field table
(accepted / ignored / rejected), the session message-matching rule, limits and errors.

Every response carries \`x-request-id\`. Errors are \`{"error": {message, type, param, code}}\`.
Streaming responses are Server-Sent Events: \`data: <chunk JSON>\` events, then \`data: [DONE]\`;
a failure after the stream started is sent as one \`data: {"error": {...}}\` event, then the
stream closes without \`[DONE]\`. A known path asked with another method is 405
(code method_not_allowed) with \`Allow\`; an unknown path is 404 (code unknown_route).
`;

/** The public API's OpenAPI document (openapi.yaml is this, written by `npm run openapi`). */
export function openApiDocument() {
  return app.getOpenAPI31Document({
    openapi: "3.1.0",
    info: {
      title: "lckv-edge API",
      version: "1.0.0",
      description: DESCRIPTION,
    },
    servers: [{ url: "http://127.0.0.1:8787", description: "local (`npm start`)" }],
    security: [{ bearer: [] }],
    tags: [{ name: "generation" }, { name: "responses" }, { name: "conversations" }, { name: "models" }, { name: "sessions" }, { name: "health" }],
  });
}
