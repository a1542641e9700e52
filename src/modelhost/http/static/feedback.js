// Feedback under each result: one click says which label was right, or type another.
// Listens for app.js's "modelhost:prediction" events; all text goes in through textContent.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const section = $("feedback");
  const choices = $("feedback-choices");
  const form = $("feedback-form");
  const input = $("feedback-label");
  const datalist = $("feedback-labels");
  const status = $("feedback-status");
  const labelsByModel = new Map();
  let current = null; // the prediction being judged

  async function knownLabels(model) {
    if (labelsByModel.has(model)) return labelsByModel.get(model);
    let names = [];
    try {
      const resp = await window.modelhostKey.fetch(`api/models/${encodeURIComponent(model)}`, {
        headers: { Accept: "application/json" },
      });
      if (resp.ok) names = (await resp.json()).label_names || [];
    } catch (_) {
      names = [];
    }
    labelsByModel.set(model, names);
    return names;
  }

  function show(prediction) {
    current = prediction;
    status.textContent = "";
    input.value = "";
    const buttons = prediction.predictions.map((p) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "choice";
      button.textContent = String(p.label);
      button.dataset.label = String(p.label);
      button.addEventListener("click", () => send(String(p.label)));
      return button;
    });
    choices.replaceChildren(...buttons);
    section.hidden = false;
    knownLabels(prediction.model).then((names) => {
      if (current !== prediction) return;
      datalist.replaceChildren(...names.map((n) => {
        const option = document.createElement("option");
        option.value = n;
        return option;
      }));
    });
  }

  function setBusy(busy) {
    for (const b of section.querySelectorAll("button")) b.disabled = busy;
  }

  async function send(label) {
    if (!current) return;
    const judged = current;
    setBusy(true);
    status.textContent = "Sending…";
    let resp = null;
    let body = null;
    try {
      resp = await window.modelhostKey.fetch(`api/predictions/${encodeURIComponent(judged.id)}/feedback`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ label }),
      });
      body = await resp.json().catch(() => null);
    } catch (_) {
      resp = null;
    }
    if (judged !== current) return;
    setBusy(false);
    if (resp && resp.status === 200) {
      status.textContent = `Thank you: recorded “${body.label}”.`;
    } else if (resp && resp.status === 202) {
      status.textContent = `Thank you: “${body.label}” is saved and will be stored shortly.`;
    } else {
      const message = body && body.error && body.error.message;
      status.textContent = message ? `Not recorded: ${message}` : "Not recorded: the server did not answer.";
    }
    for (const b of choices.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(resp && resp.ok && b.dataset.label === label));
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const label = input.value.trim();
    if (label) send(label);
    else status.textContent = "Type the right label first.";
  });
  document.addEventListener("modelhost:prediction", (ev) => show(ev.detail));
  document.addEventListener("modelhost:cleared", () => {
    current = null;
    section.hidden = true;
  });
})();
