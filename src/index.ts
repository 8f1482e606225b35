// Assembles the Worker: middleware order, routes, error rendering, and the Durable Object exports.
import { Hono } from "hono";
import type { AppEnv } from "./env";
import { ApiError, clip } from "./errors";
import { auth } from "./middleware/auth";
import { onError } from "./middleware/on-error";
import { rateLimit } from "./middleware/rate-limit";
import { requestLog } from "./middleware/request-log";
import { chat } from "./routes/chat";
import { completions } from "./routes/completions";
import { models } from "./routes/models";
import { sessions } from "./routes/sessions";

const app = new Hono<AppEnv>();

app.use("*", requestLog());
app.get("/healthz", (c) => c.json({ status: "ok" }));
app.use("/v1/*", auth(), rateLimit());
app.route("/", chat);
app.route("/", completions);
app.route("/", models);
app.route("/", sessions);

// A known path with another method is 405 with Allow (a client using the wrong verb learns which).
const METHODS: [RegExp, string][] = [
  [/^\/v1\/(chat\/)?completions$/, "POST"],
  [/^\/v1\/models(\/[^/]+)?$/, "GET"],
  [/^\/v1\/sessions\/[^/]+$/, "GET, DELETE"],
];

app.notFound((c) => {
  const allow = METHODS.find(([re]) => re.test(c.req.path))?.[1];
  if (allow) {
    const res = new ApiError(405, `Method ${c.req.method} is not allowed here; use ${allow}.`, { code: "method_not_allowed" }).toResponse();
    res.headers.set("allow", allow);
    return res;
  }
  return new ApiError(404, `Unknown route: ${c.req.method} ${clip(c.req.path, 200)}`, { code: "unknown_route" }).toResponse();
});
app.onError(onError);

export default app;
export { SessionObject } from "./session/object";
export { RateLimiter } from "./ratelimit/object";
