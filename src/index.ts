// Assembles the Worker: middleware order, routes, error rendering, and the Durable Object exports.
import { Hono } from "hono";
import type { AppEnv } from "./env";
import { ApiError, onError, renderError } from "./errors";
import { auth } from "./middleware/auth";
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

app.notFound((c) => renderError(c, new ApiError(404, `Unknown route: ${c.req.method} ${c.req.path}`, { code: "unknown_route" })));
app.onError(onError);

export default app;
export { SessionObject } from "./session/object";
export { RateLimiter } from "./ratelimit/object";
