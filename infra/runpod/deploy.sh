#!/usr/bin/env bash
# Create the RunPod template and serverless endpoint from template.json / endpoint.json (REST API v1).
# Needs RUNPOD_API_KEY and IMAGE (the pushed image reference) in the environment; prints the endpoint id.
# The endpoint must be of type "Load Balancer" (console: Serverless > New Endpoint > Endpoint Type); if
# your API version takes no type field, switch it in the console once after this script runs.
set -euo pipefail
: "${RUNPOD_API_KEY:?set RUNPOD_API_KEY}" "${IMAGE:?set IMAGE, e.g. ghcr.io/you/lckv-gpu-service:1.0}"
here="$(cd "$(dirname "$0")" && pwd)"
api=https://rest.runpod.io/v1
auth=(-H "Authorization: Bearer ${RUNPOD_API_KEY}" -H "Content-Type: application/json")
tpl=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["imageName"]=sys.argv[2]; print(json.dumps(d))' \
      "$here/template.json" "$IMAGE")
template_id=$(curl -fsS "${auth[@]}" -X POST "$api/templates" -d "$tpl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
ep=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["templateId"]=sys.argv[2]; print(json.dumps(d))' \
     "$here/endpoint.json" "$template_id")
curl -fsS "${auth[@]}" -X POST "$api/endpoints" -d "$ep" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
