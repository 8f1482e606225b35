// A router whose routes are declared with their request and response schemas (the schemas validate
// requests and openapi.yaml is generated from them). A validation failure becomes an OpenAI-style
// 400 naming the parameter.
import { OpenAPIHono } from "@hono/zod-openapi";
import type { AppEnv } from "../env";
import { issueToApiError } from "../openai/validate";

export function router(): OpenAPIHono<AppEnv> {
  return new OpenAPIHono<AppEnv>({
    defaultHook: (result) => {
      // the validator passes the input it checked as `data`
      if (!result.success) throw issueToApiError(result.error.issues[0]!, (result as { data?: unknown }).data);
    },
  });
}
