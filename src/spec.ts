// openapi.yaml's text: the document generated from the route declarations, as YAML. Shared by
// scripts/openapi.mjs (writes the file) and test/openapi.test.ts (fails when the file differs).
import { stringify } from "yaml";
import { openApiDocument } from "./app";

export function openApiYaml(): string {
  return "# Generated from the route declarations in src/ by `npm run openapi`; do not edit.\n"
    + stringify(openApiDocument(), { lineWidth: 0, aliasDuplicateObjects: false });
}
