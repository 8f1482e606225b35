// The Worker's entry: the API app and the Durable Object classes.
import { app } from "./app";

export default app;
export { SessionObject } from "./session/object";
export { RateLimiter } from "./ratelimit/object";
