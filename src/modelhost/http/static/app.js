// modelhost web page: pick a model, give it an image (file, drop, paste or URL), optionally
// choose a crop point on the preview, and show the top-k labels.
//
// Plain JS, no framework, no build step. It runs under a strict Content-Security-Policy
// (default-src 'self'): no inline scripts or styles, and the preview is drawn on a <canvas>
// from the decoded file, so no blob: or data: URLs are needed. Text that comes from the server
// or the user (labels, error messages, file names) is only ever inserted with textContent.
"use strict";

(() => {
  const MODELS_URL = "api/models";
  const POLL_LOADING_MS = 2000;
  const RETRY_MODELS_MS = 5000;
  const PREVIEW_MAX_SIDE = 1600; // canvas pixels; clicks are mapped back to natural pixels
  const KEY_PREDICT_DELAY_MS = 400;
  const FALLBACK_CROP = 0.25; // the server's crop around a point when the model has no default
  const TIMING_NAMES = {
    fetch: "Fetch",
    decode: "Decode",
    queue: "Queue",
    inference: "Inference",
    total: "Total",
  };

  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"),
    modelInfo: $("model-info"),
    file: $("file"),
    dropzone: $("dropzone"),
    fileName: $("file-name"),
    urlForm: $("url-form"),
    url: $("url"),
    urlSubmit: $("url-submit"),
    topK: $("top-k"),
    crop: $("crop"),
    cropValue: $("crop-value"),
    cropHint: $("crop-hint"),
    previewFigure: $("preview-figure"),
    preview: $("preview"),
    previewNote: $("preview-note"),
    point: $("point"),
    clearPoint: $("clear-point"),
    status: $("status"),
    error: $("error"),
    results: $("results"),
    details: $("details"),
    predictionId: $("prediction-id"),
    resultModel: $("result-model"),
    timings: $("timings"),
  };

  const state = {
    models: [],
    source: null, // {kind: "file", file} | {kind: "url", url}
    natural: null, // {width, height} of the image as the user sees it (after EXIF orientation)
    base: null, // canvas holding the (possibly downscaled) image, redrawn under the marker
    point: null, // {x, y} in natural pixels, or null for the whole image
    previewToken: 0,
    seq: 0,
    controller: null,
    lastErrorCode: null,
    keyTimer: 0,
  };

  // ---------------------------------------------------------------- small helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clamp(v, lo, hi) {
    return Math.min(hi, Math.max(lo, v));
  }

  function percent(score) {
    const pct = Number(score) * 100;
    if (!Number.isFinite(pct)) return "–";
    return (pct !== 0 && Math.abs(pct) < 0.1 ? pct.toFixed(2) : pct.toFixed(1)) + "%";
  }

  function formatBytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  function formatMs(v) {
    const n = Number(v);
    return Number.isFinite(n) ? n.toFixed(1) + " ms" : String(v);
  }

  async function readBody(resp) {
    const type = resp.headers.get("content-type") || "";
    if (type.includes("json")) {
      try {
        return await resp.json();
      } catch {
        return null;
      }
    }
    try {
      await resp.text();
    } catch {
      /* ignore */
    }
    return null;
  }

  // An error as the page shows it: {message, code?, requestId?, status?, retryAfter?}.
  function apiError(resp, body) {
    const err = body && typeof body === "object" ? body.error : null;
    const retryAfter = resp.headers.get("retry-after");
    if (err && typeof err === "object") {
      return {
        message: String(err.message || err.code || "The request failed."),
        code: err.code ? String(err.code) : null,
        requestId: err.request_id ? String(err.request_id) : null,
        status: resp.status,
        retryAfter,
      };
    }
    const text = resp.statusText ? `${resp.status} ${resp.statusText}` : String(resp.status);
    return { message: `The server answered ${text}.`, status: resp.status, retryAfter };
  }

  // ---------------------------------------------------------------- status and errors

  function setStatus(text, busy = false) {
    els.status.textContent = text;
    els.status.classList.toggle("busy", busy);
  }

  function showError(err) {
    els.error.replaceChildren();
    const message = String(err.message || "Something went wrong.");
    els.error.append(el("p", "error-message", message.charAt(0).toUpperCase() + message.slice(1)));
    const meta = [];
    if (err.status) meta.push(`HTTP ${err.status}`);
    if (err.code) meta.push(`code ${err.code}`);
    if (err.requestId) meta.push(`request ${err.requestId}`);
    if (err.retryAfter) meta.push(`retry after ${err.retryAfter} s`);
    if (meta.length) els.error.append(el("p", "error-meta", meta.join(" · ")));
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
    els.error.replaceChildren();
  }

  function clearResults() {
    els.results.replaceChildren();
    els.results.removeAttribute("aria-busy");
    els.details.hidden = true;
    els.predictionId.textContent = "";
    els.resultModel.textContent = "";
    els.timings.hidden = true;
    els.timings.replaceChildren();
    document.dispatchEvent(new CustomEvent("modelhost:cleared"));
  }

  // ---------------------------------------------------------------- models

  function currentModel() {
    return state.models.find((m) => m.name === els.model.value) || null;
  }

  function optionText(m) {
    const version = m.version ? ` v${m.version}` : "";
    if (m.state === "ready") return `${m.name}${version}`;
    return `${m.name}${version} (${m.state || "unknown"})`;
  }

  function renderModels() {
    const previous = els.model.value;
    els.model.replaceChildren();
    if (!state.models.length) {
      els.model.append(el("option", "", "No models are served"));
      els.model.disabled = true;
      updateModelInfo();
      return;
    }
    els.model.disabled = false;
    for (const m of state.models) {
      const opt = el("option", "", optionText(m));
      opt.value = m.name;
      opt.disabled = m.state === "failed";
      if (m.error) opt.title = String(m.error);
      opt.dataset.state = m.state || "";
      els.model.append(opt);
    }
    const usable = (name) => state.models.some((m) => m.name === name && m.state !== "failed");
    const pick =
      (usable(previous) && previous) ||
      (state.models.find((m) => m.state === "ready") || {}).name ||
      (state.models.find((m) => m.state !== "failed") || {}).name ||
      "";
    els.model.value = pick;
    if (pick !== previous) applyModelDefaults();
    updateModelInfo();
  }

  function updateModelInfo() {
    const m = currentModel();
    const failed = state.models
      .filter((f) => f.state === "failed" && f !== m)
      .map((f) => (f.error ? `${f.name} failed to load: ${f.error}` : `${f.name} failed to load.`));
    if (!m) {
      els.modelInfo.textContent = failed.length ? failed.join(" ") : "";
      return;
    }
    const parts = [m.state || "unknown"];
    if (m.version) parts.push(`version ${m.version}`);
    if (m.format) parts.push(m.format);
    if (m.labels) parts.push(`${m.labels} labels`);
    if (m.input && m.input.whole_image) {
      parts.push("input: the whole image");
    } else if (m.input && m.input.width && m.input.height) {
      parts.push(`input ${m.input.width}×${m.input.height}`);
    }
    let text = parts.join(" · ");
    if (m.error) text += ` — ${m.error}`;
    els.modelInfo.replaceChildren(el("span", "", text));
    for (const line of failed) els.modelInfo.append(el("span", "model-failed", line));
  }

  function applyModelDefaults() {
    const m = currentModel();
    if (!m) return;
    const labels = Number(m.labels) || 100;
    els.topK.max = String(Math.max(1, Math.min(100, labels)));
    els.topK.value = String(clamp(Number(m.top_k) || 5, 1, Number(els.topK.max)));
    const dc = Number(m.default_crop);
    const hasDefault = Number.isFinite(dc) && dc > 0 && dc <= 1;
    const crop = hasDefault ? dc : FALLBACK_CROP;
    // Keep the model's default exact: a range input snaps its value to the step grid.
    els.crop.step = Math.abs(crop * 100 - Math.round(crop * 100)) < 1e-9 ? "0.01" : "any";
    els.crop.value = String(crop);
    els.cropHint.textContent =
      "Fraction of the image's shorter side kept around the crop point. " +
      (hasDefault ? `Model default: ${percent(dc)}.` : "The model has no default crop.");
    updateCropValue();
  }

  async function loadModels() {
    let resp;
    let body;
    try {
      resp = await window.modelhostKey.fetch(MODELS_URL, { headers: { Accept: "application/json" } });
      body = await readBody(resp);
    } catch {
      state.lastErrorCode = "models";
      showError({ message: "Could not reach the server to list the models. Retrying…" });
      window.setTimeout(loadModels, RETRY_MODELS_MS);
      return;
    }
    if (!resp.ok || !body || !Array.isArray(body.models)) {
      state.lastErrorCode = "models";
      showError(resp.ok ? { message: "The server sent an unexpected model list." } : apiError(resp, body));
      window.setTimeout(loadModels, RETRY_MODELS_MS);
      return;
    }
    if (state.lastErrorCode === "models") {
      clearError();
      state.lastErrorCode = null;
    }
    const before = currentModel();
    state.models = body.models;
    renderModels();
    const after = currentModel();
    // A prediction that failed because the model was still loading is retried once it is ready.
    if (
      before && after && before.name === after.name && before.state !== "ready" &&
      after.state === "ready" && state.source && state.lastErrorCode === "not_ready"
    ) {
      predict();
    }
    if (state.models.some((m) => m.state === "loading")) {
      window.setTimeout(loadModels, POLL_LOADING_MS);
    }
  }

  // ---------------------------------------------------------------- preview and crop point

  function showPreviewNote(text) {
    els.previewNote.textContent = text;
    els.previewNote.hidden = !text;
  }

  function resetPreview() {
    state.previewToken += 1;
    state.natural = null;
    state.base = null;
    state.point = null;
    els.previewFigure.hidden = true;
    showPreviewNote("");
    updatePointText();
  }

  // `image` is anything drawImage accepts; width/height are its natural (oriented) size.
  function setPreviewImage(image, width, height) {
    const scale = Math.min(1, PREVIEW_MAX_SIDE / Math.max(width, height));
    const base = document.createElement("canvas");
    base.width = Math.max(1, Math.round(width * scale));
    base.height = Math.max(1, Math.round(height * scale));
    base.getContext("2d").drawImage(image, 0, 0, base.width, base.height);
    state.base = base;
    state.natural = { width, height };
    els.preview.width = base.width;
    els.preview.height = base.height;
    els.preview.dataset.naturalWidth = String(width);
    els.preview.dataset.naturalHeight = String(height);
    els.previewFigure.hidden = false;
    showPreviewNote("");
    drawPreview();
  }

  async function previewFile(file) {
    resetPreview();
    const token = state.previewToken;
    let bitmap;
    try {
      // Decoding the Blob directly needs no URL, so the CSP's img-src does not get in the way.
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      if (token === state.previewToken) {
        showPreviewNote("No preview: this browser cannot read the file (the server may).");
      }
      return;
    }
    if (token !== state.previewToken) {
      bitmap.close();
      return;
    }
    setPreviewImage(bitmap, bitmap.width, bitmap.height);
    bitmap.close();
  }

  function previewUrl(url) {
    resetPreview();
    const token = state.previewToken;
    const noPreview =
      "No preview for images given by URL (the page's security policy only shows images from " +
      "this server), so no crop point can be chosen. Upload the file to choose one.";
    if (new URL(url).origin !== window.location.origin) {
      // The CSP (img-src 'self') would refuse it; don't even try.
      showPreviewNote(noPreview);
      return;
    }
    const img = new Image();
    img.decoding = "async";
    img.referrerPolicy = "no-referrer";
    img.addEventListener("load", () => {
      if (token !== state.previewToken) return;
      setPreviewImage(img, img.naturalWidth, img.naturalHeight);
    });
    img.addEventListener("error", () => {
      if (token !== state.previewToken) return;
      showPreviewNote("The image at this URL could not be shown; no crop point can be chosen.");
    });
    img.src = url;
  }

  function cropFraction() {
    const v = Number(els.crop.value);
    return Number.isFinite(v) && v > 0 ? clamp(v, 0.01, 1) : FALLBACK_CROP;
  }

  function updateCropValue() {
    els.cropValue.textContent = percent(cropFraction());
  }

  function drawPreview() {
    const canvas = els.preview;
    const ctx = canvas.getContext("2d");
    if (!state.base || !state.natural) return;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(state.base, 0, 0);
    if (!state.point) return;

    const s = canvas.width / state.natural.width; // natural → canvas pixels
    const px = (canvas.clientWidth || canvas.width) / canvas.width; // canvas → CSS pixels
    const line = Math.max(1, 2 / px);
    const { width: W, height: H } = state.natural;
    // The server's box: a square of crop × shorter side centred on the point, clipped to the
    // image (so it shrinks near an edge rather than shifting).
    const half = Math.max(cropFraction() * Math.min(W, H), 1) / 2;
    const left = Math.max(0, state.point.x - half);
    const top = Math.max(0, state.point.y - half);
    const boxW = Math.max(Math.min(W, state.point.x + half) - left, 1);
    const boxH = Math.max(Math.min(H, state.point.y + half) - top, 1);

    ctx.save();
    // Dim what lies outside the crop box.
    ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
    ctx.beginPath();
    ctx.rect(0, 0, canvas.width, canvas.height);
    ctx.rect(left * s, top * s, boxW * s, boxH * s);
    ctx.fill("evenodd");
    // The box.
    ctx.lineWidth = line;
    ctx.strokeStyle = "#ffffff";
    ctx.setLineDash([6 * line, 4 * line]);
    ctx.strokeRect(left * s, top * s, boxW * s, boxH * s);
    ctx.setLineDash([]);
    // The point: a ring with a dark outline so it shows on light and dark images.
    const cx = (state.point.x + 0.5) * s;
    const cy = (state.point.y + 0.5) * s;
    // Small enough that a small crop box is not hidden under the ring.
    const r = Math.max(2.5 * line, Math.min(8 * line, 0.3 * Math.min(boxW, boxH) * s));
    const inner = r * 0.4;
    const outer = Math.max(r * 1.8, r + 8 * line); // arms long enough to find a small marker
    for (const [color, width] of [["#000000", line * 3], ["#ffb454", line * 1.5]]) {
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      ctx.arc(cx, cy, r, 0, Math.PI * 2);
      for (const [dx, dy] of [[-1, 0], [1, 0], [0, -1], [0, 1]]) {
        ctx.moveTo(cx + dx * outer, cy + dy * outer);
        ctx.lineTo(cx + dx * inner, cy + dy * inner);
      }
      ctx.stroke();
    }
    ctx.restore();
  }

  function updatePointText() {
    if (state.point) {
      els.point.textContent = `Crop point: x ${state.point.x}, y ${state.point.y} (${percent(
        cropFraction()
      )} of the shorter side)`;
      els.point.dataset.x = String(state.point.x);
      els.point.dataset.y = String(state.point.y);
    } else {
      els.point.textContent = "No crop point: the whole image is used.";
      delete els.point.dataset.x;
      delete els.point.dataset.y;
    }
    els.clearPoint.disabled = !state.point;
  }

  function setPoint(point) {
    state.point = point;
    updatePointText();
    drawPreview();
  }

  // Client coordinates → natural image pixels (the canvas' content box is the whole image).
  function naturalFromEvent(ev) {
    const canvas = els.preview;
    const rect = canvas.getBoundingClientRect();
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!state.natural || !w || !h) return null;
    const fx = (ev.clientX - rect.left - canvas.clientLeft) / w;
    const fy = (ev.clientY - rect.top - canvas.clientTop) / h;
    const { width: W, height: H } = state.natural;
    return {
      x: clamp(Math.floor(fx * W), 0, W - 1),
      y: clamp(Math.floor(fy * H), 0, H - 1),
    };
  }

  function onPreviewClick(ev) {
    const p = naturalFromEvent(ev);
    if (!p) return;
    setPoint(p);
    predict();
  }

  function predictSoon() {
    window.clearTimeout(state.keyTimer);
    state.keyTimer = window.setTimeout(predict, KEY_PREDICT_DELAY_MS);
  }

  function onPreviewKey(ev) {
    if (!state.natural) return;
    const { width: W, height: H } = state.natural;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (ev.key in moves) {
      ev.preventDefault();
      const step = (ev.shiftKey ? 0.1 : 0.02) * Math.min(W, H);
      const [dx, dy] = moves[ev.key];
      const p = state.point || { x: Math.floor(W / 2), y: Math.floor(H / 2) };
      setPoint({
        x: clamp(Math.round(p.x + dx * Math.max(1, step)), 0, W - 1),
        y: clamp(Math.round(p.y + dy * Math.max(1, step)), 0, H - 1),
      });
      predictSoon();
    } else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      if (!state.point) setPoint({ x: Math.floor(W / 2), y: Math.floor(H / 2) });
      predict();
    } else if ((ev.key === "Escape" || ev.key === "Delete" || ev.key === "Backspace") && state.point) {
      ev.preventDefault();
      setPoint(null);
      predict();
    }
  }

  // ---------------------------------------------------------------- inputs

  function useFile(file) {
    if (!file) return;
    state.source = { kind: "file", file };
    els.fileName.textContent = `${file.name || "pasted image"} (${formatBytes(file.size)})`;
    previewFile(file);
    predict();
  }

  function useUrl(raw) {
    const text = String(raw || "").trim();
    let parsed;
    try {
      parsed = new URL(text);
    } catch {
      parsed = null;
    }
    if (!parsed || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
      clearResults();
      showError({ message: "Enter an image address starting with http:// or https://." });
      setStatus("Nothing was sent.");
      els.url.focus();
      return;
    }
    state.source = { kind: "url", url: parsed.href };
    els.fileName.textContent = "";
    previewUrl(parsed.href);
    predict();
  }

  function firstImageFile(list) {
    for (const f of list || []) {
      if (!f.type || f.type.startsWith("image/") || /\.(jpe?g|png|gif|webp|bmp|tiff?)$/i.test(f.name)) {
        return f;
      }
    }
    return list && list.length ? list[0] : null;
  }

  // ---------------------------------------------------------------- prediction

  function requestOptions() {
    const opts = {};
    const k = Number.parseInt(els.topK.value, 10);
    if (Number.isFinite(k) && k > 0) opts.top_k = String(k);
    if (state.point) {
      opts.x = String(state.point.x);
      opts.y = String(state.point.y);
      opts.crop = String(cropFraction());
    }
    return opts;
  }

  async function predict() {
    window.clearTimeout(state.keyTimer);
    const model = currentModel();
    if (!state.source) return;
    if (!model) {
      showError({ message: "Choose a model first." });
      return;
    }
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const seq = ++state.seq;

    const opts = requestOptions();
    let url = `api/models/${encodeURIComponent(model.name)}/predict`;
    const init = { method: "POST", signal: controller.signal, headers: { Accept: "application/json" } };
    if (state.source.kind === "file") {
      const form = new FormData();
      form.append("image", state.source.file, state.source.file.name || "image");
      for (const [k, v] of Object.entries(opts)) form.append(k, v);
      init.body = form;
    } else {
      const query = new URLSearchParams(opts).toString();
      if (query) url += `?${query}`;
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify({ url: state.source.url });
    }

    clearError();
    els.results.setAttribute("aria-busy", "true");
    setStatus(`Asking ${model.name}…`, true);

    let resp;
    let body;
    try {
      resp = await window.modelhostKey.fetch(url, init);
      body = await readBody(resp);
    } catch (e) {
      if (controller.signal.aborted || seq !== state.seq) return;
      state.controller = null;
      clearResults();
      showError({ message: "Could not reach the server. Check that it is running and try again." });
      setStatus("The prediction failed.");
      return;
    }
    if (seq !== state.seq) return; // a newer request superseded this one
    state.controller = null;

    if (!resp.ok || !body || !Array.isArray(body.predictions)) {
      const err = resp.ok ? { message: "The server sent an unexpected answer." } : apiError(resp, body);
      state.lastErrorCode = err.code || null;
      clearResults();
      showError(err);
      setStatus("The prediction failed.");
      return;
    }
    state.lastErrorCode = null;
    renderResults(body);
  }

  function renderResults(data) {
    const items = [];
    data.predictions.forEach((p, i) => {
      const li = el("li");
      li.dataset.index = String(p.index);
      li.dataset.score = String(p.score);
      const label = el("span", "label", String(p.label));
      label.id = `result-label-${i}`;
      const score = el("span", "score", percent(p.score));
      const meter = document.createElement("meter");
      meter.min = 0;
      meter.max = 1;
      meter.low = 0;
      meter.high = 1;
      meter.optimum = 1;
      meter.value = clamp(Number(p.score) || 0, 0, 1);
      meter.setAttribute("aria-labelledby", label.id);
      meter.setAttribute("aria-valuetext", percent(p.score));
      meter.textContent = percent(p.score);
      li.append(label, score, meter);
      items.push(li);
    });
    els.results.replaceChildren(...items);
    els.results.removeAttribute("aria-busy");
    document.dispatchEvent(new CustomEvent("modelhost:prediction", { detail: data }));

    els.predictionId.textContent = String(data.id || "");
    els.resultModel.textContent = data.version ? `${data.model} v${data.version}` : String(data.model || "");
    els.details.hidden = false;

    const timings = data.timings_ms && typeof data.timings_ms === "object" ? data.timings_ms : {};
    const rows = [];
    const keys = Object.keys(TIMING_NAMES).filter((k) => k in timings);
    for (const k of Object.keys(timings)) if (!keys.includes(k)) keys.push(k);
    for (const k of keys) {
      const dt = el("dt", "", TIMING_NAMES[k] || k);
      const dd = el("dd", "", formatMs(timings[k]));
      dd.dataset.timing = k;
      rows.push(dt, dd);
    }
    els.timings.replaceChildren(...rows);
    els.timings.hidden = rows.length === 0;

    const n = data.predictions.length;
    const total = "total" in timings ? ` in ${formatMs(timings.total)}` : "";
    const where = state.point ? " around the crop point" : "";
    setStatus(
      n
        ? `Top ${n} label${n === 1 ? "" : "s"} from ${data.model || "the model"}${where}${total}.`
        : "The model returned no labels."
    );
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    els.model.addEventListener("change", () => {
      applyModelDefaults();
      updateModelInfo();
      if (state.point) drawPreview();
      updatePointText();
      predict();
    });

    els.file.addEventListener("change", () => {
      const file = els.file.files && els.file.files[0];
      useFile(file);
      // Let choosing the same file again trigger a new prediction.
      els.file.value = "";
    });

    // The drop zone is the file input's <label>: a click on it opens the chooser. The input is
    // visually hidden but stays in the tab order, and the drop zone shows its focus ring; Space
    // opens the chooser natively and Enter does too (made explicit here for every browser).
    els.file.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        els.file.click();
      }
    });

    let depth = 0;
    els.dropzone.addEventListener("dragenter", (ev) => {
      ev.preventDefault();
      depth += 1;
      els.dropzone.classList.add("dragover");
    });
    els.dropzone.addEventListener("dragover", (ev) => {
      ev.preventDefault();
      if (ev.dataTransfer) ev.dataTransfer.dropEffect = "copy";
    });
    els.dropzone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) els.dropzone.classList.remove("dragover");
    });
    els.dropzone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      depth = 0;
      els.dropzone.classList.remove("dragover");
      const dt = ev.dataTransfer;
      const file = dt && firstImageFile(dt.files);
      if (file) {
        useFile(file);
        return;
      }
      const link = dt && (dt.getData("text/uri-list") || dt.getData("text/plain"));
      if (link) {
        const first = link.split(/\r?\n/).find((line) => line && !line.startsWith("#")) || "";
        els.url.value = first.trim();
        useUrl(first);
      }
    });
    // A file dropped next to the zone must not make the browser navigate away from the page.
    for (const type of ["dragover", "drop"]) {
      document.addEventListener(type, (ev) => {
        if (!els.dropzone.contains(ev.target)) ev.preventDefault();
      });
    }

    // Pasting an image anywhere (outside text fields) uses it.
    document.addEventListener("paste", (ev) => {
      const target = ev.target;
      if (target instanceof HTMLInputElement && target.type !== "file") return;
      const file = ev.clipboardData && firstImageFile(ev.clipboardData.files);
      if (file && (!file.type || file.type.startsWith("image/"))) {
        ev.preventDefault();
        useFile(file);
      }
    });

    els.urlForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      useUrl(els.url.value);
    });

    els.topK.addEventListener("change", () => predict());
    els.crop.addEventListener("input", () => {
      updateCropValue();
      updatePointText();
      drawPreview();
    });
    els.crop.addEventListener("change", () => {
      if (state.point) predict();
    });

    els.preview.addEventListener("click", onPreviewClick);
    els.preview.addEventListener("keydown", onPreviewKey);
    els.clearPoint.addEventListener("click", () => {
      setPoint(null);
      predict();
      els.preview.focus();
    });
    window.addEventListener("resize", () => drawPreview());
  }

  wire();
  updateCropValue();
  updatePointText();
  loadModels();
})();
