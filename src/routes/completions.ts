// POST /v1/completions (legacy text completions): always stateless, no session.
import { Hono } from "hono";
import { loadConfig } from "../config";
import type { AppEnv } from "../env";
import { statelessTurn } from "../generation";
import { logEvent } from "../log";
import { readJsonBody } from "../middleware/json-body";
import { collect } from "../openai/collect";
import { normalizeCompletion } from "../openai/normalize";
import { newId, textCompletion } from "../openai/responses";
import { completionRequestSchema } from "../openai/schemas";
import { sseResponse } from "../openai/sse";
import { parseWith } from "../openai/validate";
import { requireModel } from "../upstream/models";

export const completions = new Hono<AppEnv>();

completions.post("/v1/completions", async (c) => {
  const req = normalizeCompletion(parseWith(completionRequestSchema, await readJsonBody(c)));
  await requireModel(loadConfig(c.env), req.model);
  const turn = await statelessTurn(c, { model: req.model, kind: "completion", prompt: req.prompt, sampling: req.sampling });
  const idn = { id: newId("cmpl"), created: turn.start.created, model: req.model };
  if (req.stream) {
    return sseResponse(c, turn, "text", idn, req.includeUsage, (outcome) =>
      logEvent("info", { event: "stream_end", request_id: c.get("requestId"), outcome }));
  }
  const { text, done } = await collect(turn);
  return c.json(textCompletion(idn, text, done.finish_reason, done.usage));
});
