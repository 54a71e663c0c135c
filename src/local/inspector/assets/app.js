// The inspector page. Everything that comes from a payload is put on the page with textContent or as
// an attribute value set from script, never parsed as HTML.
"use strict";

const OUTCOMES = ["processed", "duplicate", "stale", "ignored", "queued", "retry", "in_flight",
  "dead_lettered", "rejected", "unavailable", "ping"];
const SVG = "http://www.w3.org/2000/svg";
const ACTION_HEADERS = { "X-Inspector": "1", "Content-Type": "application/json" };

const state = {
  selected: null,
  // What the selected delivery showed when it was opened: it is fetched again only when that changes.
  selectedVersion: null,
  generation: null,
  deadGeneration: null,
  deadLetters: null,
  raw: false,
  depth: [],
  refreshing: false,
  again: false,
  lastStats: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "swatch") node.style.setProperty("--swatch", `var(--${value}, #888)`);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  return node;
}

function time(ms) {
  if (ms == null) return "";
  const d = new Date(ms);
  return d.toLocaleTimeString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

// --- the list ------------------------------------------------------------------------------------------

function filters() {
  const params = new URLSearchParams();
  const topic = $("filter-topic").value.trim();
  const outcome = $("filter-outcome").value;
  const text = $("filter-text").value;
  if (topic) params.set("topic", topic);
  if (outcome) params.set("outcome", outcome);
  if (text) params.set("q", text);
  params.set("limit", "200");
  return params;
}

async function refreshList() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    const { deliveries } = await api("/inspector/api/deliveries?" + filters().toString());
    $("filter-error").textContent = "";
    renderList(deliveries);
  } catch (error) {
    $("filter-error").textContent = error.message;
  } finally {
    state.refreshing = false;
    if (state.again) { state.again = false; refreshList(); }
  }
}

function outcomeBadge(outcome) {
  return el("span", { class: "badge outcome", swatch: outcome, text: outcome.replace("_", " ") });
}

function version(d) {
  return `${d.outcome}|${d.settled_at_ms}|${d.receives}`;
}

function renderList(deliveries) {
  const body = $("deliveries").tBodies[0];
  const rows = deliveries.map((d) => {
    const outcome = el("td", {}, outcomeBadge(d.outcome));
    if (d.status && d.status !== 200) outcome.append(el("span", { class: "source", text: String(d.status) }));
    if (d.reason) outcome.append(el("span", { class: "reason", text: d.reason }));
    const handlers = el("td", { class: "handlers" });
    for (const h of d.handlers || []) {
      handlers.append(el("div", { class: h.ok ? "" : "failed", text: `${h.name} ${h.ms.toFixed(1)} ms` }));
    }
    const topic = el("td", {}, el("span", { text: d.topic || "—" }));
    if (d.source !== "intake") topic.append(el("span", { class: "source", text: d.source }));
    const tries = [d.delivery_attempts, d.receives].map((n) => (n == null ? "–" : String(n))).join(" / ");
    const row = el("tr", { "data-seq": String(d.seq), "data-outcome": d.outcome },
      el("td", { class: "mono", text: time(d.received_at_ms) }),
      topic,
      el("td", { class: "mono", text: d.notification_id || "" }),
      el("td", { class: "mono", text: d.app_id || "" }),
      el("td", { class: "mono", title: "Intercom's delivery attempts / worker receives", text: tries }),
      outcome,
      handlers);
    if (d.seq === state.selected) {
      row.classList.add("selected");
      if (version(d) !== state.selectedVersion) select(d.seq);
    }
    row.addEventListener("click", () => select(d.seq));
    return row;
  });
  body.replaceChildren(...rows);
  $("empty").hidden = deliveries.length > 0;
}

// --- one delivery ----------------------------------------------------------------------------------------

function jsonNode(key, value, depth) {
  const label = key == null ? null : el("span", { class: "k", text: JSON.stringify(key) + ": " });
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const open = Array.isArray(value) ? "[" : "{";
    const details = el("details");
    if (depth < 2) details.open = true;
    details.append(el("summary", {}, label, el("span", { text: open }),
      el("span", { class: "count", text: ` ${entries.length} ${Array.isArray(value) ? "items" : "keys"} ` }),
      el("span", { text: open === "[" ? "]" : "}" })));
    for (const [k, v] of entries) details.append(jsonNode(Array.isArray(value) ? null : k, v, depth + 1));
    return details;
  }
  const kind = typeof value === "string" ? "s" : typeof value === "number" ? "n" : "b";
  return el("div", { class: "leaf" }, label, el("span", { class: kind, text: JSON.stringify(value) }));
}

function fact(list, name, value) {
  if (value == null || value === "") return;
  list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
}

async function select(seq) {
  if (state.selected !== seq) state.selectedVersion = null;
  state.selected = seq;
  for (const row of $("deliveries").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.seq === String(seq));
  }
  let d;
  try {
    d = await api(`/inspector/api/deliveries/${seq}`);
  } catch (error) {
    toast(error.message);
    return;
  }
  if (state.selected !== seq) return;
  state.selectedVersion = version(d);
  $("detail").hidden = false;
  $("detail-title").textContent = `${d.topic || "request"} · #${d.seq}`;
  $("detail-summary").textContent = d.summary || "";
  $("detail-summary").hidden = !d.summary;
  const facts = $("detail-facts");
  facts.replaceChildren();
  fact(facts, "received", new Date(d.received_at_ms).toISOString());
  fact(facts, "source", d.source);
  fact(facts, "HTTP status", d.status);
  fact(facts, "outcome", d.outcome);
  fact(facts, "reason", d.reason);
  fact(facts, "notification", d.notification_id);
  fact(facts, "app", d.app_id);
  fact(facts, "delivery attempts", d.delivery_attempts);
  fact(facts, "worker receives", d.receives);
  fact(facts, "handlers", (d.handlers || []).map((h) => `${h.name} ${h.ms.toFixed(2)} ms${h.ok ? "" : " (failed)"}`).join(", "));
  fact(facts, "record took", d.duration_ms == null ? null : `${d.duration_ms.toFixed(2)} ms`);
  fact(facts, "replay of", d.replay_of == null ? null : `#${d.replay_of}`);
  fact(facts, "bytes", d.bytes);
  $("detail-headers").tBodies[0].replaceChildren(...(d.headers || []).map(([name, value]) =>
    el("tr", {}, el("td", { text: name }), el("td", { class: "mono", text: value }))));
  const tree = $("detail-body");
  const raw = $("detail-raw");
  raw.textContent = d.body == null ? "(not kept: the request was rejected)" : d.body;
  tree.replaceChildren();
  if (d.body != null) {
    try {
      tree.append(jsonNode(null, JSON.parse(d.body), 0));
    } catch (_) {
      tree.append(el("div", { class: "leaf", text: d.body }));
    }
  } else {
    tree.append(el("div", { class: "leaf", text: "(not kept: the request was rejected)" }));
  }
  showRaw(state.raw);
  const replayable = d.body != null && d.notification_id != null;
  $("replay-same").disabled = !replayable;
  $("replay-fresh").disabled = !replayable;
}

function showRaw(raw) {
  state.raw = raw;
  $("detail-raw").hidden = !raw;
  $("detail-body").hidden = raw;
  $("toggle-raw").textContent = raw ? "tree" : "raw";
}

async function replay(fresh) {
  if (state.selected == null) return;
  try {
    const answer = await api(`/inspector/api/deliveries/${state.selected}/replay`, {
      method: "POST", headers: ACTION_HEADERS, body: JSON.stringify({ fresh_id: fresh }),
    });
    toast(`queued ${answer.notification_id}${fresh ? " (fresh id)" : " (same id)"}`);
  } catch (error) {
    toast(`replay failed: ${error.message}`);
  }
}

// --- dead letters ------------------------------------------------------------------------------------------

function deadFilter() {
  const topic = $("dead-topic").value.trim();
  return topic ? { topic } : {};
}

async function refreshDead() {
  const params = new URLSearchParams(deadFilter());
  try {
    const { dead_letters: letters } = await api("/inspector/api/dead-letters?" + params.toString());
    $("dead-error").textContent = "";
    const rows = letters.map((d) => {
      let pretty = d.body;
      try { pretty = JSON.stringify(JSON.parse(d.body), null, 2); } catch (_) { /* shown as stored */ }
      const body = el("details", { class: "dead-body" }, el("summary", { text: "body" }), el("pre", { text: pretty }));
      return el("tr", { "data-id": d.id },
        el("td", { class: "mono", text: time(d.dead_lettered_at_ms) }),
        el("td", { text: d.topic || "—" }),
        el("td", { class: "mono", text: d.notification_id || "" }),
        el("td", { class: "mono", text: String(d.receive_count) }),
        el("td", { class: "reason-cell", text: d.reason }),
        el("td", {}, body));
    });
    $("dead-letters").tBodies[0].replaceChildren(...rows);
    $("dead-caption").textContent = letters.length >= 200 ? "The oldest 200 are shown; redrive moves every one that matches." : "";
    $("dead-empty").hidden = letters.length > 0;
  } catch (error) {
    $("dead-error").textContent = error.message;
  }
}

async function redrive() {
  try {
    const report = await api("/inspector/api/dead-letters/redrive", {
      method: "POST", headers: ACTION_HEADERS, body: JSON.stringify(deadFilter()),
    });
    toast(`redriven: ${report.moved} moved, ${report.failed} failed`);
  } catch (error) {
    toast(`redrive failed: ${error.message}`);
  }
  refreshDead();
}

// --- pictures ----------------------------------------------------------------------------------------------

function drawChart(stats) {
  const chart = $("chart");
  const minutes = 30;
  const end = Math.floor(stats.now_ms / 60000) * 60000;
  const start = end - (minutes - 1) * 60000;
  const columns = new Map();
  for (const c of stats.per_minute) {
    if (c.minute_ms < start) continue;
    const column = columns.get(c.minute_ms) || {};
    column[c.outcome] = (column[c.outcome] || 0) + c.count;
    columns.set(c.minute_ms, column);
  }
  let peak = 1;
  for (const column of columns.values()) {
    peak = Math.max(peak, Object.values(column).reduce((a, b) => a + b, 0));
  }
  const width = 600 / minutes;
  const shapes = [];
  const seen = new Set();
  for (let i = 0; i < minutes; i++) {
    const minute = start + i * 60000;
    const column = columns.get(minute) || {};
    let y = 120;
    for (const outcome of OUTCOMES) {
      const count = column[outcome];
      if (!count) continue;
      seen.add(outcome);
      const h = (count / peak) * 110;
      y -= h;
      const bar = svg("rect", { x: i * width + 1, y, width: width - 2, height: h, class: `bar ${outcome}` });
      bar.style.fill = `var(--${outcome})`;
      bar.append(svg("title", {}));
      bar.firstChild.textContent = `${new Date(minute).toLocaleTimeString()}: ${count} ${outcome}`;
      shapes.push(bar);
    }
  }
  shapes.push(svg("line", { x1: 0, y1: 119.5, x2: 600, y2: 119.5, stroke: "#d0d4dc" }));
  const label = svg("text", { x: 4, y: 12, "font-size": 10, fill: "#6b7385" });
  label.textContent = `peak ${peak}/min`;
  shapes.push(label);
  chart.replaceChildren(...shapes);
  $("legend").replaceChildren(...OUTCOMES.filter((o) => seen.has(o)).map((o) => el("span", { swatch: o, text: o })));
}

function drawDepth() {
  const samples = state.depth;
  const chart = $("depth");
  const peak = Math.max(1, ...samples.map((s) => s.queued));
  const n = 120;
  const points = samples.slice(-n).map((s, i) => `${(i / (n - 1)) * 300},${118 - (s.queued / peak) * 108}`);
  const line = svg("polyline", { points: points.join(" "), fill: "none", stroke: "#2864d8", "stroke-width": 1.5 });
  const label = svg("text", { x: 4, y: 12, "font-size": 10, fill: "#6b7385" });
  label.textContent = `peak ${peak} queued`;
  chart.replaceChildren(line, label);
}

function showQueue(queue) {
  if (!queue) return;
  $("queued").textContent = String(queue.queued);
  $("in-flight").textContent = String(queue.in_flight);
  $("dead-count").textContent = String(queue.dead_letters);
  $("dead-badge").textContent = queue.dead_letters ? `(${queue.dead_letters})` : "";
  state.depth.push(queue);
  if (state.depth.length > 240) state.depth.shift();
  drawDepth();
}

async function refreshStats() {
  state.lastStats = Date.now();
  try {
    const stats = await api("/inspector/api/stats");
    drawChart(stats);
  } catch (_) { /* the live indicator says when the server is gone */ }
}

// --- live updates -------------------------------------------------------------------------------------------

function connect() {
  const live = $("live");
  const source = new EventSource("/inspector/api/events");
  source.addEventListener("open", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; live.className = "live off"; });
  source.addEventListener("update", (event) => {
    const update = JSON.parse(event.data);
    const dead = update.queue ? update.queue.dead_letters : null;
    const deadChanged = dead !== state.deadLetters;
    state.deadLetters = dead;
    showQueue(update.queue);
    if (update.generation !== state.generation) {
      state.generation = update.generation;
      refreshList();
    }
    // The queue moves messages to the dead letters on its own (after the last receive): follow its count.
    if ((deadChanged || update.generation !== state.deadGeneration) && !$("view-dead").hidden) {
      state.deadGeneration = update.generation;
      refreshDead();
    }
    if (Date.now() - state.lastStats > 2000) refreshStats();
  });
}

function debounce(f, ms) {
  let timer;
  return () => { clearTimeout(timer); timer = setTimeout(f, ms); };
}

function showTab(dead) {
  $("view-deliveries").hidden = dead;
  $("view-dead").hidden = !dead;
  $("tab-deliveries").classList.toggle("active", !dead);
  $("tab-dead").classList.toggle("active", dead);
  if (dead) refreshDead();
}

function start() {
  const select_ = $("filter-outcome");
  for (const o of OUTCOMES) select_.append(el("option", { value: o, text: o.replace("_", " ") }));
  const onFilter = debounce(refreshList, 200);
  for (const id of ["filter-topic", "filter-text"]) $(id).addEventListener("input", onFilter);
  select_.addEventListener("change", refreshList);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); refreshList(); });
  $("dead-filters").addEventListener("submit", (e) => { e.preventDefault(); refreshDead(); });
  $("dead-topic").addEventListener("input", debounce(refreshDead, 200));
  $("replay-same").addEventListener("click", () => replay(false));
  $("replay-fresh").addEventListener("click", () => replay(true));
  $("toggle-raw").addEventListener("click", () => showRaw(!state.raw));
  $("redrive").addEventListener("click", redrive);
  $("tab-deliveries").addEventListener("click", () => showTab(false));
  $("tab-dead").addEventListener("click", () => showTab(true));
  refreshList();
  refreshStats();
  connect();
}

document.addEventListener("DOMContentLoaded", start);
