// GET /v1/models and /v1/models/{id}, from the GPU service's model list (briefly cached).
import { Hono } from "hono";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { getModels, requireModel } from "../upstream/models";
import type { ModelInfo } from "../upstream/types";

const toModel = (m: ModelInfo) => ({
  id: m.id,
  object: "model" as const,
  created: m.created,
  owned_by: "lckv-edge",
  context_window: m.context_window,
  max_prompt_tokens: m.max_prompt_tokens,
});

export const models = new Hono<AppEnv>();

models.get("/v1/models", async (c) => {
  const list = await getModels(loadConfig(c.env));
  return c.json({ object: "list", data: list.map(toModel) });
});

models.get("/v1/models/:id{.+}", async (c) => {
  return c.json(toModel(await requireModel(loadConfig(c.env), c.req.param("id"), "id")));
});
