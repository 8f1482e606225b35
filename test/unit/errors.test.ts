// toApiError: anything thrown becomes an OpenAI-shaped ApiError; Hono's HTTPException (what its
// built-in middleware and validators throw) keeps its status, a 5xx's message never leaks.
import { HTTPException } from "hono/http-exception";
import { describe, expect, it } from "vitest";
import { ApiError, toApiError } from "../../src/errors";

describe("toApiError", () => {
  it("keeps an ApiError as it is", () => {
    const e = new ApiError(409, "busy", { code: "session_busy" });
    expect(toApiError(e)).toBe(e);
  });

  it("unwraps Hono's HTTPException with its status", async () => {
    const bad = toApiError(new HTTPException(400, { message: "Malformed JSON in request body" }));
    expect(bad.toBody()).toEqual({ error: { message: "Malformed JSON in request body", type: "invalid_request_error", param: null, code: "invalid_request" } });
    const big = toApiError(new HTTPException(413));
    expect(big).toMatchObject({ status: 413, code: "request_too_large", type: "invalid_request_error" });
    const media = toApiError(new HTTPException(415, { message: "Unsupported Media Type" }));
    expect(media).toMatchObject({ status: 415, message: "Unsupported Media Type" });
    const internal = toApiError(new HTTPException(503, { message: "details of our internals" }));
    expect(internal).toMatchObject({ status: 503, message: "Internal server error.", type: "server_error" });
    const res = internal.toResponse();
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ error: { message: "Internal server error.", type: "server_error", param: null, code: null } });
  });

  it("anything else is a sanitized 500", () => {
    expect(toApiError(new TypeError("x is undefined")).toBody().error).toEqual({ message: "Internal server error.",
      type: "server_error", param: null, code: "internal_error" });
  });
});
