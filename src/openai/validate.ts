// Schema validation failures as OpenAI-style errors that name the offending parameter. The routes'
// validators (routes/router.ts) report through here.
import type { z } from "zod";
import { ApiError } from "../errors";
import { SUPPORTED_ONLY } from "./schemas";

/** ["messages", 0, "role"] -> "messages[0].role" */
export function paramPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v: unknown = input;
  for (const seg of path) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<PropertyKey, unknown>)[seg];
  }
  return v;
}

export function issueToApiError(issue: z.core.$ZodIssue, input: unknown): ApiError {
  const field = issue.code === "unrecognized_keys" ? (issue.path.length > 0 ? issue.path[0] : undefined) : issue.path[0];
  const supported = typeof field === "string" ? SUPPORTED_ONLY.get(field) : undefined;
  if (supported !== undefined && valueAt(input, issue.path) !== undefined) {
    const param = paramPath(issue.path);
    return new ApiError(400, `Unsupported value for '${param}': this API supports only ${supported}.`, { param, code: "unsupported_parameter" });
  }
  if (issue.code === "unrecognized_keys") {
    const param = paramPath([...issue.path, issue.keys[0]!]);
    return new ApiError(400, `Unrecognized request argument supplied: '${param}'.`, { param, code: "unknown_parameter" });
  }
  const param = paramPath(issue.path);
  // a field typed as a union (prompt, content, stop) reports a missing value as invalid_union
  if ((issue.code === "invalid_type" || issue.code === "invalid_union") && valueAt(input, issue.path) === undefined) {
    return new ApiError(400, `Missing required parameter: '${param}'.`, { param, code: "missing_required_parameter" });
  }
  return new ApiError(400, `Invalid value for '${param || "body"}': ${issue.message}.`, { param: param || null, code: "invalid_value" });
}
