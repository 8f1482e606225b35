// GET /v1/models and /v1/models/{id}, from the GPU service's model list (briefly cached).
import { createRoute } from "@hono/zod-openapi";
import { z } from "zod";
import { loadConfig } from "../config";
import { AUTHENTICATED, errorResponses } from "../openai/error-responses";
import { Model, ModelList, type ModelBody } from "../openai/response-schemas";
import { getModels, requireModel } from "../upstream/models";
import type { ModelInfo } from "../upstream/types";
import { OK_HEADERS } from "./headers";
import { router } from "./router";

const toModel = (m: ModelInfo): ModelBody => ({
  id: m.id,
  object: "model",
  created: m.created,
  owned_by: "lckv-edge",
  context_window: m.context_window,
  max_prompt_tokens: m.max_prompt_tokens,
});

export const listModelsRoute = createRoute({
  method: "get",
  path: "/v1/models",
  tags: ["models"],
  operationId: "listModels",
  summary: "List models.",
  responses: {
    200: { description: "The models the GPU service serves.", headers: OK_HEADERS, content: { "application/json": { schema: ModelList } } },
    ...errorResponses(...AUTHENTICATED, 502, 503, 504),
  },
});

// Model ids may contain '/', so the app's path takes the rest of the URL (:id{.+}).
export const retrieveModelRoute = createRoute({
  method: "get",
  path: "/v1/models/{id}",
  tags: ["models"],
  operationId: "retrieveModel",
  summary: "Retrieve a model.",
  request: { params: z.object({ id: z.string() }) },
  responses: {
    200: { description: "The model.", headers: OK_HEADERS, content: { "application/json": { schema: Model } } },
    ...errorResponses(...AUTHENTICATED, 404, 502, 503, 504),
  },
});

export const models = router();

models.openapi(listModelsRoute, async (c) => {
  const list = await getModels(loadConfig(c.env));
  return c.json({ object: "list" as const, data: list.map(toModel) }, 200);
});

models.openAPIRegistry.registerPath(retrieveModelRoute);
models.get("/v1/models/:id{.+}", async (c) => {
  return c.json(toModel(await requireModel(loadConfig(c.env), c.req.param("id"), "id")), 200);
});
