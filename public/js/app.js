// Wires the page: settings, the conversation, and the two engines (the API, or the model in this browser).
import { ApiClient } from "./api.js";
import { isAbort, PlaygroundError } from "./errors.js";
import { loadSettings, newSessionId, saveSettings } from "./store.js";

const $ = (id) => document.getElementById(id);
const settings = loadSettings();
const state = { history: [], sentUpTo: 0, running: null, local: null, localLoading: null };

function showNotice(message) {
  $("notice").textContent = message ?? "";
  $("notice").hidden = !message;
}

function readSettings() {
  settings.apiKey = $("api-key").value.trim();
  settings.rememberKey = $("remember-key").checked;
  settings.baseUrl = $("base-url").value.trim() || location.origin;
  settings.model = $("model").value.trim();
  settings.maxTokens = Math.max(1, Math.min(4096, Math.round(Number($("max-tokens").value) || 128)));
  settings.temperature = Math.max(0, Math.min(2, Number($("temperature").value) || 0));
  settings.sendMode = $("send-mode").value;
  saveSettings(settings);
}

function renderSettings() {
  $("api-key").value = settings.apiKey;
  $("remember-key").checked = settings.rememberKey;
  $("base-url").value = settings.baseUrl;
  $("model").value = settings.model;
  $("max-tokens").value = settings.maxTokens;
  $("temperature").value = settings.temperature;
  $("send-mode").value = settings.sendMode;
  $("session-id").textContent = $("local-switch").checked
    ? "on this device: the cache lives in this page"
    : `prompt_cache_key: ${settings.sessionId}`;
  $("delete-session").hidden = $("local-switch").checked;
}

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = role;
  li.innerHTML = `<div class="role"></div><div class="text"></div><div class="stats mono" data-testid="turn-stats"></div>`;
  li.querySelector(".role").textContent = role;
  li.querySelector(".text").textContent = text;
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function clearConversation() {
  state.history = [];
  state.sentUpTo = 0;
  $("messages").replaceChildren();
}

function newSession() {
  settings.sessionId = newSessionId();
  saveSettings(settings);
  renderSettings();
  clearConversation();
  state.local?.reset();
  if (state.local) renderCache(state.local.cache);
}

function renderCache(cache) {
  $("cache-meter").value = cache.length / cache.capacity;
  $("cache-stats").textContent =
    `holds ${cache.length} / ${cache.capacity} tokens (${cache.sinks} sinks + window ${cache.window}); ` +
    `seen ${cache.tokensSeen}, evicted ${cache.evicted}; ${(cache.bf16Bytes / 1024).toFixed(1)} KiB in bf16`;
  Object.assign($("cache-stats").dataset, { length: cache.length, capacity: cache.capacity, seen: cache.tokensSeen });
}

function renderStats(li, { usage, ttftMs, totalMs }) {
  const el = li.querySelector(".stats");
  const cached = usage?.prompt_tokens_details?.cached_tokens ?? 0;
  const parts = [];
  if (usage) parts.push(`prompt ${usage.prompt_tokens} tokens`, `cached ${cached}`, `completion ${usage.completion_tokens}`);
  if (ttftMs !== null) parts.push(`first token ${ttftMs.toFixed(0)} ms`);
  if (usage?.completion_tokens > 1 && ttftMs !== null && totalMs > ttftMs) {
    parts.push(`${((usage.completion_tokens - 1) / ((totalMs - ttftMs) / 1000)).toFixed(1)} tokens/s`);
  }
  el.textContent = parts.join(" · ");
  if (usage) {
    Object.assign(el.dataset, { promptTokens: usage.prompt_tokens, cachedTokens: cached, completionTokens: usage.completion_tokens });
  }
}

async function ensureLocalEngine() {
  if (state.local) return state.local;
  state.localLoading ??= (async () => {
    const { LocalEngine, pickBackend } = await import("./local/engine.js");
    const onStatus = (s) => ($("local-status").textContent = `${s}…`);
    onStatus("looking for a WebGPU adapter");
    const backend = await pickBackend();
    const engine = await LocalEngine.load({ backend, onStatus });
    state.local = engine;
    $("local-status").textContent = `Ready: ${engine.manifest.model_id} on ${engine.backend === "webgpu" ? "WebGPU" : "WebAssembly (CPU)"}.`;
    $("local-status").dataset.backend = engine.backend;
    $("local-status").dataset.ready = "true";
    $("cache-panel").hidden = false;
    $("local-window").value = engine.cache.window;
    renderCache(engine.cache);
    return engine;
  })().catch((e) => {
    state.localLoading = null;
    $("local-switch").checked = false;
    $("api-settings").hidden = false;
    $("cache-panel").hidden = true;
    renderSettings();
    $("local-status").textContent = "Off: the on-device model could not be loaded.";
    throw new PlaygroundError(`The on-device model could not be loaded: ${e.message}`);
  });
  return state.localLoading;
}

async function send(text) {
  readSettings();
  showNotice(null);
  const local = $("local-switch").checked;
  const userMsg = { role: "user", content: text };
  const userLi = addMessage("user", text);
  const replyLi = addMessage("assistant", "");
  const controller = new AbortController();
  state.running = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  const t0 = performance.now();
  let ttftMs = null;
  let usage = null;
  let reply = "";
  try {
    let events;
    if (local) {
      const engine = await ensureLocalEngine();
      events = engine.chat({
        messages: [userMsg], maxTokens: settings.maxTokens, temperature: settings.temperature,
        signal: controller.signal, onCache: renderCache,
      });
    } else {
      const client = new ApiClient({ baseUrl: settings.baseUrl, apiKey: settings.apiKey });
      const messages = settings.sendMode === "full" ? [...state.history, userMsg] : [...state.history.slice(state.sentUpTo), userMsg];
      events = client.chat({
        model: settings.model || "lckv-tiny", messages, sessionId: settings.sessionId,
        maxTokens: settings.maxTokens, temperature: settings.temperature, signal: controller.signal,
      });
    }
    for await (const ev of events) {
      if (ev.type === "delta") {
        ttftMs ??= performance.now() - t0;
        reply += ev.text;
        replyLi.querySelector(".text").textContent = reply;
        $("messages").scrollTop = $("messages").scrollHeight;
      } else if (ev.type === "tokens") {
        replyLi.dataset.tokenIds = JSON.stringify(ev.ids); // on-device engine only: for checks against PyTorch
      } else if (ev.type === "usage") {
        usage = ev.usage;
      }
    }
    state.history.push(userMsg, { role: "assistant", content: reply });
    state.sentUpTo = state.history.length;
    renderStats(replyLi, { usage, ttftMs, totalMs: performance.now() - t0 });
    replyLi.dataset.done = "true";
  } catch (e) {
    // the server (and the local engine) keep the previous state after a failed turn: so does the page
    userLi.classList.add("failed");
    replyLi.remove();
    if (isAbort(e)) showNotice("Stopped. The session is as it was before this message.");
    else showNotice(e instanceof PlaygroundError ? e.message : `Something went wrong: ${e.message}`);
  } finally {
    state.running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

async function deleteSession() {
  readSettings();
  showNotice(null);
  if ($("local-switch").checked) return newSession();
  try {
    await new ApiClient({ baseUrl: settings.baseUrl, apiKey: settings.apiKey }).deleteSession(settings.sessionId);
    newSession();
    showNotice(null);
  } catch (e) {
    if (e instanceof PlaygroundError && e.status === 404) newSession(); // nothing stored for it: same outcome
    else showNotice(e instanceof PlaygroundError ? e.message : `Could not delete the session: ${e.message}`);
  }
}

async function loadModels() {
  if (!settings.apiKey) return;
  try {
    const ids = await new ApiClient({ baseUrl: settings.baseUrl, apiKey: settings.apiKey }).listModels();
    $("model-list").replaceChildren(...ids.map((id) => Object.assign(document.createElement("option"), { value: id })));
    if (!settings.model && ids.length) $("model").value = settings.model = ids[0];
  } catch {
    // the first chat turn reports the problem in plain words
  }
}

renderSettings();
for (const id of ["api-key", "remember-key", "base-url", "model", "max-tokens", "temperature", "send-mode"]) {
  $(id).addEventListener("change", () => {
    readSettings();
    if (id === "api-key" || id === "base-url") loadModels();
  });
}
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.running) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.running?.abort());
$("reset-session").addEventListener("click", () => { showNotice(null); newSession(); });
$("delete-session").addEventListener("click", deleteSession);
$("local-window").addEventListener("change", () => {
  if (!state.local) return;
  try {
    state.local.setWindow(Math.round(Number($("local-window").value)));
    clearConversation();
    showNotice(null);
  } catch (e) {
    showNotice(`The window was not changed: ${e.message}`);
    $("local-window").value = state.local.cache.window;
  }
  renderCache(state.local.cache);
});
$("local-switch").addEventListener("change", async () => {
  state.running?.abort();
  clearConversation();
  showNotice(null);
  $("api-settings").hidden = $("local-switch").checked;
  renderSettings();
  if (!$("local-switch").checked) {
    $("local-status").textContent = "Off: replies come from the API.";
    $("cache-panel").hidden = true;
    return;
  }
  try {
    state.local?.reset();
    if (state.local) renderCache(state.local.cache);
    await ensureLocalEngine();
  } catch (e) {
    showNotice(e.message);
  }
});
loadModels();
