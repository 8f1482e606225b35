// The playground in a real headless Chromium (test/browser/chromium.mjs finds it; playwright-core drives it):
// API chat with streaming and session reuse, plain-words errors, and the in-browser ONNX engine giving
// the PyTorch model's greedy answers. Run through test/browser/run.mjs (it builds the assets and the
// expected answers); env as documented there.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { LOCAL_CASE } from "./cases.mjs";
import { findChromium } from "./chromium.mjs";

const ROOT = resolve(fileURLToPath(import.meta.url), "..", "..", "..");
const URL_ = process.env.PLAYGROUND_URL ?? "http://127.0.0.1:8787";
const KEY = process.env.LCKV_API_KEY ?? "sk-lckv-dev";
const PARTS = new Set((process.env.PLAYGROUND_PARTS ?? "api,local").split(","));
const CHROMIUM = findChromium();
// the README's picture is refreshed only on request (PLAYGROUND_SCREENSHOT=docs/playground.png), so a
// test run leaves tracked files alone
const SCREENSHOT = resolve(ROOT, process.env.PLAYGROUND_SCREENSHOT ?? join(".e2e", "playground.png"));
// generous: the first load of the 51 MiB ONNX model on a busy 2-core CI machine can take minutes
const TURN_TIMEOUT = 300_000;

async function loadChromium() {
  const base = process.env.PLAYGROUND_NODE_MODULES ? join(process.env.PLAYGROUND_NODE_MODULES, "..", "noop.js") : join(ROOT, "package.json");
  const mod = await import(pathToFileURL(createRequire(base).resolve("playwright-core")).href);
  return (mod.chromium ?? mod.default.chromium);
}

let context, page, profile;
const consoleErrors = [];

before(async () => {
  const chromium = await loadChromium();
  profile = mkdtempSync(join(tmpdir(), "lckv-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // --disable-dev-shm-usage: containers often give /dev/shm 64 MiB, less than the model's 51 MiB
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
    viewport: { width: 1280, height: 860 },
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  page.on("crash", () => consoleErrors.push("the page crashed"));
  await page.goto(URL_, { waitUntil: "load" });
  await page.waitForSelector("#composer");
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** Sends a message and waits for the reply; returns its text, stats dataset and streamed lengths. */
async function sendAndWait(text, p = page) {
  const page = p;
  const before = await page.locator("#messages li.assistant[data-done]").count();
  // record every length the reply text passes through, to see it arrive in pieces
  await page.evaluate(() => {
    window.__lengths = [];
    window.__obs?.disconnect();
    window.__obs = new MutationObserver(() => {
      const li = [...document.querySelectorAll("#messages li.assistant")].at(-1);
      if (li) window.__lengths.push(li.querySelector(".text").textContent.length);
    });
    window.__obs.observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
  });
  await page.fill("#prompt", text);
  await page.click("#send");
  await page.waitForFunction(
    ([n]) => document.querySelectorAll("#messages li.assistant[data-done]").length > n || !document.getElementById("notice").hidden,
    [before], { timeout: TURN_TIMEOUT },
  );
  const notice = await page.locator("#notice").textContent();
  assert.equal(await page.locator("#notice").isHidden(), true, `the page reported: ${notice}`);
  const li = page.locator("#messages li.assistant[data-done]").last();
  return {
    text: await li.locator(".text").textContent(),
    stats: await li.locator("[data-testid=turn-stats]").evaluate((el) => ({ ...el.dataset, line: el.textContent })),
    tokenIds: await li.evaluate((el) => (el.dataset.tokenIds ? JSON.parse(el.dataset.tokenIds) : null)),
    lengths: await page.evaluate(() => window.__lengths),
  };
}

describe("playground against the API", { skip: !PARTS.has("api") && "PLAYGROUND_PARTS excludes api" }, () => {
  test("two streamed turns; the second reuses the session's cache", async () => {
    await page.fill("#api-key", KEY);
    await page.dispatchEvent("#api-key", "change");
    await page.fill("#max-tokens", "32");
    await page.dispatchEvent("#max-tokens", "change");
    await page.click("#reset-session");
    const t1 = await sendAndWait("Hello! Tell me a short story about a fox.");
    assert.ok(t1.text.length > 0, "turn 1 has text");
    const distinct = new Set(t1.lengths.filter((n) => n > 0));
    assert.ok(distinct.size >= 2, `turn 1 arrived in pieces (saw lengths ${[...distinct]})`);
    assert.ok(Number(t1.stats.promptTokens) > 0 && Number(t1.stats.completionTokens) > 0, t1.stats.line);
    assert.equal(Number(t1.stats.cachedTokens), 0, "a new session has nothing cached");
    assert.match(t1.stats.line, /first token \d+ ms/);

    const t2 = await sendAndWait("And what happened next?");
    assert.ok(t2.text.length > 0, "turn 2 has text");
    assert.ok(Number(t2.stats.cachedTokens) > 0, `turn 2 reuses the cache: ${t2.stats.line}`);
    assert.ok(Number(t2.stats.promptTokens) > Number(t2.stats.cachedTokens), t2.stats.line);
  });

  test("delete removes the session on the server and starts a new one", async () => {
    const old = await page.locator("#session-id").textContent();
    const id = old.replace(/^prompt_cache_key: /, "");
    const info = (sid) => fetch(`${URL_}/v1/sessions/${sid}`, { headers: { authorization: `Bearer ${KEY}` } });
    assert.equal((await info(id)).status, 200, "the session exists after two turns");
    await page.click("#delete-session");
    await page.waitForFunction((o) => document.getElementById("session-id").textContent !== o, old);
    assert.equal(await page.locator("#notice").isHidden(), true, await page.locator("#notice").textContent());
    assert.equal(await page.locator("#messages li").count(), 0);
    assert.equal((await info(id)).status, 404, "the server no longer has it");
  });

  test("full-history mode (what stock clients send) also reuses the session", async () => {
    await page.selectOption("#send-mode", "full");
    await page.dispatchEvent("#send-mode", "change");
    try {
      await sendAndWait("Hi again. Say something short.");
      const t2 = await sendAndWait("One more, please.");
      assert.ok(Number(t2.stats.cachedTokens) > 0, `turn 2 reuses the cache: ${t2.stats.line}`);
    } finally {
      await page.selectOption("#send-mode", "new");
      await page.dispatchEvent("#send-mode", "change");
    }
  });

  test("a wrong key is reported in plain words", async () => {
    const replies = await page.locator("#messages li.assistant").count();
    await page.fill("#api-key", "sk-not-a-real-key");
    await page.dispatchEvent("#api-key", "change");
    await page.fill("#prompt", "Hello?");
    await page.click("#send");
    await page.waitForSelector("#notice:not([hidden])", { timeout: TURN_TIMEOUT });
    assert.match(await page.locator("#notice").textContent(), /The API key was not accepted/);
    assert.equal(await page.locator("#messages li.assistant").count(), replies, "no reply is left behind");
    await page.fill("#api-key", KEY);
    await page.dispatchEvent("#api-key", "change");
  });
});

/** Switches `p` to the in-browser engine with the test's window and greedy settings. */
async function useLocalEngine(p) {
  // every status line the page shows while loading, timed, for the failure message
  await p.evaluate(() => {
    const el = document.getElementById("local-status");
    const t0 = performance.now();
    window.__statusLog = [];
    const note = () => window.__statusLog.push(`${((performance.now() - t0) / 1000).toFixed(1)} s: ${el.textContent}`);
    new MutationObserver(note).observe(el, { subtree: true, childList: true, characterData: true });
  });
  await p.check("#local-switch");
  // ready, or the page gave up (status "Off: ..." and a notice): fail at once with its words
  const crashed = new Promise((resolve) => p.once("crash", () => resolve(new Error("the page crashed"))));
  const settled = await Promise.race([crashed, p.waitForFunction(() => {
    const el = document.getElementById("local-status");
    return el.dataset.ready === "true" || el.textContent.startsWith("Off: the on-device") || !document.getElementById("notice").hidden;
  }, null, { timeout: TURN_TIMEOUT }).then(() => null, (e) => e)]);
  if (settled?.message === "the page crashed") throw new Error(`the page crashed while loading the in-browser engine (console errors: ${consoleErrors.join(" | ")})`);
  const statusLog = (await p.evaluate(() => window.__statusLog)).join("; ");
  const why = `status: ${statusLog}; notice: ${await p.locator("#notice").textContent()}; console errors: ${consoleErrors.join(" | ")}`;
  if (settled) throw new Error(`the in-browser engine did not load in ${TURN_TIMEOUT / 1000} s (${why})`);
  assert.equal(await p.locator("#local-status").getAttribute("data-ready"), "true", `the in-browser engine failed to load (${why})`);
  console.error(`[browser] in-browser engine loaded: ${statusLog}`);
  await p.fill("#local-window", String(LOCAL_CASE.window));
  await p.dispatchEvent("#local-window", "change");
  for (const [id, v] of [["max-tokens", LOCAL_CASE.maxTokens], ["temperature", 0]]) {
    await p.fill(`#${id}`, String(v));
    await p.dispatchEvent(`#${id}`, "change");
  }
  return p.locator("#local-status").getAttribute("data-backend");
}

const cacheStats = (p) => p.locator("#cache-stats").evaluate((el) => ({ ...el.dataset }));

/** The fixed conversation on `p`: PyTorch's greedy tokens and text, cache bounded and evicting. */
async function checkGreedyConversation(p) {
  const expected = JSON.parse(readFileSync(process.env.PLAYGROUND_EXPECTED, "utf8"));
  const capacity = 4 + LOCAL_CASE.window;
  let cached = 0;
  for (const [i, want] of expected.turns.entries()) {
    const got = await sendAndWait(want.prompt, p);
    assert.deepEqual(got.tokenIds, want.token_ids, `turn ${i + 1}: token ids`);
    assert.equal(got.text, want.text, `turn ${i + 1}: text`);
    assert.equal(Number(got.stats.cachedTokens), cached, `turn ${i + 1}: cached tokens = tokens seen before it`);
    const cache = await cacheStats(p);
    assert.equal(Number(cache.capacity), capacity);
    assert.ok(Number(cache.length) <= capacity, `cache holds ${cache.length} > capacity`);
    cached = Number(cache.seen);
  }
  const cache = await cacheStats(p);
  assert.equal(Number(cache.seen), expected.cache.tokens_seen, "tokens seen match the PyTorch run");
  assert.equal(Number(cache.length), expected.cache.length, "cache length matches the PyTorch run");
  assert.ok(Number(cache.seen) > capacity, "the conversation outgrew the window, so eviction happened");
}

describe("in-browser engine", { skip: !PARTS.has("local") && "PLAYGROUND_PARTS excludes local" }, () => {
  test("WebAssembly: greedy answers equal the PyTorch model's; the condensed cache stays bounded", async () => {
    assert.equal(await useLocalEngine(page), "wasm", "no GPU here (--disable-gpu): the WebAssembly backend");
    await checkGreedyConversation(page);
    await page.screenshot({ path: SCREENSHOT, fullPage: false });
  });

  test("Stop mid-reply leaves the on-device cache as it was before the turn", async () => {
    assert.equal(await page.locator("#local-status").getAttribute("data-ready"), "true", "needs the engine the test above loaded");
    const before = await cacheStats(page);
    await page.evaluate((seen) => (window.__seenBefore = seen), before.seen);
    // a long prompt keeps the engine busy (prefill is token by token) whatever the model would answer
    await page.fill("#prompt", "The river runs to the sea. ".repeat(150));
    await page.click("#send");
    await page.waitForFunction(() => Number(document.getElementById("cache-stats").dataset.seen) > 0 &&
      document.getElementById("cache-stats").dataset.seen !== window.__seenBefore, null, { timeout: TURN_TIMEOUT });
    await page.click("#stop");
    await page.waitForSelector("#notice:not([hidden])", { timeout: TURN_TIMEOUT });
    assert.match(await page.locator("#notice").textContent(), /Stopped/);
    assert.deepEqual(await cacheStats(page), before);
  });

  test("WebGPU (SwiftShader software adapter): the same greedy answers", async (t) => {
    // a software GPU is slow (~1 s a step for the 13M-parameter lckv-tiny): by default only small models
    const manifest = JSON.parse(readFileSync(join(ROOT, "public", "generated", "model", "manifest.json"), "utf8"));
    const want = process.env.PLAYGROUND_WEBGPU ?? (manifest.onnx_bytes < 8 * 2 ** 20 ? "1" : "0");
    if (want !== "1") return t.skip(`model of ${(manifest.onnx_bytes / 2 ** 20).toFixed(0)} MiB on a software GPU: set PLAYGROUND_WEBGPU=1 to run`);
    const chromium = await loadChromium();
    const dir = mkdtempSync(join(tmpdir(), "lckv-chromium-webgpu-"));
    const ctx = await chromium.launchPersistentContext(dir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader", "--enable-features=Vulkan"],
    });
    try {
      const p = ctx.pages()[0] ?? (await ctx.newPage());
      await p.goto(`${URL_}/?backend=webgpu`, { waitUntil: "load" });
      const backend = await useLocalEngine(p);
      if (backend !== "webgpu") return t.skip("this Chromium offers no WebGPU adapter, even a software one");
      await checkGreedyConversation(p);
    } finally {
      await ctx.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("no errors in the browser console (besides the deliberate 401)", () => {
  assert.deepEqual(consoleErrors.filter((e) => !/Failed to load resource: the server responded with a status of 401/.test(e)), []);
});
