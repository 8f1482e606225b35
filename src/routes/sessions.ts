// GET / DELETE /v1/sessions/{id}: a session's counters (never its contents), or its deletion.
// Scoped to the caller's tenant: another tenant's session id simply does not exist here (404).
import { Hono } from "hono";
import type { AppEnv } from "../env";
import { ApiError } from "../errors";
import { sessionStub, validateSessionId } from "../session/key";

const notFound = (id: string) => new ApiError(404, `No session '${id}'.`, { code: "session_not_found", param: "session_id" });

export const sessions = new Hono<AppEnv>();

sessions.get("/v1/sessions/:id", async (c) => {
  const id = validateSessionId(c.req.param("id"), "session_id");
  const info = await sessionStub(c.env, c.get("tenant"), id).info(id);
  if (!info) throw notFound(id);
  return c.json(info);
});

sessions.delete("/v1/sessions/:id", async (c) => {
  const id = validateSessionId(c.req.param("id"), "session_id");
  const result = await sessionStub(c.env, c.get("tenant"), id).remove();
  if (result === "not_found") throw notFound(id);
  if (result === "busy") {
    throw new ApiError(409, "A turn of this session is in progress; delete it afterwards.", { code: "session_busy", shouldRetry: false });
  }
  return c.json({ id, object: "session.deleted", deleted: true });
});
