"""Schemathesis hooks for test/e2e/contract.test.mjs: before a request is sent, a body's `model`,
when it is a valid model name, becomes the model the stack serves (LCKV_CONTRACT_MODEL), so valid
requests reach the GPU service and their 200 responses (JSON and SSE) are checked too. Anything
else stays as generated (an unknown model would only ever test the 404), and a valid name stays
valid, so a case's positive/negative kind does not change."""
import os

import schemathesis

MODEL = os.environ["LCKV_CONTRACT_MODEL"]


@schemathesis.hook
def before_call(context, case, **kwargs):
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str) and 1 <= len(body["model"]) <= 256:
        case.body = {**body, "model": MODEL}

