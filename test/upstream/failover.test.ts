// GPU_SERVICE_URL with several replicas, through the whole Worker: requests spread, a dead or frozen
// replica is skipped before any token went out, and a replica out of traffic comes back via /readyz.
// Each replica is a host name of the GPU double (its /__replica control sets it up, down or frozen).
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import worker from "../../src/index";
import { doubleLog, keyOf, MODEL, sseData, user } from "../helpers";

let n = 0;
/** Fresh replica host names per test: each URL list is a pool of its own. */
const hosts = (k: number) => { n++; return Array.from({ length: k }, (_, i) => `r${i}-${n}.replica.test`); };
const setReplica = (host: string, state: "up" | "down" | "frozen") =>
  fetch(`http://gpu.test/__replica?host=${host}&state=${state}`);

async function chatOn(replicas: string[], body: Record<string, unknown>, vars: Record<string, string> = {}): Promise<Response> {
  const e = { ...env, GPU_SERVICE_URL: replicas.map((h) => `http://${h}`).join(","), ...vars };
  return await worker.fetch(new Request("https://edge.test/v1/chat/completions", {
    method: "POST",
    headers: { authorization: `Bearer ${keyOf("tenant-a")}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, ...body }),
  }), e);
}
const servedBy = async (res: Response) => (await doubleLog(res.headers.get("x-request-id")!)).map((c) => c.host);

describe("replicas", () => {
  it("spread requests over the healthy replicas", async () => {
    const hs = hosts(2);
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const res = await chatOn(hs, { messages: [user(`spread ${i}`)] });
      expect(res.status).toBe(200);
      for (const h of await servedBy(res)) seen.add(h);
    }
    expect([...seen].sort()).toEqual([...hs].sort());
  });

  it("a dead replica is skipped and taken out: the request succeeds on another, later ones go there directly", async () => {
    const [a, b] = hosts(2) as [string, string];
    await setReplica(a, "down");
    for (let i = 0; i < 4; i++) {
      const res = await chatOn([a, b], { messages: [user(`dead ${i}`)] });
      expect(res.status).toBe(200);
      expect(await servedBy(res)).toEqual([b]);
    }
  });

  it("with every replica dead the answer is 503 upstream_unavailable with retry-after, quickly", async () => {
    const hs = hosts(2);
    for (const h of hs) await setReplica(h, "down");
    for (let i = 0; i < 2; i++) {
      const res = await chatOn(hs, { messages: [user("nobody home")] });
      expect(res.status).toBe(503);
      expect(((await res.json()) as any).error).toMatchObject({ code: "upstream_unavailable", type: "server_error" });
      expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(res.headers.get("x-should-retry")).toBeNull();
    }
  });

  it("a frozen replica costs a request the connect timeout, not the idle timeout", async () => {
    const [a, b] = hosts(2) as [string, string];
    await setReplica(a, "frozen");
    const t0 = Date.now();
    const responses = await Promise.all([0, 1].map((i) =>
      chatOn([a, b], { messages: [user(`frozen ${i}`)] }, { UPSTREAM_CONNECT_SECONDS: "1", UPSTREAM_IDLE_SECONDS: "60" })));
    for (const res of responses) {
      expect(res.status).toBe(200);
      expect(await servedBy(res)).toEqual([b]);
    }
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it("a replica out of traffic comes back once its readiness probe passes", async () => {
    const [a, b] = hosts(2) as [string, string];
    await setReplica(a, "down");
    expect(await servedBy(await chatOn([a, b], { messages: [user("while down")] }))).toEqual([b]);
    await setReplica(a, "up");
    await new Promise((r) => setTimeout(r, 1100)); // the first backoff is 1 s
    const served = new Set<string>();
    for (let i = 0; i < 6; i++) for (const h of await servedBy(await chatOn([a, b], { messages: [user(`back ${i}`)] }))) served.add(h);
    expect(served.has(a)).toBe(true);
  });

  it("a lone replica that is down: 503 meanwhile, served again after its backoff", async () => {
    const [a] = hosts(1) as [string];
    await setReplica(a, "down");
    expect((await chatOn([a], { messages: [user("one")] })).status).toBe(503);
    await setReplica(a, "up");
    expect((await chatOn([a], { messages: [user("two")] })).status).toBe(503); // still in its backoff
    await new Promise((r) => setTimeout(r, 1100));
    expect((await chatOn([a], { messages: [user("three")] })).status).toBe(200);
  });

  it("every attempt carries our request id to the service (X-Request-Id), the same on each replica tried", async () => {
    const [a, b] = hosts(2) as [string, string];
    const res = await chatOn([a, b], { messages: [user("@crash")] });
    const rid = res.headers.get("x-request-id")!;
    const calls = await doubleLog(rid);
    expect(calls.map((c) => c.x_request_id)).toEqual([rid, rid]);
    expect(calls.map((c) => c.host).sort()).toEqual([a, b].sort());
  });

  it("the request's own errors are not retried elsewhere", async () => {
    const hs = hosts(2);
    const res = await chatOn(hs, { messages: [user("@ctx")] });
    expect(res.status).toBe(400);
    expect(await servedBy(res)).toHaveLength(1);
  });

  it("a replica that fails after it started the reply is not retried (no duplicated tokens)", async () => {
    const hs = hosts(2);
    const res = await chatOn(hs, { messages: [user("@reset mid-reply")], stream: true });
    expect(res.status).toBe(200);
    const events = sseData(await res.text());
    expect(JSON.parse(events.at(-1)!).error).toMatchObject({ code: "upstream_unavailable" });
    expect(await servedBy(res)).toHaveLength(1);
  });

  it("a replica answering 5xx is retried on another; the overloaded one too", async () => {
    const hs = hosts(2);
    const crash = await chatOn(hs, { messages: [user("@crash")] });
    expect(crash.status).toBe(502); // both replicas of the double crash on this text
    expect(await servedBy(crash)).toHaveLength(2);
    const busy = await chatOn(hs, { messages: [user("@overload")] });
    expect(busy.status).toBe(503);
    expect(((await busy.json()) as any).error.code).toBe("overloaded");
    expect(await servedBy(busy)).toHaveLength(2);
  });
});
