// The model list comes from the GPU service and is cached briefly in isolate memory, so routing a
// request (and rejecting an unknown model with 404) rarely costs a round trip.
import { ApiError, clip } from "../errors";
import type { Config } from "../config";
import { listModelsBalanced } from "./balanced";
import { toPublicError } from "./errors";
import type { ModelInfo } from "./types";

let cached: { urls: string; at: number; models: ModelInfo[] } | null = null;

export async function getModels(cfg: Config): Promise<ModelInfo[]> {
  const now = Date.now();
  const urls = cfg.upstream.urls.join(" ");
  if (cached && cached.urls === urls && now - cached.at < cfg.modelsCacheSeconds * 1000) return cached.models;
  try {
    const models = await listModelsBalanced(cfg.upstream);
    cached = { urls, at: now, models };
    return models;
  } catch (err) {
    throw toPublicError(err);
  }
}

export async function requireModel(cfg: Config, id: string, param = "model"): Promise<ModelInfo> {
  const model = (await getModels(cfg)).find((m) => m.id === id);
  if (!model) {
    throw new ApiError(404, `The model '${clip(id, 100)}' does not exist or you do not have access to it.`, { code: "model_not_found", param });
  }
  return model;
}
