// GET /healthz: liveness, without authentication.
import { createRoute } from "@hono/zod-openapi";
import { Health } from "../openai/response-schemas";
import { router } from "./router";

export const healthRoute = createRoute({
  method: "get",
  path: "/healthz",
  tags: ["health"],
  operationId: "healthz",
  summary: "Liveness (no authentication).",
  security: [],
  responses: {
    200: {
      description: "The Worker is running.",
      headers: { "x-request-id": { $ref: "#/components/headers/RequestId" } },
      content: { "application/json": { schema: Health } },
    },
  },
});

export const health = router();

health.openapi(healthRoute, (c) => c.json({ status: "ok" as const }, 200));
