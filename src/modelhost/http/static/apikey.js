// The API key, for servers started with --api-keys. A browser sends no key by itself, so when
// the server answers 401 the page asks for one, keeps it in this tab's sessionStorage (gone
// when the tab closes, never sent to another origin) and sends it as "Authorization: Bearer"
// with every API call the pages make. Loaded before app.js, feedback.js and dashboard.js.
"use strict";

window.modelhostKey = (() => {
  const STORAGE = "modelhost.apiKey";
  const $ = (id) => document.getElementById(id);

  function stored() {
    try {
      return window.sessionStorage.getItem(STORAGE) || "";
    } catch {
      return ""; // storage disabled: the page works without keys
    }
  }

  function ask(rejected) {
    const form = $("key-form");
    if (!form || !form.hidden) return;
    $("key-message").textContent = rejected
      ? "The server did not accept this API key. Enter another one."
      : "This server needs an API key.";
    form.hidden = false;
    $("key-input").focus();
  }

  // fetch() with the key; a 401 opens the key form.
  async function apiFetch(url, init = {}) {
    const key = stored();
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const resp = await fetch(url, { ...init, headers });
    if (resp.status === 401) ask(Boolean(key));
    return resp;
  }

  function remember(value) {
    try {
      if (value) window.sessionStorage.setItem(STORAGE, value);
      else window.sessionStorage.removeItem(STORAGE);
    } catch {
      return; // nowhere to keep it
    }
    window.location.reload(); // every panel starts again with the key
  }

  const form = $("key-form");
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("key-input").value.trim();
      if (value) remember(value);
    });
    $("key-forget").hidden = !stored();
    $("key-forget").addEventListener("click", () => remember(""));
  }
  return { fetch: apiFetch };
})();
