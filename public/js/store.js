// Settings kept in this browser only. The API key goes to sessionStorage (this tab) unless the user
// ticks "remember", then to localStorage; it is sent nowhere but the API's Authorization header.
const PREFIX = "lckv-playground:";

export function loadSettings() {
  const get = (k) => localStorage.getItem(PREFIX + k);
  return {
    apiKey: sessionStorage.getItem(PREFIX + "apiKey") ?? get("apiKey") ?? "",
    rememberKey: get("apiKey") !== null,
    baseUrl: get("baseUrl") ?? location.origin,
    model: get("model") ?? "",
    maxTokens: Number(get("maxTokens") ?? 128),
    temperature: Number(get("temperature") ?? 0),
    sendMode: get("sendMode") ?? "new",
    // a fresh session per page load: the conversation shown is not kept across reloads either
    sessionId: newSessionId(),
  };
}

export function saveSettings(s) {
  const set = (k, v) => localStorage.setItem(PREFIX + k, String(v));
  sessionStorage.setItem(PREFIX + "apiKey", s.apiKey);
  if (s.rememberKey) set("apiKey", s.apiKey);
  else localStorage.removeItem(PREFIX + "apiKey");
  for (const k of ["baseUrl", "model", "maxTokens", "temperature", "sendMode"]) set(k, s[k]);
}

/** Session ids the API accepts as prompt_cache_key: short, URL-safe, unguessable. */
export function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "pg-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
