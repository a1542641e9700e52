// The accuracy dashboard: the same numbers as GET /api/models/{model}/accuracy and /latency
// (and, for a model serving several versions, /versions/compare, /latency per version and
// /routing), as tables and Chart.js charts (vendored in static/vendor; no CDN). Text goes in
// through textContent only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    model: $("model"), window: $("window"), version: $("version"), status: $("status"),
    comparePanel: $("compare-panel"), compareA: $("compare-a"), compareB: $("compare-b"),
  };
  const served = {}; // model name → its served versions, from /api/models
  const charts = {};
  const COLOURS = ["#0b5cad", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490"];

  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)} %`);
  const num = (v) => (v === null || v === undefined ? "–" : String(v));

  function cell(tag, text) {
    const node = document.createElement(tag);
    node.textContent = text;
    return node;
  }

  function fillRows(testid, rows) {
    const body = document.querySelector(`[data-testid="${testid}"] tbody`);
    body.replaceChildren(...rows.map((values) => {
      const tr = document.createElement("tr");
      values.forEach((v, i) => tr.append(cell(i === 0 ? "th" : "td", v)));
      tr.firstChild.setAttribute("scope", "row");
      return tr;
    }));
  }

  function setSummary(key, text) {
    document.querySelector(`[data-testid="summary"] [data-key="${key}"]`).textContent = text;
  }

  function draw(id, config) {
    if (charts[id]) charts[id].destroy();
    config.options = {
      responsive: true, maintainAspectRatio: false, animation: false,
      interaction: { mode: "index", intersect: false }, ...config.options,
    };
    charts[id] = new window.Chart($(id), config);
  }

  // Time on a linear axis of epoch milliseconds (Chart.js's "time" scale needs a date adapter):
  // gaps in time stay gaps, and a lone point sits in a labelled hour instead of on an axis
  // of one instant.
  const HOUR = 3600e3;

  function timeLabel(ms, span) {
    const day = { month: "short", day: "numeric" };
    const minute = { ...day, hour: "2-digit", minute: "2-digit" };
    const format = span > 2 * 24 * HOUR ? day
      : span > HOUR / 6 ? minute : { hour: "2-digit", minute: "2-digit", second: "2-digit" };
    return new Date(ms).toLocaleString([], format);
  }

  function timeScale(xs, pad) {
    let min = Math.min(...xs);
    let max = Math.max(...xs);
    if (!xs.length) [min, max] = [Date.now() - HOUR, Date.now()];
    else if (min === max) [min, max] = [min - pad, max + pad];
    return {
      type: "linear", min, max,
      ticks: { maxTicksLimit: 7, callback: (v) => timeLabel(v, max - min) },
    };
  }

  const timeTooltip = {
    callbacks: { title: (items) => (items.length ? new Date(items[0].parsed.x).toLocaleString() : "") },
  };

  function query() {
    const params = new URLSearchParams();
    if (els.window.value) {
      params.set("since", new Date(Date.now() - Number(els.window.value) * 1000).toISOString());
    }
    if (els.version.value) params.set("version", els.version.value);
    return params.toString();
  }

  async function getJSON(url) {
    const resp = await window.modelhostKey.fetch(url, { headers: { Accept: "application/json" } });
    const body = await resp.json().catch(() => null);
    if (!resp.ok) throw new Error((body && body.error && body.error.message) || resp.statusText);
    return body;
  }

  function renderAccuracy(a) {
    setSummary("predictions", num(a.predictions));
    setSummary("with_feedback", num(a.with_feedback));
    setSummary("feedback_share", pct(a.feedback_share));
    setSummary("top1", pct(a.top1.rate));
    setSummary("top1_ci", a.top1.ci95 ? `${pct(a.top1.ci95[0])} – ${pct(a.top1.ci95[1])}` : "–");
    setSummary("topk_name", `Top-${a.topk.k || "k"} accuracy`);
    setSummary("topk", pct(a.topk.rate));
    fillRows("labels-table", a.labels.map((r) => [
      r.label, num(r.predicted), num(r.actual), num(r.hits), pct(r.precision), pct(r.recall)]));
    fillRows("confusions", a.confusions.map((c) => [c.actual, c.predicted, num(c.count)]));
    fillRows("rejected", a.rejected.map((r) => [
      r.time, r.id, r.version, r.predicted || "–", r.label || "(not said)"]));

    draw("chart-labels", {
      type: "bar",
      data: {
        labels: a.labels.map((r) => r.label),
        datasets: [
          { label: "Precision", data: a.labels.map((r) => r.precision), backgroundColor: COLOURS[0] },
          { label: "Recall", data: a.labels.map((r) => r.recall), backgroundColor: COLOURS[1] },
        ],
      },
      options: { scales: { y: { min: 0, max: 1 } } },
    });

    const versions = [...new Set(a.over_time.map((p) => p.version))];
    draw("chart-accuracy", {
      type: "line",
      data: {
        datasets: versions.map((v, i) => ({
          label: `version ${v}`,
          borderColor: COLOURS[i % COLOURS.length],
          backgroundColor: COLOURS[i % COLOURS.length],
          pointRadius: 4,
          data: a.over_time.filter((p) => p.version === v)
            .map((p) => ({ x: Date.parse(p.start), y: p.top1_rate })),
        })),
      },
      options: {
        scales: { x: timeScale(a.over_time.map((p) => Date.parse(p.start)), HOUR),
                  y: { min: 0, max: 1 } },
        plugins: { tooltip: timeTooltip },
      },
    });
  }

  function renderLatency(l) {
    const xs = l.series.map((b) => Date.parse(b.start));
    const options = () => ({
      scales: { x: timeScale(xs, (l.bucket_seconds || 3600) * 1000), y: { beginAtZero: true } },
      plugins: { tooltip: timeTooltip },
    });
    const points = (key) => l.series.map((b, i) => ({ x: xs[i], y: b[key] }));
    draw("chart-latency", {
      type: "line",
      data: {
        datasets: ["p50_ms", "p90_ms", "p99_ms"].map((key, i) => ({
          label: key.replace("_ms", " (ms)"), data: points(key), pointRadius: 3,
          borderColor: COLOURS[i], backgroundColor: COLOURS[i],
        })),
      },
      options: options(),
    });
    draw("chart-throughput", {
      type: "line",
      data: {
        datasets: [{ label: "predictions per second", data: points("per_second"), pointRadius: 3,
                     stepped: "before", fill: "origin", borderColor: COLOURS[2],
                     backgroundColor: `${COLOURS[2]}55` }],
      },
      options: options(),
    });
  }

  // -- two versions side by side ---------------------------------------------------------

  function setCell(testid, key, text) {
    document.querySelector(`[data-testid="${testid}"] [data-key="${key}"]`).textContent = text;
  }

  const rateText = (r) => (r.total ? `${pct(r.rate)} (${r.hits}/${r.total})` : "–");
  const ciText = (ci) => (ci ? `${pct(ci[0])} – ${pct(ci[1])}` : "–");
  const points = (s) => (s === null ? "–" : `${s >= 0 ? "+" : ""}${(s * 100).toFixed(1)} points`);

  function options(select, versions, chosen) {
    select.replaceChildren(...versions.map((v) => {
      const option = document.createElement("option");
      option.value = v;
      option.textContent = v;
      return option;
    }));
    select.value = chosen;
  }

  function renderCompare(c, latencies, routing) {
    const [a, b] = [c.versions[c.a], c.versions[c.b]];
    setCell("compare-table", "a", `Version ${c.a}`);
    setCell("compare-table", "b", `Version ${c.b}`);
    fillRows("compare-table", [
      ["Predictions", num(a.predictions), num(b.predictions)],
      ["With feedback", num(a.with_feedback), num(b.with_feedback)],
      ["Share with feedback", pct(a.feedback_share), pct(b.feedback_share)],
      ["Top-1 accuracy", rateText(a.top1), rateText(b.top1)],
      ["Top-1 95 % interval", ciText(a.top1.ci95), ciText(b.top1.ci95)],
      [`Top-${a.topk.k || b.topk.k || "k"} accuracy`, rateText(a.topk), rateText(b.topk)],
    ]);
    const t = c.top1_test;
    setCell("compare-test", "difference", t ? points(t.difference) : "–");
    setCell("compare-test", "difference_ci",
            t ? `${points(t.ci95[0])} to ${points(t.ci95[1])}` : "–");
    setCell("compare-test", "p_value", t ? Number(t.p_value).toPrecision(2) : "–");
    setCell("compare-test", "agreement", c.shadow_agreement.total
      ? `${rateText(c.shadow_agreement)}, 95 % ${ciText(c.shadow_agreement.ci95)}` : "–");
    setCell("compare-test", "verdict", c.verdict);
    fillRows("routing-changes", routing.changes.map((r) => [
      r.time, r.action, r.routing.default,
      Object.entries(r.routing.split).map(([v, w]) => `${v}: ${w}`).join(", ") || "–",
      r.routing.shadow || "–", r.client || "–"]));

    const series = [[c.a, a], [c.b, b]];
    const xs = series.flatMap(([, f]) => f.over_time.map((p) => Date.parse(p.start)));
    draw("chart-compare", {
      type: "line",
      data: {
        datasets: series.flatMap(([v, f], i) => {
          const mine = f.over_time.filter((p) => p.version === v);
          const colour = COLOURS[i];
          const at = (key) => mine.map((p) => ({ x: Date.parse(p.start), y: key(p) }));
          return [
            { label: `version ${v}`, data: at((p) => p.top1_rate), borderColor: colour,
              backgroundColor: colour, pointRadius: 4 },
            { label: `version ${v} 95 % low`, data: at((p) => p.ci95[0]), borderColor: colour,
              borderDash: [4, 4], pointRadius: 0, fill: false },
            { label: `version ${v} 95 % high`, data: at((p) => p.ci95[1]), borderColor: colour,
              borderDash: [4, 4], pointRadius: 0, fill: "-1", backgroundColor: `${colour}22` },
          ];
        }),
      },
      options: { scales: { x: timeScale(xs, HOUR), y: { min: 0, max: 1 } },
                 plugins: { tooltip: timeTooltip } },
    });
    const lxs = latencies.flatMap((l) => l.series.map((s) => Date.parse(s.start)));
    draw("chart-compare-latency", {
      type: "line",
      data: {
        datasets: latencies.map((l, i) => ({
          label: `version ${series[i][0]} p50 (ms)`, pointRadius: 3,
          borderColor: COLOURS[i], backgroundColor: COLOURS[i],
          data: l.series.map((s) => ({ x: Date.parse(s.start), y: s.p50_ms })),
        })),
      },
      options: { scales: { x: timeScale(lxs, HOUR), y: { beginAtZero: true } },
                 plugins: { tooltip: timeTooltip } },
    });
  }

  async function refreshCompare(base) {
    const versions = served[els.model.value] || [];
    els.comparePanel.hidden = versions.length < 2;
    if (versions.length < 2) return;
    if (!versions.includes(els.compareA.value) || !versions.includes(els.compareB.value)) {
      options(els.compareA, versions, versions[0]);
      options(els.compareB, versions, versions[versions.length - 1]);
    }
    const [a, b] = [els.compareA.value, els.compareB.value];
    if (a === b) return;
    const since = query().replace(/(^|&)version=[^&]*/, "");
    const [compared, la, lb, routing] = await Promise.all([
      getJSON(`${base}/versions/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}&${since}`),
      getJSON(`${base}/latency?version=${encodeURIComponent(a)}&${since}`),
      getJSON(`${base}/latency?version=${encodeURIComponent(b)}&${since}`),
      getJSON(`${base}/routing`)]);
    renderCompare(compared, [la, lb], routing);
  }

  function updateVersions(a) {
    const known = new Set([...els.version.options].map((o) => o.value));
    for (const v of new Set(a.over_time.map((p) => p.version))) {
      if (known.has(v)) continue;
      const option = document.createElement("option");
      option.value = v;
      option.textContent = v;
      els.version.append(option);
    }
  }

  async function refresh() {
    const model = els.model.value;
    if (!model) return;
    els.status.textContent = "Loading…";
    document.body.dataset.loaded = "false";
    const base = `api/models/${encodeURIComponent(model)}`;
    try {
      const [accuracy, latency] = await Promise.all([
        getJSON(`${base}/accuracy?${query()}`), getJSON(`${base}/latency?${query()}`)]);
      renderAccuracy(accuracy);
      renderLatency(latency);
      updateVersions(accuracy);
      await refreshCompare(base);
      els.status.textContent = `${accuracy.with_feedback} of ${accuracy.predictions} predictions have feedback.`;
      document.body.dataset.loaded = "true";
    } catch (err) {
      els.status.textContent = `Could not load the figures: ${err.message}`;
    }
  }

  async function start() {
    try {
      const listing = await getJSON("api/models");
      els.model.replaceChildren(...listing.models.map((m) => {
        served[m.name] = (m.served_versions || []).map((v) => v.version);
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = m.name;
        return option;
      }));
      const wanted = new URLSearchParams(location.search).get("model");
      if (wanted) els.model.value = wanted;
    } catch (err) {
      els.status.textContent = `Could not list the models: ${err.message}`;
      return;
    }
    els.model.addEventListener("change", () => {
      els.version.replaceChildren(els.version.options[0]); // versions differ per model
      refresh();
    });
    els.window.addEventListener("change", refresh);
    els.version.addEventListener("change", refresh);
    els.compareA.addEventListener("change", refresh);
    els.compareB.addEventListener("change", refresh);
    refresh();
  }

  start();
})();
