// GET / DELETE /v1/sessions/{session_id}: a session's counters (never its contents), or its deletion.
// Scoped to the caller's tenant: another tenant's session id simply does not exist here (404).
import { createRoute } from "@hono/zod-openapi";
import { z } from "zod";
import { ApiError } from "../errors";
import { AUTHENTICATED, errorResponses } from "../openai/error-responses";
import { Session, SessionDeleted } from "../openai/response-schemas";
import { sessionIdSchema, sessionStub } from "../session/key";
import { OK_HEADERS } from "./headers";
import { router } from "./router";

const notFound = (id: string) => new ApiError(404, `No session '${id}'.`, { code: "session_not_found", param: "session_id" });

const params = z.object({ session_id: sessionIdSchema });

export const getSessionRoute = createRoute({
  method: "get",
  path: "/v1/sessions/{session_id}",
  tags: ["sessions"],
  operationId: "getSession",
  summary: "A session's counters (never its contents). Only the caller's own sessions exist.",
  request: { params },
  responses: {
    200: { description: "The session.", headers: OK_HEADERS, content: { "application/json": { schema: Session } } },
    ...errorResponses(...AUTHENTICATED, 400, 404),
  },
});

export const deleteSessionRoute = createRoute({
  method: "delete",
  path: "/v1/sessions/{session_id}",
  tags: ["sessions"],
  operationId: "deleteSession",
  summary: "Delete a session (its transcript and cache).",
  request: { params },
  responses: {
    200: { description: "Deleted.", headers: OK_HEADERS, content: { "application/json": { schema: SessionDeleted } } },
    ...errorResponses(...AUTHENTICATED, 400, 404, 409),
  },
});

export const sessions = router();

sessions.openapi(getSessionRoute, async (c) => {
  const id = c.req.valid("param").session_id;
  const info = await sessionStub(c.env, c.get("tenant"), id).info(id);
  if (!info) throw notFound(id);
  return c.json(info, 200);
});

sessions.openapi(deleteSessionRoute, async (c) => {
  const id = c.req.valid("param").session_id;
  const result = await sessionStub(c.env, c.get("tenant"), id).remove();
  if (result === "not_found") throw notFound(id);
  if (result === "busy") {
    throw new ApiError(409, "A turn of this session is in progress; delete it afterwards.", { code: "session_busy", shouldRetry: false });
  }
  return c.json({ id, object: "session.deleted" as const, deleted: true as const }, 200);
});
