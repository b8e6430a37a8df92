// The operator page: polls GET /api/overview (open, read-only) and acts through the admin API
// with the token typed in. The token lives in sessionStorage: this tab only, gone when it
// closes, never in a URL or a cookie, sent only as `Authorization: Bearer` to this origin.
"use strict";

(() => {
  const TOKEN_KEY = "mlcanary.admin-token";
  const POLL_MS = 2000;
  const COLORS = { stable: "#2563eb", canary: "#d97706" };
  const GATE_COLORS = ["#7c3aed", "#0891b2", "#be123c", "#4d7c0f", "#a16207", "#475569"];
  const $ = (id) => document.getElementById(id);
  const charts = {};
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let output = "";

  // --- numbers as people read them ----------------------------------------------------------
  const fixed = (value, digits) => (value === null || value === undefined ? "–" : value.toFixed(digits));
  const percent = (share) => (share === null || share === undefined ? "–" : `${(share * 100).toFixed(2)}%`);
  const millis = (seconds) => (seconds === null || seconds === undefined ? "–" : `${(seconds * 1000).toFixed(1)} ms`);

  function showMessage(kind, text) {
    const box = $("message");
    box.hidden = false;
    box.className = kind;
    box.textContent = text;
  }

  // --- charts (Chart.js, served by the controller) ------------------------------------------
  function lineChart(id, datasets, yTitle, yMax) {
    return new Chart($(id), {
      type: "line",
      data: { datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, parsing: false,
        normalized: true, spanGaps: false,
        scales: {
          x: { type: "linear", title: { display: true, text: "seconds ago" }, max: 0 },
          y: { beginAtZero: true, suggestedMax: yMax, title: { display: Boolean(yTitle), text: yTitle } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        elements: { point: { radius: 0 }, line: { borderWidth: 2 } },
      },
    });
  }

  function series(label, color, dash) {
    return { label, data: [], borderColor: color, backgroundColor: color, borderDash: dash || [] };
  }

  function makeCharts() {
    charts.traffic = lineChart("chart-traffic", [
      series("stable", COLORS.stable), series("canary", COLORS.canary)], "requests/s");
    charts.errors = lineChart("chart-errors", [
      series("stable", COLORS.stable), series("canary", COLORS.canary)], "share", 0.01);
    charts.latency = lineChart("chart-latency", [
      series("stable p50", COLORS.stable, [4, 3]), series("stable p99", COLORS.stable),
      series("canary p50", COLORS.canary, [4, 3]), series("canary p99", COLORS.canary)], "ms");
    charts.predictions = new Chart($("chart-predictions"), {
      type: "bar",
      data: { labels: [], datasets: [
        { label: "stable", data: [], backgroundColor: COLORS.stable },
        { label: "canary", data: [], backgroundColor: COLORS.canary }] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, title: { display: true, text: "share of predictions" } } },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
    charts.gates = new Chart($("chart-gates"), {
      type: "line",
      data: { labels: [], datasets: [] },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: {
          x: { title: { display: true, text: "window" } },
          y: { beginAtZero: true, title: { display: true, text: "value / limit" } },
        },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
    window.mlcanaryCharts = charts; // for the browser tests, which read what is plotted
  }

  // --- rendering -----------------------------------------------------------------------------
  function renderLive(live, now) {
    const samples = live.series || [];
    const points = (variant, key, scale) => samples
      .filter((s) => s[variant] && s[variant][key] !== null && s[variant][key] !== undefined)
      .map((s) => ({ x: Math.round(s.time - now), y: s[variant][key] * (scale || 1) }));
    charts.traffic.data.datasets[0].data = points("stable", "requests_per_s");
    charts.traffic.data.datasets[1].data = points("canary", "requests_per_s");
    charts.errors.data.datasets[0].data = points("stable", "error_share");
    charts.errors.data.datasets[1].data = points("canary", "error_share");
    charts.latency.data.datasets[0].data = points("stable", "p50_s", 1000);
    charts.latency.data.datasets[1].data = points("stable", "p99_s", 1000);
    charts.latency.data.datasets[2].data = points("canary", "p50_s", 1000);
    charts.latency.data.datasets[3].data = points("canary", "p99_s", 1000);
    // The x axis spans what was sampled (at least a minute, at most the hour kept).
    const oldest = samples.length ? Math.round(samples[0].time - now) : 0;
    for (const name of ["traffic", "errors", "latency"]) {
      charts[name].options.scales.x.min = Math.max(-(live.kept_s || 3600), Math.min(-60, oldest));
      charts[name].update("none");
    }
    $("sample-s").textContent = String(live.sample_s);
    const last = samples[samples.length - 1];
    for (const variant of ["stable", "canary"]) {
      const figures = last && last[variant];
      $(`${variant}-rps`).textContent = figures ? fixed(figures.requests_per_s, 1) : "–";
      $(`${variant}-errors`).textContent = figures ? percent(figures.error_share) : "–";
      $(`${variant}-p50`).textContent = figures ? millis(figures.p50_s) : "–";
      $(`${variant}-p99`).textContent = figures ? millis(figures.p99_s) : "–";
    }
    renderPredictions(live.predictions || {});
    if (live.problem) {
      $("freshness").textContent = `routers not read: ${live.problem}`;
    }
  }

  function renderPredictions(byOutput) {
    const outputs = Object.keys(byOutput).sort();
    const select = $("output");
    if ([...select.options].map((o) => o.value).join("\n") !== outputs.join("\n")) {
      select.replaceChildren(...outputs.map((name) => new Option(name, name)));
    }
    if (!outputs.includes(output)) {
      output = outputs[0] || "";
      select.value = output;
    }
    const counts = byOutput[output] || {};
    const categories = [...new Set([...Object.keys(counts.stable || {}), ...Object.keys(counts.canary || {})])]
      .sort((a, b) => bucketOrder(a) - bucketOrder(b) || a.localeCompare(b));
    const shares = (variant) => {
      const got = counts[variant] || {};
      const total = Object.values(got).reduce((a, b) => a + b, 0) || 1;
      return categories.map((c) => (got[c] || 0) / total);
    };
    const chart = charts.predictions;
    const digits = edgeDigits(categories);
    chart.data.labels = categories.map((c) => (c === "+Inf" ? "above" : Number.isNaN(Number(c)) ? c : `≤ ${roundedEdge(c, digits)}`));
    chart.data.datasets[0].data = shares("stable");
    chart.data.datasets[1].data = shares("canary");
    chart.update("none");
  }

  // Bucket edges are cut at the model's quantiles (24.6675): shown with one digit more than
  // the closest two edges need to differ (24.7 when they are about 2 apart, 0.173 at 0.03).
  function edgeDigits(categories) {
    const edges = categories.map(Number).filter((value) => Number.isFinite(value)).sort((a, b) => a - b);
    let gap = Infinity;
    for (let i = 1; i < edges.length; i += 1) gap = Math.min(gap, edges[i] - edges[i - 1]);
    if (!Number.isFinite(gap) || gap <= 0) return 2;
    return Math.min(6, Math.max(0, Math.ceil(-Math.log10(gap)) + 1));
  }

  function roundedEdge(edge, digits) {
    return Number(edge).toLocaleString("en-US", { maximumFractionDigits: digits, useGrouping: false });
  }

  function bucketOrder(name) {
    if (name === "+Inf") return Infinity;
    const value = Number(name);
    return Number.isNaN(value) ? Infinity : value;
  }

  function renderSplit(data) {
    $("model").textContent = data.model || "";
    $("stable-version").textContent = `v${data.stable.version}`;
    $("canary-version").textContent = data.canary ? `v${data.canary.version}` : "none";
    $("canary-weight").textContent = data.canary ? `${data.canary.weight}%` : "–";
    // Which scoring protocols each variant's server speaks: mlflow (/invocations), v2 (KServe).
    const spoken = (upstream) => (upstream.protocols || ["mlflow"]).join(" + ");
    $("protocols").textContent = `stable ${spoken(data.stable)}` +
      (data.canary ? ` · canary ${spoken(data.canary)}` : "");
    const aliases = data.aliases || {};
    $("aliases").textContent = aliases.error
      ? `not read: ${aliases.error}`
      : Object.entries(aliases).filter(([, v]) => v).map(([k, v]) => `${k} → v${v}`).join(", ") || "none";
  }

  function renderRollout(state, now) {
    const summary = $("rollout-summary");
    const body = $("judgements").tBodies[0];
    if (!state) {
      summary.textContent = "No rollout.";
      body.replaceChildren();
      charts.gates.data = { labels: [], datasets: [] };
      charts.gates.update("none");
      return;
    }
    const steps = state.plan.steps;
    let text = `v${state.canary_version}: ${state.status}, step ${state.step + 1}/${steps.length} at ${state.weight}%`;
    if (state.status === "running" && state.next_judgement_at) {
      text += `, next judgement in ${Math.max(0, Math.round(state.next_judgement_at - now))} s`;
    }
    if (state.message) text += `. ${state.message}`;
    if (state.confirmation) {
      text += ` Promotion confirmed by ${state.confirmation.by}` +
        (state.confirmation.reason ? `: ${state.confirmation.reason}` : "") + ".";
    }
    summary.textContent = text;
    const history = state.history || [];
    const gateNames = [...new Set(history.flatMap((e) => e.gates.map((g) => g.gate)))];
    charts.gates.data.labels = history.map((_, i) => String(i + 1));
    charts.gates.data.datasets = gateNames.map((name, i) => ({
      label: name,
      data: history.map((e) => {
        const gate = e.gates.find((g) => g.gate === name);
        return gate && gate.value !== null && gate.limit ? gate.value / gate.limit : null;
      }),
      borderColor: GATE_COLORS[i % GATE_COLORS.length],
      backgroundColor: GATE_COLORS[i % GATE_COLORS.length],
      pointRadius: 3,
    }));
    if (history.length) {
      charts.gates.data.datasets.push({
        label: "limit", data: history.map(() => 1), borderColor: "#b91c1c",
        borderDash: [6, 4], pointRadius: 0,
      });
    }
    charts.gates.update("none");
    const rows = history.slice(-12).map((entry, i) => {
      const row = document.createElement("tr");
      const failed = entry.gates.filter((g) => !g.passed).map((g) => g.gate);
      const cells = [
        String(history.length - Math.min(history.length, 12) + i + 1), String(entry.step),
        `${entry.weight}%`, entry.outcome,
        entry.canary_requests === null ? "–" : String(Math.round(entry.canary_requests)),
        failed.length ? `failed: ${failed.join(", ")}` : entry.problem || "all passed",
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      row.cells[3].className = entry.outcome === "fail" ? "fail" : entry.outcome === "pass" ? "pass" : "";
      return row;
    });
    body.replaceChildren(...rows);
  }

  function renderRouters(routers) {
    const items = Object.entries(routers || {}).map(([url, seen]) => {
      const item = document.createElement("li");
      item.textContent = seen.in_step ? `${url}: in step` : `${url}: at ${seen.config_version || "unknown"}, not in step`;
      item.className = seen.in_step ? "pass" : "fail";
      return item;
    });
    $("routers").replaceChildren(...items);
  }

  function renderChanges(changes) {
    const rows = [...(changes || [])].reverse().map((change) => {
      const row = document.createElement("tr");
      for (const text of [(change.time || "").replace("T", " ").slice(0, 19), change.action || "", change.reason || "–"]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    });
    $("changes").tBodies[0].replaceChildren(...rows);
  }

  function renderNotifications(notifications) {
    const sinks = notifications.sinks || [];
    $("notify-sinks").textContent = sinks.length
      ? `sent to ${sinks.join(", ")}${notifications.signed ? " (webhooks signed)" : ""}`
      : "no sinks configured (--notify)";
    const rows = (notifications.recent || []).map((delivery) => {
      const row = document.createElement("tr");
      const when = new Date(delivery.time * 1000).toISOString().replace("T", " ").slice(0, 19);
      for (const text of [when, delivery.event, delivery.sink, delivery.state, String(delivery.attempts), delivery.last_error || "–"]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      row.className = delivery.state === "delivered" ? "pass" : delivery.state === "pending" ? "" : "fail";
      return row;
    });
    $("notifications").tBodies[0].replaceChildren(...rows);
  }

  function render(data) {
    renderSplit(data);
    renderLive(data.live || {}, data.now);
    renderRollout(data.rollout && data.rollout.status !== "idle" ? data.rollout : null, data.now);
    renderRouters(data.routers);
    renderChanges(data.recent_changes);
    renderNotifications(data.notifications || {});
    if (!(data.live && data.live.problem)) {
      $("freshness").textContent = `updated ${new Date(data.now * 1000).toLocaleTimeString()}`;
    }
  }

  async function poll() {
    try {
      const answer = await fetch("/api/overview", { cache: "no-store" });
      if (!answer.ok) throw new Error(`${answer.status} ${await answer.text()}`);
      render(await answer.json());
    } catch (error) {
      $("freshness").textContent = `not updated: ${error.message}`;
    }
  }

  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);
  }

  // --- acting ----------------------------------------------------------------------------------
  function showMode() {
    for (const button of document.querySelectorAll(".needs-token")) button.disabled = !token;
    $("mode").textContent = token
      ? "Acting with the token entered (kept for this tab only)."
      : "Read-only: enter the admin token to act (kept for this tab only).";
  }

  async function act(what, path, body) {
    const reason = $("reason").value.trim();
    let answer;
    try {
      answer = await fetch(path, {
        method: "POST", cache: "no-store",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ ...body, reason }),
      });
    } catch (error) {
      showMessage("error", `${what}: the controller did not answer (${error.message})`);
      return;
    }
    const text = await answer.text();
    let parsed = null;
    try { parsed = JSON.parse(text); } catch { parsed = null; }
    if (!answer.ok) {
      const said = parsed && parsed.message ? `${parsed.error_code}: ${parsed.message}` : text;
      showMessage("error", `${what} refused (${answer.status}): ${said}`);
      return;
    }
    showMessage("done", `${what}: done${reason ? ` (${reason})` : ""}`);
    await poll();
  }

  function wire() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      token = $("token").value.trim();
      $("token").value = "";
      if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
      showMode();
    });
    $("forget-token").addEventListener("click", () => {
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      showMode();
    });
    $("output").addEventListener("change", (event) => { output = event.target.value; poll(); });
    $("set-weight").addEventListener("click", () =>
      act(`weight ${$("weight").value}%`, "/api/weight", { weight: Number($("weight").value) }));
    $("promote").addEventListener("click", () => act("promote", "/api/promote", {}));
    $("rollback").addEventListener("click", () => act("roll back", "/api/rollback", {}));
    $("rollout-start").addEventListener("click", () => act("rollout start", "/api/rollout", {
      steps: $("steps").value.split(",").map((step) => Number(step.trim())),
      interval_s: Number($("interval").value),
      min_requests: Number($("min-requests").value),
      confirm_promotion: $("confirm-promotion").checked,
    }));
    $("rollout-pause").addEventListener("click", () => act("rollout pause", "/api/rollout/pause", {}));
    $("rollout-resume").addEventListener("click", () => act("rollout resume", "/api/rollout/resume", {}));
    $("rollout-abort").addEventListener("click", () => act("rollout abort", "/api/rollout/abort", {}));
    $("rollout-confirm").addEventListener("click", () =>
      act("rollout confirm", "/api/rollout/confirm", { by: "the operator page" }));
  }

  makeCharts();
  wire();
  showMode();
  loop();
})();
