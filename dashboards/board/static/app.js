// Delivery Backbone built-in command view. Vanilla JS, no network beyond this server.
// Every panel is one fixed query of the catalog (/api/query/<id>); values are bound server-side.
"use strict";

const state = { meta: null, page: "national", caseId: "", timer: null, loads: 0, lastRefresh: 0 };
window.boardState = state;

const PAGES = {
  national: {
    controls: ["mission", "agency", "province", "port", "range"],
    panels: [
      { q: "kpi_targets", w: 12, render: renderLights },
      { q: "throughput_today", w: 4, render: (d) => renderTable(d, { hide: ["mission", "stage", "stage_order"], bar: "completions" }) },
      { q: "backlog_by_agency", w: 4, render: (d) => renderTable(d, { bar: "open_total" }) },
      { q: "feed_freshness", w: 4, render: (d) => renderTable(d, { hide: ["topic", "last_event_at"], flags: { silent: "SILENT" } }) },
      { q: "longest_waiting", w: 6, render: (d) => renderTable(d, { hide: ["mission", "stage", "province", "port", "sla_ms"], flags: { overdue: "OVERDUE" } }) },
      { q: "live_alerts", w: 6, render: (d) => renderTable(d, { hide: ["alert_id", "mission", "province", "port", "starts_at", "summary"], limit: 12 }) },
    ],
  },
  journey: {
    controls: ["mission", "agency", "province", "port", "range"],
    panels: [
      { q: "stage_funnel", w: 12, render: renderFunnel },
      { q: "stage_time_by_agency", w: 12, render: (d) => renderTable(d, { hide: ["mission", "stage", "stage_order", "mean_ms"], bar: "time_share", compliance: "mission" }) },
      { q: "hand_over_gaps", w: 12, render: (d) => renderTable(d, { hide: ["mission"] }) },
      { q: "stage_time_by_port_province", w: 12, render: (d) => renderTable(d, { hide: ["mission", "stage", "stage_order"], compliance: "mission" }) },
    ],
  },
  scorecard: {
    controls: ["mission", "agency", "province", "port", "range"],
    panels: [
      { q: "agency_scorecard", w: 12, render: (d) => renderTable(d, { compliance: "mission", handoff: true }) },
      { q: "agency_trend", w: 6, render: renderTrend },
      { q: "collaboration_trend", w: 6, render: renderTrend },
    ],
  },
  money: {
    controls: ["agency", "province", "range"],
    panels: [
      { q: "money_locked", w: 4, render: renderMoneyLocked },
      { q: "money_ageing", w: 4, render: (d) => renderTable(d, { bar: "locked_pkr" }) },
      { q: "money_paid", w: 4, render: (d) => renderTable(d, { hide: ["mission", "stage"], compliance: "money" }) },
      { q: "energy_lag", w: 12, render: (d) => renderTable(d, { hide: ["mission", "stage", "stage_order"], compliance: "energy" }) },
      { q: "energy_cases", w: 12, render: (d) => renderTable(d, { hide: ["stage"], flags: { overdue: "OVERDUE" } }) },
    ],
  },
  alerts: {
    controls: ["mission", "agency", "range"],
    panels: [
      { q: "live_alerts", w: 12, render: (d) => renderTable(d, { hide: ["alert_id"] }) },
      { q: "resolved_alerts", w: 12, render: (d) => renderTable(d, { hide: ["alert_id"] }) },
      { q: "rejected_input", w: 12, render: (d) => renderTable(d, {}) },
    ],
  },
  case: {
    controls: [],
    panels: [
      { q: "case_current", w: 12, render: renderCurrent, needsCase: true },
      { q: "case_stages", w: 12, render: (d) => renderTable(d, { hide: ["journey", "stage", "stage_order"], flags: { over_sla: "OVER SLA" } }), needsCase: true },
      { q: "case_timeline", w: 8, render: renderTimeline, needsCase: true },
      { q: "case_alerts", w: 4, render: (d) => renderTable(d, { hide: ["alert_id", "summary", "ends_at"] }), needsCase: true },
    ],
  },
};

// -- formatting (units follow the column-name contract of dashboards/queries.py) -------------------
function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "–";
  const neg = ms < 0; let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400); s -= d * 86400; const h = Math.floor(s / 3600); s -= h * 3600; const m = Math.floor(s / 60); s -= m * 60;
  let out = d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  return (neg ? "-" : "") + out;
}
function fmtMoney(text) {
  if (text === null || text === undefined) return "–";
  const [whole, frac] = String(text).split(".");
  const sign = whole.startsWith("-") ? "-" : ""; const digits = whole.replace("-", "");
  return `${sign}PKR ${digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",")}${frac !== undefined ? "." + frac.padEnd(2, "0") : ".00"}`;
}
function fmtPct(x) { return x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`; }
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  if (Number.isNaN(d.getTime())) return String(ms); // e.g. a hand-typed ?to=abc: the panels say why
  return d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}
function kind(col) {
  if (col.endsWith("_ms")) return "duration";
  if (col.endsWith("_pkr")) return "money";
  if (col.endsWith("compliance") || col.endsWith("share")) return "ratio";
  if (col.endsWith("_at") || col === "time" || col === "waiting_since" || col === "oldest_since" || col === "window_end") return "time";
  return "plain";
}
function fmt(col, v) {
  switch (kind(col)) {
    case "duration": return fmtDuration(v);
    case "money": return fmtMoney(v);
    case "ratio": return fmtPct(v);
    case "time": return fmtTime(v);
    default: return v === null || v === undefined ? "–" : typeof v === "boolean" ? (v ? "yes" : "no") : String(v);
  }
}
function label(col) { return col.replace(/_ms$/, "").replace(/_pkr$/, " (PKR)").replace(/_/g, " "); }
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function rowsAsObjects(d) { return d.rows.map((r) => Object.fromEntries(d.columns.map((c, i) => [c, r[i]]))); }
function ratingClass(x, target) {
  if (x === null || x === undefined || target === null || target === undefined) return "";
  if (x >= target) return "good";
  return x >= target - state.meta.amber_band ? "warn" : "bad";
}
function missionTarget(kindName) {
  const t = state.meta.thresholds; const mission = currentParams().mission;
  if (kindName === "money" || kindName === "energy") return t[kindName];
  const pick = (m) => (mission && mission !== "all" ? m[mission] : Math.max(...Object.values(m).filter((x) => x !== null)));
  return pick(t[kindName]);
}

// -- renderers ---------------------------------------------------------------------------------------
function renderTable(d, opts = {}) {
  const rows = rowsAsObjects(d).slice(0, opts.limit || 500);
  if (!rows.length) return el("p", { class: "empty", text: "Nothing to show for this selection." });
  const cols = d.columns.filter((c) => !(opts.hide || []).includes(c));
  const max = opts.bar ? Math.max(...rows.map((r) => Number(r[opts.bar]) || 0), 1e-9) : 0;
  const table = el("table");
  table.append(el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", { text: label(c) })))));
  const body = el("tbody");
  rows.forEach((r, i) => {
    const tr = el("tr", { "data-row": String(i) });
    for (const c of cols) {
      const v = r[c];
      const td = el("td", { "data-col": c, "data-raw": v === null || v === undefined ? "" : String(v) });
      if (typeof v === "number" || kind(c) !== "plain") td.classList.add("num");
      if (opts.flags && c in opts.flags) {
        td.append(v ? el("span", { class: "badge bad", text: opts.flags[c] }) : el("span", { class: "badge good", text: "ok" }));
      } else if (c === "case_id" && v) {
        td.append(el("a", { class: "case", href: `#case/${encodeURIComponent(v)}`, text: v }));
      } else if (c === "status") {
        td.append(el("span", { class: `badge ${v === "GREEN" ? "good" : v === "AMBER" ? "warn" : v === "RED" ? "bad" : ""}`, text: v }));
      } else if (c === "severity") {
        td.append(el("span", { class: `badge ${v === "critical" ? "bad" : "warn"}`, text: v }));
      } else {
        td.textContent = fmt(c, v);
        if (opts.compliance && c === "sla_compliance") td.classList.add(ratingClass(v, missionTarget(opts.compliance)) || "x");
        if (opts.handoff && c === "handoff_compliance") td.classList.add(ratingClass(v, missionTarget("handoff")) || "x");
      }
      if (opts.bar === c) {
        td.classList.add("barcell");
        td.prepend(el("span", { class: "bar", style: `width:${Math.round((Number(v) || 0) / max * 80)}px;margin-right:6px` }));
      }
      tr.append(td);
    }
    body.append(tr);
  });
  table.append(body);
  return table;
}

function renderLights(d) {
  const wrap = el("div", { class: "lights" });
  for (const r of rowsAsObjects(d)) {
    const mission = state.meta.missions.find((m) => m.id === r.mission);
    wrap.append(el("div", { class: `light ${r.status.replace(" ", "_")}`, "data-target": r.target, "data-status": r.status, "data-raw": r.sla_compliance === null ? "" : String(r.sla_compliance) },
      el("div", { class: "name", text: r.target_name }),
      el("div", { class: "value", text: r.status === "NO DATA" ? "NO DATA" : fmtPct(r.sla_compliance) }),
      el("div", { class: "meta", text: `${mission ? mission.name : r.mission} · target ${fmtPct(r.target_compliance)} · ${r.completions} completions · ${r.window} window to ${fmtTime(r.window_end)}` })));
  }
  return wrap;
}

function renderFunnel(d) {
  const rows = rowsAsObjects(d);
  if (!rows.length) return el("p", { class: "empty", text: "No case entered a stage in this range." });
  const max = Math.max(...rows.map((r) => r.entered), 1);
  const table = el("table");
  table.append(el("thead", {}, el("tr", {}, ...["stage", "entered", "completed", "still open", "cancelled", ""].map((t) => el("th", { text: t })))));
  const body = el("tbody");
  rows.forEach((r, i) => {
    const bars = el("td", { class: "barcell" },
      el("span", { class: "bar", style: `width:${Math.round(r.completed / max * 160)}px;background:var(--green)` }),
      el("span", { class: "bar", style: `width:${Math.round(r.still_open / max * 160)}px;background:var(--amber)` }),
      el("span", { class: "bar", style: `width:${Math.round(r.cancelled / max * 160)}px;background:var(--grey)` }));
    body.append(el("tr", { "data-row": String(i) },
      el("td", { "data-col": "stage_name", "data-raw": r.stage_name, text: r.stage_name }),
      ...["entered", "completed", "still_open", "cancelled"].map((c) => el("td", { class: "num", "data-col": c, "data-raw": String(r[c]), text: String(r[c]) })),
      bars));
  });
  table.append(body);
  return table;
}

function renderTrend(d) {
  const rows = rowsAsObjects(d);
  if (!rows.length) return el("p", { class: "empty", text: "No completions in this range." });
  const byAgency = new Map();
  for (const r of rows) { if (!byAgency.has(r.owner_agency)) byAgency.set(r.owner_agency, []); byAgency.get(r.owner_agency).push(r); }
  const t0 = Math.min(...rows.map((r) => r.time)); const t1 = Math.max(...rows.map((r) => r.time), t0 + 1);
  const target = missionTarget(d.id === "collaboration_trend" ? "handoff" : "mission");
  const table = el("table");
  table.append(el("thead", {}, el("tr", {}, ...["agency", "trend", "latest day", "completions"].map((t) => el("th", { text: t })))));
  const body = el("tbody");
  for (const [agency, series] of byAgency) {
    const W = 220, H = 34;
    const pts = series.map((r) => `${((r.time - t0) / (t1 - t0) * (W - 4) + 2).toFixed(1)},${(H - 2 - r.sla_compliance * (H - 4)).toFixed(1)}`).join(" ");
    const svg = `<svg class="spark" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">` +
      (target !== null && target !== undefined ? `<line x1="0" x2="${W}" y1="${(H - 2 - target * (H - 4)).toFixed(1)}" y2="${(H - 2 - target * (H - 4)).toFixed(1)}" stroke="#56616d" stroke-dasharray="3,3"/>` : "") +
      `<polyline fill="none" stroke="#3b82c4" stroke-width="2" points="${pts}"/></svg>`;
    const last = series[series.length - 1];
    const spark = el("td"); spark.innerHTML = svg;
    body.append(el("tr", {}, el("td", { "data-col": "owner_agency", "data-raw": agency, text: agency }), spark,
      el("td", { class: `num ${ratingClass(last.sla_compliance, target)}`, "data-col": "sla_compliance", "data-raw": String(last.sla_compliance), text: fmtPct(last.sla_compliance) }),
      el("td", { class: "num", "data-col": "day_completions", "data-raw": String(last.day_completions), text: String(last.day_completions) })));
  }
  table.append(body);
  return table;
}

function renderMoneyLocked(d) {
  const rows = rowsAsObjects(d);
  if (!rows.length) return el("p", { class: "empty", text: "No money stage has open cases." });
  const wrap = el("div");
  for (const r of rows) {
    wrap.append(el("div", { class: "big", "data-col": "locked_pkr", "data-raw": r.locked_pkr === null ? "" : String(r.locked_pkr), text: fmtMoney(r.locked_pkr) }),
      el("dl", { class: "kv" },
        el("dt", { text: "stage" }), el("dd", { text: r.stage_name }),
        el("dt", { text: "open claims" }), el("dd", { "data-col": "open_total", "data-raw": String(r.open_total), text: String(r.open_total) }),
        el("dt", { text: "oldest waits" }), el("dd", { "data-col": "oldest_wait_ms", "data-raw": String(r.oldest_wait_ms), text: fmtDuration(r.oldest_wait_ms) })));
  }
  return wrap;
}

function renderCurrent(d) {
  const rows = rowsAsObjects(d);
  if (!rows.length) return el("p", { class: "empty", "data-testid": "case-no-open", text: `Case ${state.caseId}: no stage is open (complete, cancelled or unknown).` });
  const wrap = el("div");
  for (const r of rows) {
    wrap.append(el("div", { class: "case-current", "data-testid": "case-current" },
      el("div", { class: "big" }, `Waiting on `, el("span", { "data-col": "current_owner", "data-raw": r.current_owner, text: r.current_owner })),
      el("dl", { class: "kv" },
        el("dt", { text: "stage" }), el("dd", { text: r.stage_name }),
        el("dt", { text: "waiting since" }), el("dd", { "data-col": "waiting_since", "data-raw": String(r.waiting_since), text: fmtTime(r.waiting_since) }),
        el("dt", { text: "waited" }), el("dd", { "data-col": "waiting_ms", "data-raw": String(r.waiting_ms), class: r.overdue ? "bad" : "good", text: `${fmtDuration(r.waiting_ms)} (SLA ${fmtDuration(r.sla_ms)})` }))));
  }
  return wrap;
}

function renderTimeline(d) {
  const rows = rowsAsObjects(d);
  if (!rows.length) return el("p", { class: "empty", text: "No events for this case id." });
  const list = el("ol", { class: "timeline" });
  rows.forEach((r, i) => list.append(el("li", { "data-row": String(i), "data-raw": String(r.occurred_at) },
    el("div", { class: "when", text: `${fmtTime(r.occurred_at)} · ${r.topic}` }),
    el("div", {}, el("strong", { "data-col": "agency", text: r.agency }), " ", el("span", { "data-col": "status", class: "badge", text: r.status }), r.detail ? ` ${r.detail}` : ""))));
  return list;
}

// -- data and refresh --------------------------------------------------------------------------------
function currentParams() {
  const p = new URLSearchParams(location.search);
  const out = {};
  for (const k of ["mission", "agency", "province", "port", "range", "to"]) if (p.get(k)) out[k] = p.get(k);
  return out;
}
function setParam(name, value) {
  const p = new URLSearchParams(location.search);
  if (value && value !== "all") p.set(name, value); else p.delete(name);
  history.replaceState(null, "", `${location.pathname}?${p.toString()}${location.hash}`);
}
async function fetchQuery(q, extra = {}) {
  const params = new URLSearchParams({ ...currentParams(), ...extra });
  const res = await fetch(`/api/query/${q}?${params}`);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function fillSelect(id, values, names) {
  const s = document.getElementById(id);
  s.innerHTML = "";
  if (id !== "range") s.append(el("option", { value: "all", text: "All" }));
  for (const v of values) s.append(el("option", { value: v, text: names && names[v] ? `${v} · ${names[v]}` : v }));
  const cur = currentParams()[id];
  s.value = cur || (id === "range" ? state.meta.default_range : "all");
  s.addEventListener("change", () => { setParam(id, s.value); refresh(); });
}

function layout() {
  const page = document.getElementById("page");
  page.innerHTML = "";
  page.dataset.page = state.page;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === state.page);
  const spec = PAGES[state.page];
  for (const id of ["mission", "agency", "province", "port", "range"]) document.getElementById(id).parentElement.style.display = spec.controls.includes(id) ? "" : "none";
  if (state.page === "case") {
    const input = el("input", { id: "case-id", placeholder: "Case id, e.g. EXP-0001, DBK-0003, TAR-004", value: state.caseId });
    const go = el("button", { id: "case-go", text: "Track" });
    const submit = () => { location.hash = `#case/${encodeURIComponent(input.value.trim())}`; };
    go.addEventListener("click", submit);
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") submit(); });
    page.append(el("div", { class: "case-form" }, input, go));
  }
  for (const p of spec.panels) {
    const meta = state.meta.queries[p.q];
    page.append(el("section", { class: `panel w${p.w}`, "data-query": p.q },
      el("h2", { text: meta.title }), el("p", { class: "desc", text: meta.description }), el("div", { class: "body" })));
  }
}

async function refresh() {
  const spec = PAGES[state.page];
  const dot = document.getElementById("live-dot");
  let failed = false;
  await Promise.all(spec.panels.map(async (p) => {
    const section = document.querySelector(`section[data-query="${p.q}"]`);
    if (!section) return;
    const body = section.querySelector(".body");
    if (p.needsCase && !state.caseId) { body.replaceChildren(el("p", { class: "empty", text: "Enter a case id above." })); return; }
    const caseId = state.caseId;
    try {
      const data = await fetchQuery(p.q, p.needsCase ? { case_id: caseId } : {});
      body.replaceChildren(p.render(data));
      section.dataset.loadedTo = String(data.to);
      // panels load in parallel: this says which case a case panel shows now
      if (p.needsCase) section.dataset.caseId = caseId;
    } catch (err) {
      failed = true;
      body.replaceChildren(el("p", { class: "error", text: `Could not load: ${err.message}` }));
    }
  }));
  state.loads += 1; state.lastRefresh = Date.now();
  dot.className = `dot ${failed ? "error" : "live"}`;
  const to = currentParams().to;
  document.getElementById("updated").textContent = `${to ? "as of " + (Number.isFinite(Number(to)) ? fmtTime(Number(to)) : `"${to}"`) : "live"} · updated ${new Date().toISOString().slice(11, 19)} UTC`;
  document.body.dataset.loads = String(state.loads);
}

// Page links are `#<page>` and `#case/<percent-encoded id>` (what alerts link to); `#/case/<id>`,
// the form alerts used before, opens the same page. An id that is not valid percent-encoding
// (e.g. a raw "%" in an old link) is taken as it is.
function decodeCaseId(text) {
  try { return decodeURIComponent(text); } catch (err) { if (err instanceof URIError) return text; throw err; }
}
function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const slash = hash.indexOf("/");
  const page = slash < 0 ? hash : hash.slice(0, slash);
  state.page = Object.prototype.hasOwnProperty.call(PAGES, page) ? page : "national";
  state.caseId = state.page === "case" && slash >= 0 ? decodeCaseId(hash.slice(slash + 1)) : "";
  layout();
  refresh();
}

async function start() {
  state.meta = await (await fetch("/api/meta")).json();
  document.title = state.meta.title;
  fillSelect("mission", state.meta.missions.map((m) => m.id), Object.fromEntries(state.meta.missions.map((m) => [m.id, m.name])));
  fillSelect("agency", state.meta.agencies);
  fillSelect("province", Object.keys(state.meta.provinces), state.meta.provinces);
  fillSelect("port", Object.keys(state.meta.ports), state.meta.ports);
  fillSelect("range", state.meta.ranges);
  window.addEventListener("hashchange", route);
  route();
  state.timer = setInterval(refresh, state.meta.refresh_ms);
}

start().catch((err) => { document.getElementById("updated").textContent = `error: ${err.message}`; });
