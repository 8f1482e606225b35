// GET /v1/responses/{id}?stream=true: a stored response's stream events replayed (the live
// stream's events for that outcome, its text in one delta), starting_after, bad query values,
// the same 404s as the JSON GET, and no call to the GPU service.
import { runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { chainKeyOf, chainStub } from "../../src/chain/ids";
import { call, doubleLog, MODEL, typedEvents } from "../helpers";

const create = (json: Record<string, unknown>, tenant = "tenant-a") =>
  call("/v1/responses", { method: "POST", json: { model: MODEL, temperature: 0, ...json }, tenant });
const replay = (id: string, query = "stream=true", tenant = "tenant-a") => call(`/v1/responses/${id}?${query}`, { tenant });

async function liveEvents(json: Record<string, unknown>): Promise<any[]> {
  const res = await create({ ...json, stream: true });
  expect(res.status).toBe(200);
  return typedEvents(await res.text());
}

async function replayed(id: string, query?: string): Promise<any[]> {
  const res = await replay(id, query);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
  expect(await doubleLog(res.headers.get("x-request-id")!)).toEqual([]); // the GPU service is not called
  return typedEvents(await res.text());
}

const HEAD = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
const TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done"];

/** The live events with their deltas folded into one, renumbered: what a replay sends. */
function folded(live: any[]): any[] {
  const deltas = live.filter((e) => e.type === "response.output_text.delta");
  const one = deltas.length ? [{ ...deltas[0], delta: deltas.map((e) => e.delta).join("") }] : [];
  return [...live.slice(0, 4), ...one, ...live.slice(4 + deltas.length)].map((e, i) => ({ ...e, sequence_number: i }));
}

describe("replaying a stored response as SSE", () => {
  it("completed: the live stream's events for that outcome, the text in one delta, numbered 0, 1, 2…", async () => {
    const live = await liveEvents({ input: "replay me" });
    expect(live.filter((e) => e.type === "response.output_text.delta").length).toBeGreaterThan(1);
    const id = live[0].response.id;
    const events = await replayed(id);
    expect(events.map((e) => e.type)).toEqual([...HEAD, "response.output_text.delta", ...TAIL, "response.completed"]);
    expect(events.map((e) => e.sequence_number)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(events).toEqual(folded(live));
    const json = (await (await call(`/v1/responses/${id}`)).json()) as any;
    expect(events.at(-1).response).toEqual(json);
    expect(events[4].delta).toBe(json.output[0].content[0].text);
  });

  it("incomplete (cut at max_output_tokens): ends in response.incomplete, as the live stream did", async () => {
    const live = await liveEvents({ input: "cut me short", max_output_tokens: 2 });
    expect(live.at(-1).type).toBe("response.incomplete");
    const events = await replayed(live[0].response.id, "stream=true&include_obfuscation=false");
    expect(events).toEqual(folded(live));
    expect(events.at(-1).response).toMatchObject({ status: "incomplete", incomplete_details: { reason: "max_output_tokens" } });
    expect(events.at(-2).item.status).toBe("incomplete");
  });

  it("starting_after=N sends only the events after sequence_number N; stream=false or absent is the JSON object", async () => {
    const res = await create({ input: "resume me" });
    const body = (await res.json()) as any;
    const all = await replayed(body.id);
    expect((await replayed(body.id, "stream=true&starting_after=0")).map((e) => e.sequence_number)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(await replayed(body.id, "stream=true&starting_after=4")).toEqual(all.slice(5));
    expect(await replayed(body.id, "stream=true&starting_after=8")).toEqual([]);
    expect(await replayed(body.id, "stream=true&starting_after=1000")).toEqual([]);
    for (const query of ["stream=false", "", "stream=false&starting_after=3"]) {
      const got = await replay(body.id, query);
      expect(got.headers.get("content-type")).toMatch(/^application\/json/);
      expect(await got.json()).toEqual(body);
    }
  });

  it("a bad stream, starting_after or include_obfuscation is a 400 naming it", async () => {
    const { id } = (await (await create({ input: "bad queries" })).json()) as any;
    const cases: [string, string][] = [
      ["stream=yes", "stream"], ["stream=1", "stream"], ["stream=", "stream"], ["stream=TRUE", "stream"],
      ["stream=true&starting_after=-1", "starting_after"], ["stream=true&starting_after=1.5", "starting_after"],
      ["stream=true&starting_after=abc", "starting_after"], ["stream=true&starting_after=", "starting_after"],
      ["stream=true&starting_after=0x10", "starting_after"], ["stream=true&starting_after=1e2", "starting_after"],
      ["stream=true&starting_after=99999999999999999999", "starting_after"], ["stream=true&include_obfuscation=no", "include_obfuscation"],
    ];
    for (const [query, param] of cases) {
      const res = await replay(id, query);
      const err = ((await res.json()) as any).error;
      expect(res.status, query).toBe(400);
      expect(err, query).toMatchObject({ type: "invalid_request_error", param, code: "invalid_value" });
    }
  });

  it("another tenant's, a deleted, an unstored, a missing or an expired response is the same 404", async () => {
    const stored = (await (await create({ input: "mine" })).json()) as any;
    const other = await replay(stored.id, "stream=true", "tenant-b");
    expect(other.status).toBe(404);
    const notFound = ((await other.json()) as any).error;
    expect(notFound).toMatchObject({ type: "invalid_request_error", code: "response_not_found", param: "response_id" });
    const unstored = (await (await create({ input: "forget me", store: false })).json()) as any;
    const deleted = (await (await create({ input: "delete me" })).json()) as any;
    expect((await call(`/v1/responses/${deleted.id}`, { method: "DELETE" })).status).toBe(200);
    const expired = (await (await create({ input: "expire me" })).json()) as any;
    expect(await runDurableObjectAlarm(chainStub(env, "tenant-a", chainKeyOf(expired.id)!))).toBe(true);
    for (const id of [unstored.id, deleted.id, expired.id, `resp_${"0".repeat(48)}`]) {
      const res = await replay(id);
      expect(res.status, id).toBe(404);
      expect(((await res.json()) as any).error, id).toMatchObject({ ...notFound, message: `Response with id '${id}' not found.` });
    }
    expect((await replay(stored.id)).status).toBe(200); // the owner still gets it
  });
});
