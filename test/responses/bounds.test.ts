// Responses under contention and at the bounds: concurrent continuations of one response,
// truncation disabled/auto on a rebuild that does not fit, and retention (the chain's alarm).
import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { chainKeyOf, chainStub } from "../../src/chain/ids";
import { call, MODEL } from "../helpers";

const create = (json: Record<string, unknown>) =>
  call("/v1/responses", { method: "POST", json: { model: MODEL, temperature: 0, ...json } });
const ok = async (json: Record<string, unknown>) => {
  const res = await create(json);
  const body = (await res.json()) as any;
  expect(res.status, JSON.stringify(body)).toBe(200);
  return body;
};

describe("responses at the bounds", () => {
  it("a second continuation while the first runs is a typed 409; the chain is unchanged by it", async () => {
    const a = await ok({ input: "root" });
    const first = await create({ input: "@drip long one", previous_response_id: a.id, stream: true, max_output_tokens: 200 });
    const reader = first.body!.getReader();
    await reader.read(); // the first turn is running
    const second = await create({ input: "second", previous_response_id: a.id });
    expect(second.status).toBe(409);
    expect(second.headers.get("x-should-retry")).toBe("false");
    expect(((await second.json()) as any).error.code).toBe("session_busy");
    await reader.cancel(); // the first is cancelled: nothing committed
    const third = await ok({ input: "third", previous_response_id: a.id });
    expect(third.usage.input_tokens_details.cached_tokens).toBeGreaterThan(0); // a was still the latest: its cache
  });

  it("truncation disabled: a fork whose history does not fit is a 400 on input; auto drops the oldest", async () => {
    const a = await ok({ input: "an opening message that is long enough to matter here" });
    await ok({ input: "the chain moves on", previous_response_id: a.id });
    const disabled = await create({ input: "@limit=60 fork", previous_response_id: a.id });
    expect(disabled.status).toBe(400);
    expect(((await disabled.json()) as any).error).toMatchObject({ code: "context_length_exceeded", param: "input" });
    const auto = await ok({ input: "@limit=60 fork", previous_response_id: a.id, truncation: "auto" });
    expect(auto.status).toBe("completed");
    expect(auto.truncation).toBe("auto");
  });

  it("a stored chain expires RESPONSE_TTL_SECONDS after its last turn", async () => {
    const a = await ok({ input: "keep me a while" });
    const stub = chainStub(env, "tenant-a", chainKeyOf(a.id)!);
    const alarm = await runInDurableObject(stub, (_o, state) => state.storage.getAlarm());
    expect(alarm).toBeGreaterThan(Date.now() + (Number(env.RESPONSE_TTL_SECONDS) - 60) * 1000);
    expect(await runDurableObjectAlarm(stub)).toBe(true);
    expect((await call(`/v1/responses/${a.id}`)).status).toBe(404);
  });
});
