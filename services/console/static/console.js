// The operator console: reads /api/admin/console, /api/llm/costs and /api/llm/trends with the
// admin key (kept in this tab's sessionStorage when the gateway has keys), refreshes on a timer,
// and resets breakers or switches deployments from the table. Plain DOM, no build step; every
// value from the server goes in through textContent, never as HTML.
"use strict";

const KEY_STORE = "fallback-routing-admin-key";
const COST_REFRESH_MS = 30000;
const authRequired = document.querySelector('meta[name="fr-auth"]')?.content === "required";
let timer = null;
let lastCosts = 0;
const charts = {};
window.frConsole = { charts };  // for the browser test and a curious operator's devtools

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function badge(text, kind) { return el("span", text, "badge " + (kind || text)); }

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  const out = { "Content-Type": "application/json" };
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers() });
  if (resp.status === 401 || resp.status === 403) throw new Unauthorized(await message(resp));
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${await message(resp)}`);
  return resp.json();
}

async function message(resp) {
  try { return (await resp.json()).error.message; } catch { return resp.statusText; }
}

function fmt(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function money(value) {
  if (value === null || value === undefined) return "–";
  const digits = Math.abs(value) < 1 && value !== 0 ? 4 : 2;
  return (value < 0 ? "−$" : "$") + fmt(Math.abs(value), digits);
}

// The window's UTC days, oldest first, each with its trend entry or zeros: a day without
// traffic is a zero on the chart, not a gap, and one busy day does not stretch the axis.
function windowDays(daily, days) {
  const byDay = new Map(daily.map((d) => [d.day, d]));
  const today = new Date();
  const out = [];
  for (let i = days - 1; i >= 0; i--) {
    const day = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    const key = day.toISOString().slice(0, 10);
    out.push({ ts: day.getTime() / 1000, ...(byDay.get(key) || { cost_usd: 0, requests: 0 }) });
  }
  return out;
}

function percent(ratio) { return ratio === null || ratio === undefined ? "–" : fmt(ratio * 100, 1) + " %"; }

function pathOf(name) { return encodeURIComponent(name).replace(/%2F/g, "/"); }

// -- rendering --------------------------------------------------------------------------------

function renderDeployments(data) {
  const body = $("deployments").tBodies[0];
  body.replaceChildren();
  for (const d of data.deployments) {
    const row = el("tr");
    row.dataset.deployment = d.name;
    row.append(el("td", d.name), el("td", d.model), el("td", d.provider + (d.local ? " (local)" : "")));
    const breaker = el("td");
    breaker.append(badge(d.breaker));
    if (d.retry_in_seconds) breaker.append(el("span", ` ${fmt(d.retry_in_seconds, 1)} s`, "muted"));
    breaker.className = "breaker";
    const health = el("td");
    health.append(d.enabled ? badge(d.healthy ? "healthy" : "unhealthy") : badge("disabled"));
    row.append(breaker, health, el("td", fmt(d.p50_ms, 1), "num"), el("td", fmt(d.p95_ms, 1), "num"),
      el("td", percent(d.success_rate), "num"), el("td", fmt(d.calls), "num"));
    const actions = el("td");
    const reset = el("button", "Reset breaker");
    reset.type = "button";
    reset.dataset.action = "reset";
    reset.disabled = d.breaker === "closed";
    reset.addEventListener("click", () => act(`/circuit-breakers/${pathOf(d.name)}/reset`, {}));
    const toggle = el("button", d.enabled ? "Disable" : "Enable");
    toggle.type = "button";
    toggle.dataset.action = "toggle";
    toggle.addEventListener("click", () =>
      act(`/api/llm/providers/${pathOf(d.name)}/enable`, { enabled: !d.enabled }));
    actions.append(reset, " ", toggle);
    row.append(actions);
    body.append(row);
  }
  $("latency-source").textContent = "Latency and success: " + data.latency_source + ".";
}

function renderChains(data) {
  const box = $("chains");
  box.replaceChildren();
  for (const [name, steps] of Object.entries(data.chains)) {
    const chain = el("div", null, "chain");
    chain.append(el("b", name + (name === data.default_selector ? " (default)" : "")));
    const line = el("div", null, "steps");
    steps.forEach((step, i) => {
      if (i) line.append(el("span", "→", "arrow"));
      line.append(badge(step.step, step.usable ? "usable" : "unusable"));
    });
    chain.append(line);
    box.append(chain);
  }
}

function renderPlanner(data) {
  const box = $("planner");
  box.replaceChildren();
  const planner = data.planner;
  if (!planner || !planner.enabled) {
    box.append(el("p", "The capacity planner is off (capacity.enabled).", "muted"));
  } else {
    const head = el("p");
    head.append(planner.up ? badge("up", "ok") : badge("not seen", "down"),
      ` new sessions → ${planner.target ?? "–"}`);
    if (planner.threshold !== undefined && planner.threshold !== null) {
      head.append(el("span", `  threshold ${fmt(planner.threshold)} (${planner.signal})`, "muted"));
    }
    box.append(head);
    for (const [model, info] of Object.entries(planner.models || {})) {
      const line = el("p");
      line.append(el("b", model + " "), badge(info.state),
        ` ${info.replicas} replicas, ${info.ready_replicas} ready`);
      if (info.problem) line.append(el("span", "  " + info.problem, "error"));
      box.append(line);
    }
  }
  const list = $("timeline");
  list.replaceChildren();
  for (const event of data.timeline) {
    const item = el("li");
    item.append(el("span", new Date(event.ts * 1000).toLocaleTimeString() + "  ", "muted"), event.message);
    list.append(item);
  }
  list.hidden = !data.timeline.length;
  if (!data.timeline.length) box.append(el("p", "No planner decisions yet.", "muted"));
}

function renderIncidents(data) {
  const body = $("incidents").tBodies[0];
  body.replaceChildren();
  for (const r of data.incidents) {
    const row = el("tr");
    const answered = r.outcome === "failed" ? "–" : (r.deployment ?? r.model);
    row.append(el("td", new Date(r.ts).toLocaleTimeString()), el("td", r.original_model ?? r.model),
      el("td", answered), el("td", r.outcome), el("td", r.status, "num"),
      el("td", r.attempts, "num"), el("td", fmt(r.duration_ms, 0), "num"), el("td", r.error ?? ""));
    body.append(row);
  }
  if (!data.incidents.length) {
    const row = el("tr");
    const cell = el("td", data.incidents_note || "No failovers or errors in the last 24 hours.", "muted");
    cell.colSpan = 8;
    row.append(cell);
    body.append(row);
  }
}

function renderCosts(costs, trends) {
  const figures = $("cost-figures");
  figures.replaceChildren();
  const figure = (label, value) => {
    const box = el("div");
    box.append(el("span", label, "muted"), el("b", value));
    figures.append(box);
  };
  figure("cost, 30 days", money(costs.total_cost_usd));
  figure("projected this month", money(costs.projected_period_cost_usd));
  figure(`saved vs ${costs.reference_model}`, money(costs.estimated_savings_usd) +
    (costs.savings_percentage === null ? "" : ` (${fmt(costs.savings_percentage, 1)} %)`));
  figure("requests", fmt(costs.total_requests));
  figure("local / remote", `${fmt(costs.local_requests)} / ${fmt(costs.remote_requests)}`);
  const days = windowDays(trends.daily, trends.days);
  const xs = days.map((d) => d.ts);
  drawChart("cost-chart", "Daily cost (USD)", xs, days.map((d) => d.cost_usd), "#2b6cb0");
  drawChart("requests-chart", "Daily requests", xs, days.map((d) => d.requests), "#1f8a4c");
}

function drawChart(id, label, xs, ys, colour) {
  const box = $(id);
  const width = Math.max(320, box.clientWidth || 800);
  const data = [xs, ys];
  if (charts[id] && charts[id].width === width) {
    charts[id].chart.setData(data);
    return;
  }
  if (charts[id]) charts[id].chart.destroy();
  const options = {
    title: label, width, height: 220,
    scales: { x: { time: true } },
    series: [{}, { label, stroke: colour, fill: colour + "33", width: 2, points: { show: true } }],
    axes: [{}, { size: 70 }],
  };
  charts[id] = { width, chart: new uPlot(options, data, box) };
}

// -- refresh and actions ----------------------------------------------------------------------

async function refresh() {
  try {
    const data = await api("/api/admin/console");
    showConsole();
    $("status").replaceChildren(badge(data.status, data.status === "ok" ? "ok" : "degraded"));
    $("problem").hidden = !data.problems.length;
    $("problem").textContent = data.problems.join("; ");
    renderDeployments(data);
    renderChains(data);
    renderPlanner(data);
    renderIncidents(data);
    if (Date.now() - lastCosts > COST_REFRESH_MS) {
      lastCosts = Date.now();
      if (data.ledger) {
        const [costs, trends] = await Promise.all([api("/api/llm/costs?days=30"), api("/api/llm/trends?days=30")]);
        renderCosts(costs, trends);
      } else {
        $("cost-figures").replaceChildren(el("p", "The usage ledger is off (ledger.enabled).", "muted"));
      }
    }
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (!document.body.dataset.loaded) document.body.dataset.loaded = String(performance.now());
  } catch (error) {
    if (error instanceof Unauthorized) {
      showLogin(sessionStorage.getItem(KEY_STORE) ? error.message : "");
      return;
    }
    $("problem").hidden = false;
    $("problem").textContent = "Could not refresh: " + error.message;
  }
}

async function act(path, body) {
  try {
    await api(path, { method: "POST", body: JSON.stringify(body) });
  } catch (error) {
    $("problem").hidden = false;
    $("problem").textContent = error.message;
  }
  await refresh();
}

function schedule() {
  clearInterval(timer);
  const every = Number($("interval").value);
  if (every > 0) timer = setInterval(refresh, every);
}

function showLogin(problem) {
  $("console").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
  $("login-error").textContent = problem || "";
  clearInterval(timer);
}

function showConsole() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = !sessionStorage.getItem(KEY_STORE);
}

function start() {
  $("interval").addEventListener("change", schedule);
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    $("key").value = "";
    lastCosts = 0;
    refresh().then(schedule);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    showLogin("");
  });
  if (authRequired && !sessionStorage.getItem(KEY_STORE)) {
    showLogin("");
    return;
  }
  refresh().then(schedule);
}

start();
