// The API key, for servers started with --api-keys. A browser sends no key by itself, so when
// the server answers 401 the page asks for one, keeps it in this tab's sessionStorage (gone
// when the tab closes, never sent to another origin) and sends it as "Authorization: Bearer"
// with every API call the pages make. Loaded before app.js, feedback.js and dashboard.js; the
// form is built here, once, for both pages.
"use strict";

window.modelhostKey = (() => {
  const STORAGE = "modelhost.apiKey";
  const header = document.querySelector(".site-header");
  let form = null;

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  function stored() {
    try {
      return window.sessionStorage.getItem(STORAGE) || "";
    } catch {
      return ""; // storage disabled: the page works without keys
    }
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

  function buildForm(rejected) {
    const input = el("input", {
      type: "password", id: "key-input", autocomplete: "off", spellcheck: "false",
      "data-testid": "key-input",
    });
    const row = el("div", { class: "row" });
    row.append(input, el("button", { type: "submit", "data-testid": "key-submit" }, "Use this key"));
    form = el("form", { id: "key-form", class: "key-form", "data-testid": "key-form", novalidate: "" });
    form.append(
      el("p", { id: "key-message", role: "alert" }, rejected
        ? "The server did not accept this API key. Enter another one."
        : "This server needs an API key."),
      el("label", { for: "key-input" }, "API key"),
      row,
      el("p", { class: "hint" },
        "Kept in this browser tab only, and sent to this server with each request."),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (value) remember(value);
    });
    header.append(form);
    input.focus();
  }

  // fetch() with the key; a 401 asks for one (once per page).
  async function apiFetch(url, init = {}) {
    const key = stored();
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const resp = await fetch(url, { ...init, headers });
    if (resp.status === 401 && !form && header) buildForm(Boolean(key));
    return resp;
  }

  if (stored() && header) {
    const forget = el("button", {
      type: "button", class: "key-forget", "data-testid": "key-forget",
    }, "Forget the API key");
    forget.addEventListener("click", () => remember(""));
    header.append(forget);
  }
  return { fetch: apiFetch };
})();
