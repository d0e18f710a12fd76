// tokenledger dashboard: plain ES module, no framework, no build step.
// Every total shown comes from the server's answers; the browser only lays numbers out.

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#6366f1", "#22c55e", "#f59e0b", "#ec4899", "#06b6d4", "#a855f7", "#ef4444", "#84cc16"];
const OTHER_COLOR = "#94a3b8";
const SOURCES = ["codex", "every-code", "claude", "gemini", "opencode", "qwen"];
const VIEWS = ["overview", "day", "devices"];
const RANGES = ["today", "7d", "30d", "month", "year", "custom"];
const TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
const CSRF = $('meta[name="csrf-token"]')?.content || "";
const TOKEN_FIELDS = ["input_tokens", "cached_input_tokens", "cache_creation_input_tokens", "output_tokens", "reasoning_output_tokens", "total_tokens"];

const seenModels = new Set();
let current = Promise.resolve();
let loadSeq = 0;
let csv = { name: "tokenledger.csv", rows: [] };

// ---------- dates (browser's time zone) ----------
const pad = (n) => String(n).padStart(2, "0");
const ymd = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
const parseYmd = (s) => {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s || "");
  return m ? new Date(+m[1], +m[2] - 1, +m[3]) : null;
};
const addDays = (d, n) => new Date(d.getFullYear(), d.getMonth(), d.getDate() + n);
const today = () => { const n = new Date(); return new Date(n.getFullYear(), n.getMonth(), n.getDate()); };
function daysBetween(from, to) {
  const out = [];
  for (let d = parseYmd(from), end = parseYmd(to); d && d <= end; d = addDays(d, 1)) out.push(ymd(d));
  return out;
}
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const prettyDay = (s) => { const d = parseYmd(s); return d ? `${MONTHS[d.getMonth()]} ${d.getDate()}, ${d.getFullYear()}` : s; };
const shortDay = (s) => { const d = parseYmd(s); return d ? `${MONTHS[d.getMonth()]} ${d.getDate()}` : s; };

// ---------- numbers (display only) ----------
function abbrev(value) {
  const n = Number(value || 0);
  const units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "K"]];
  for (const [u, s] of units) {
    if (Math.abs(n) >= u) {
      const v = n / u;
      return `${v >= 100 ? v.toFixed(0) : v.toFixed(1).replace(/\.0$/, "")}${s}`;
    }
  }
  return String(Math.round(n));
}
const full = (value) => {
  try { return BigInt(value || "0").toLocaleString("en-US"); } catch { return String(value); }
};
function usd(value) {
  const n = Number(value || 0);
  if (n > 0 && n < 0.01) return "<$0.01";
  return "$" + n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}
const pct = (part, whole) => {
  const p = Number(part || 0), w = Number(whole || 0);
  return w > 0 ? (100 * p) / w : 0;
};

// ---------- URL state ----------
function readState() {
  const q = new URLSearchParams(location.search);
  const s = {
    view: VIEWS.includes(q.get("view")) ? q.get("view") : "overview",
    range: RANGES.includes(q.get("range")) ? q.get("range") : "30d",
    from: q.get("from") || "",
    to: q.get("to") || "",
    source: q.get("source") || "",
    model: q.get("model") || "",
    stack: q.get("stack") === "source" ? "source" : "model",
    day: q.get("day") || "",
  };
  const t = today();
  const ranges = {
    today: [t, t],
    "7d": [addDays(t, -6), t],
    "30d": [addDays(t, -29), t],
    month: [new Date(t.getFullYear(), t.getMonth(), 1), t],
    year: [addDays(t, -364), t],
  };
  if (s.range === "custom" && parseYmd(s.from) && parseYmd(s.to) && s.from <= s.to) {
    // keep the custom days
  } else {
    if (s.range === "custom") s.range = "30d";
    const [f, e] = ranges[s.range];
    s.from = ymd(f); s.to = ymd(e);
  }
  if (!parseYmd(s.day)) s.day = s.to;
  return s;
}
function writeState(patch, push = true) {
  const s = { ...readState(), ...patch };
  const q = new URLSearchParams();
  if (s.view !== "overview") q.set("view", s.view);
  if (s.range !== "30d") q.set("range", s.range);
  if (s.range === "custom") { q.set("from", s.from); q.set("to", s.to); }
  if (s.source) q.set("source", s.source);
  if (s.model) q.set("model", s.model);
  if (s.stack !== "model") q.set("stack", s.stack);
  if (s.view === "day") q.set("day", s.day);
  const url = `${location.pathname}${q.toString() ? "?" + q : ""}`;
  history[push ? "pushState" : "replaceState"](null, "", url);
  load();
}

// ---------- API ----------
async function api(path, params = {}, init = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) q.set(k, v);
  const url = `${path}${q.toString() ? "?" + q : ""}`;
  const res = await fetch(url, { credentials: "same-origin", ...init, headers: { Accept: "application/json", "X-CSRF-Token": CSRF, ...(init.headers || {}) } });
  if (res.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  if (res.status === 204) return null;
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    const err = new Error(body?.error?.message || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return body;
}
const filters = (s) => ({ from: s.from, to: s.to, tz: TZ, source: s.source, model: s.model });

// ---------- small DOM helpers ----------
function el(tag, attrs = {}, ...kids) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k != null) e.append(k);
  return e;
}
const svgEl = (tag, attrs, ...kids) => el("svg:" + tag, attrs, ...kids);
function setMetric(node, value, text, title) {
  node.dataset.value = value;
  node.textContent = text;
  node.title = title || "";
}
function status(msg, isError = false) {
  const s = $("#status");
  s.textContent = msg;
  s.classList.toggle("error", isError);
}
const tip = $("#tip");
function showTip(ev, text) {
  tip.textContent = text;
  tip.hidden = false;
  const r = ev.target.getBoundingClientRect?.();
  const x = ev.clientX ?? (r ? r.left + r.width / 2 : 0);
  const y = ev.clientY ?? (r ? r.top : 0);
  tip.style.left = `${Math.min(x + 12, innerWidth - tip.offsetWidth - 8)}px`;
  tip.style.top = `${Math.max(y - tip.offsetHeight - 10, 8)}px`;
}
const hideTip = () => { tip.hidden = true; };

// ---------- charts ----------
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
// bars: [{key, label, total (number), segments: [{name, value, color}], tipText, aria, onOpen}]
function barChart(container, bars, opts = {}) {
  container.textContent = "";
  const W = 1000, H = opts.height || 260, L = 54, R = 8, T = 10, B = 26;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "chart" });
  const max = niceMax(Math.max(0, ...bars.map((b) => b.total)));
  const iw = W - L - R, ih = H - T - B;
  for (let i = 0; i <= 4; i++) {
    const y = T + ih - (ih * i) / 4;
    svg.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
    svg.append(svgEl("text", { class: "axis", x: L - 8, y: y + 4, "text-anchor": "end" }, abbrev((max * i) / 4)));
  }
  if (!bars.some((b) => b.total > 0)) {
    svg.append(svgEl("text", { class: "empty", x: L + iw / 2, y: T + ih / 2, "text-anchor": "middle" }, opts.empty || "No usage in this range"));
  }
  const n = Math.max(bars.length, 1);
  const step = iw / n, bw = Math.max(1, Math.min(step * 0.72, 42));
  const every = Math.max(1, Math.ceil(n / (opts.maxLabels || 10)));
  bars.forEach((b, i) => {
    const x = L + i * step + (step - bw) / 2;
    const g = svgEl("g", { class: "bar", "data-key": b.key });
    if (b.onOpen) {
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.addEventListener("click", b.onOpen);
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); b.onOpen(); } });
    }
    g.setAttribute("aria-label", b.aria);
    let y = T + ih;
    for (const seg of b.segments) {
      if (seg.value <= 0) continue;
      const h = (seg.value / max) * ih;
      y -= h;
      g.append(svgEl("rect", { x, y, width: bw, height: Math.max(h, 0.5), fill: seg.color }));
    }
    g.append(svgEl("rect", { class: "hit", x: L + i * step, y: T, width: step, height: ih }));
    g.addEventListener("mousemove", (ev) => showTip(ev, b.tipText));
    g.addEventListener("mouseleave", hideTip);
    g.addEventListener("focus", (ev) => showTip(ev, b.tipText));
    g.addEventListener("blur", hideTip);
    svg.append(g);
    if (i % every === 0) {
      svg.append(svgEl("text", { class: "axis", x: L + i * step + step / 2, y: H - 8, "text-anchor": "middle" }, b.label));
    }
  });
  container.append(svg);
}

function heatmap(container, body, onOpen) {
  container.textContent = "";
  const days = body.data || [];
  if (!days.length) return;
  const cell = 12, gap = 3, top = 18, left = 28;
  const first = parseYmd(days[0].day);
  const offset = (first.getDay() + 6) % 7; // Monday first
  const weeks = Math.ceil((days.length + offset) / 7);
  const W = left + weeks * (cell + gap), H = top + 7 * (cell + gap);
  const svg = svgEl("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "group", "aria-label": "Daily usage over the last year; use the daily chart or the day view for details" });
  ["Mon", "", "Wed", "", "Fri", "", ""].forEach((t, i) => t && svg.append(svgEl("text", { x: 0, y: top + i * (cell + gap) + 10 }, t)));
  let lastMonth = -1, lastCol = -9;
  days.forEach((d, i) => {
    const idx = i + offset, col = Math.floor(idx / 7), row = idx % 7;
    const date = parseYmd(d.day);
    if (row === 0 || i === 0) {
      if (date.getMonth() !== lastMonth && col < weeks - 1 && col - lastCol >= 3) {
        lastMonth = date.getMonth();
        lastCol = col;
        svg.append(svgEl("text", { x: left + col * (cell + gap), y: 10 }, MONTHS[lastMonth]));
      }
    }
    const label = `${prettyDay(d.day)}: ${full(d.total_tokens)} tokens, ${usd(d.total_cost_usd)}`;
    const r = svgEl("rect", { class: `cell l${d.level}`, x: left + col * (cell + gap), y: top + row * (cell + gap), width: cell, height: cell, "data-day": d.day, "data-level": d.level }, svgEl("title", {}, label));
    r.addEventListener("click", () => onOpen(d.day));
    svg.append(r);
  });
  container.append(svg);
  container.scrollLeft = container.scrollWidth; // the latest weeks first on narrow screens
}

// ---------- views ----------
function colorFor(names) {
  const m = new Map();
  names.forEach((n, i) => m.set(n, PALETTE[i % PALETTE.length]));
  return m;
}

async function loadOverview(s, seq) {
  const f = filters(s);
  const [daily, models, sources, heat] = await Promise.all([
    api("/api/v1/usage/daily", f),
    api("/api/v1/usage/models", f),
    api("/api/v1/usage/sources", f),
    api("/api/v1/usage/heatmap", { tz: TZ, source: s.source, model: s.model }),
  ]);
  models.data.forEach((m) => seenModels.add(m.model));
  // The stacked series: one daily query per top model or source (at most six).
  const names = (s.stack === "source" ? sources.data.map((r) => r.source) : models.data.map((r) => r.model)).slice(0, 6);
  const series = await Promise.all(names.map((name) => api("/api/v1/usage/daily", { ...f, [s.stack]: name })));
  if (seq !== loadSeq) return;
  fillModelOptions(s);

  const t = daily.summary.totals;
  setMetric($("#kpi-total"), t.total_tokens, abbrev(t.total_tokens), `${full(t.total_tokens)} tokens`);
  setMetric($("#kpi-cost"), t.total_cost_usd, usd(t.total_cost_usd), `$${t.total_cost_usd}`);
  for (const k of ["input_tokens", "cached_input_tokens", "output_tokens", "reasoning_output_tokens"]) {
    const node = $(`#view-overview [data-metric="${k}"]`);
    setMetric(node, t[k], abbrev(t[k]), `${full(t[k])} tokens`);
  }
  $("#kpi-range").textContent = s.from === s.to ? prettyDay(s.from) : `${prettyDay(s.from)} – ${prettyDay(s.to)}`;
  const unpriced = daily.summary.pricing.unpriced_models || [];
  $("#kpi-pricing").textContent = `${daily.summary.pricing.profile} prices` + (unpriced.length ? ` · ${unpriced.length} unpriced model(s)` : "");

  // Daily chart.
  const colors = colorFor(names);
  const byDay = new Map(daily.data.map((r) => [r.day, r]));
  const seriesByDay = series.map((r) => new Map(r.data.map((x) => [x.day, Number(x.total_tokens)])));
  const bars = daysBetween(s.from, s.to).map((day) => {
    const row = byDay.get(day);
    const total = Number(row?.total_tokens || 0);
    const segments = names.map((name, i) => ({ name, value: seriesByDay[i].get(day) || 0, color: colors.get(name) }));
    const shown = segments.reduce((a, x) => a + x.value, 0);
    if (total - shown > 0) segments.push({ name: "other", value: total - shown, color: OTHER_COLOR });
    const lines = segments.filter((x) => x.value > 0).map((x) => `  ${x.name}: ${abbrev(x.value)}`);
    return {
      key: day,
      label: shortDay(day),
      total,
      segments,
      aria: `${prettyDay(day)}: ${full(row?.total_tokens || "0")} tokens, ${usd(row?.total_cost_usd || "0")}. Open the day.`,
      tipText: [`${prettyDay(day)}`, `${full(row?.total_tokens || "0")} tokens · ${usd(row?.total_cost_usd || "0")}`, ...lines].join("\n"),
      onOpen: () => writeState({ view: "day", day }),
    };
  });
  barChart($("#daily-chart"), bars, { label: `Daily tokens stacked by ${s.stack}`, maxLabels: 10 });
  const legend = $("#daily-legend");
  legend.textContent = "";
  names.forEach((n) => legend.append(el("li", {}, el("i", { style: `background:${colors.get(n)}` }), n)));
  if (bars.some((b) => b.segments.some((x) => x.name === "other"))) legend.append(el("li", {}, el("i", { style: `background:${OTHER_COLOR}` }), "other"));
  $$("[data-stack]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.stack === s.stack)));

  // Breakdown tables.
  const total = models.summary.totals;
  breakdown($("#models-table"), models.data.map((r) => ({ name: r.model, color: s.stack === "model" ? colors.get(r.model) : null, badge: r.priced ? null : "unpriced", ...r })), total, (name) => writeState({ model: name }));
  breakdown($("#sources-table"), sources.data.map((r) => ({ name: r.source, color: s.stack === "source" ? colors.get(r.source) : null, ...r })), sources.summary.totals, (name) => writeState({ source: name }));

  // Heatmap (last 365 days).
  heatmap($("#heatmap"), heat, (day) => writeState({ view: "day", day }));
  $("#heatmap-sub").textContent = `${heat.active_days} active day(s) · ${abbrev(heat.summary.totals.total_tokens)} tokens · ${usd(heat.summary.totals.total_cost_usd)}`;

  // CSV of what is on screen.
  const rows = [["section", "key", ...TOKEN_FIELDS, "total_cost_usd"]];
  const line = (section, key, r) => [section, key, ...TOKEN_FIELDS.map((k) => r[k] ?? ""), r.total_cost_usd ?? ""];
  rows.push(line("total", `${s.from}..${s.to}`, t));
  daily.data.forEach((r) => rows.push(line("day", r.day, r)));
  models.data.forEach((r) => rows.push(line("model", r.model, r)));
  sources.data.forEach((r) => rows.push(line("source", r.source, r)));
  csv = { name: `tokenledger-${s.from}-${s.to}${s.source ? "-" + s.source : ""}${s.model ? "-" + s.model : ""}.csv`, rows };

  loadProvider(s, seq);
}

function breakdown(table, rows, totals, onPick) {
  const tbody = $("tbody", table);
  tbody.textContent = "";
  if (!rows.length) {
    tbody.append(el("tr", {}, el("td", { colspan: 4, class: "sub", text: "No usage in this range" })));
  }
  for (const r of rows) {
    const share = pct(r.total_tokens, totals.total_tokens);
    const name = el("span", { class: "name" }, r.color ? el("i", { style: `background:${r.color}` }) : null, el("span", { text: r.name }), r.badge ? el("span", { class: "badge", text: r.badge }) : null);
    const tr = el("tr", { class: "rowlink", tabindex: "0", "aria-label": `Filter by ${r.name}` },
      el("td", {}, name),
      el("td", { class: "num", title: `${full(r.total_tokens)} tokens`, "data-value": r.total_tokens, text: abbrev(r.total_tokens) }),
      el("td", { class: "share" }, el("div", { class: "meter", "aria-hidden": "true" }, el("span", { style: `width:${share.toFixed(1)}%` })), el("span", { class: "pct", text: `${share.toFixed(1)}%` })),
      el("td", { class: "num", "data-value": r.total_cost_usd, text: usd(r.total_cost_usd) }));
    tr.addEventListener("click", () => onPick(r.name));
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") onPick(r.name); });
    tbody.append(tr);
  }
  let tfoot = $("tfoot", table);
  if (!tfoot) { tfoot = el("tfoot"); table.append(tfoot); }
  tfoot.textContent = "";
  tfoot.append(el("tr", {}, el("td", { text: "Total" }), el("td", { class: "num", "data-value": totals.total_tokens, text: abbrev(totals.total_tokens) }), el("td", { class: "share" }), el("td", { class: "num", "data-value": totals.total_cost_usd, text: usd(totals.total_cost_usd) })));
}

async function loadProvider(s, seq) {
  const card = $("#provider-card");
  let body;
  try {
    body = await fetch(`/api/v1/provider-usage?from=${s.from}&to=${s.to}`, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : null));
  } catch { body = null; }
  if (seq !== loadSeq) return;
  if (!body || !Array.isArray(body.data) || !body.data.length) { card.hidden = true; return; }
  const sum = body.summary || {};
  const keys = Object.keys(sum).filter((k) => !["from", "to", "rows"].includes(k)).slice(0, 6);
  const wrap = $("#provider-body");
  wrap.textContent = "";
  const head = el("tr", {}, el("th", { scope: "col", text: "Day" }), ...keys.map((k) => el("th", { scope: "col", class: "num", text: k.replace(/_/g, " ") })));
  const rows = body.data.map((r) => el("tr", {}, el("td", { text: r.day }), ...keys.map((k) => el("td", { class: "num", title: full(r[k]), text: abbrev(r[k]) }))));
  const foot = el("tr", {}, el("td", { text: "Total" }), ...keys.map((k) => el("td", { class: "num", "data-value": sum[k], text: abbrev(sum[k]) })));
  wrap.append(el("table", { class: "data" }, el("thead", {}, head), el("tbody", {}, rows), el("tfoot", {}, foot)));
  card.hidden = false;
}

async function loadDay(s, seq) {
  const body = await api("/api/v1/usage/hourly", { day: s.day, tz: TZ, source: s.source, model: s.model });
  if (seq !== loadSeq) return;
  $("#day-title").textContent = prettyDay(s.day);
  $("#day-pick").value = s.day;
  const t = body.summary.totals;
  setMetric($("#day-total"), t.total_tokens, abbrev(t.total_tokens), `${full(t.total_tokens)} tokens`);
  setMetric($("#day-cost"), t.total_cost_usd, usd(t.total_cost_usd), `$${t.total_cost_usd}`);
  const time = (r) => r.local_start.slice(11, 16);
  let peak = null;
  for (const r of body.data) if (Number(r.total_tokens) > 0 && (!peak || Number(r.total_tokens) > Number(peak.total_tokens))) peak = r;
  $("#day-peak").textContent = peak ? `${time(peak)} · ${abbrev(peak.total_tokens)}` : "–";
  const bars = body.data.map((r) => ({
    key: r.hour_start,
    label: time(r),
    total: Number(r.total_tokens),
    segments: [{ name: "tokens", value: Number(r.total_tokens), color: PALETTE[0] }],
    aria: `${time(r)}: ${full(r.total_tokens)} tokens, ${usd(r.total_cost_usd)}`,
    tipText: `${time(r)}\n${full(r.total_tokens)} tokens · ${usd(r.total_cost_usd)}`,
  }));
  barChart($("#day-chart"), bars, { label: `Half-hour usage on ${s.day}`, maxLabels: 12, height: 220, empty: "No usage on this day" });
  const tbody = $("#day-table tbody");
  tbody.textContent = "";
  const active = body.data.filter((r) => r.total_tokens !== "0");
  if (!active.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "sub", text: "No usage on this day" })));
  for (const r of active) {
    tbody.append(el("tr", { "data-hour": r.hour_start },
      el("td", { text: `${time(r)}–${plus30(time(r))}` }),
      ...["input_tokens", "cached_input_tokens", "output_tokens", "total_tokens"].map((k) => el("td", { class: "num", title: full(r[k]), "data-value": r[k], text: abbrev(r[k]) })),
      el("td", { class: "num", "data-value": r.total_cost_usd, text: usd(r.total_cost_usd) })));
  }
  const rows = [["hour_start", "local_start", ...TOKEN_FIELDS, "total_cost_usd"]];
  body.data.forEach((r) => rows.push([r.hour_start, r.local_start, ...TOKEN_FIELDS.map((k) => r[k]), r.total_cost_usd]));
  csv = { name: `tokenledger-day-${s.day}.csv`, rows };
}

function plus30(hhmm) {
  const [h, m] = hhmm.split(":").map(Number);
  const t = (h * 60 + m + 30) % 1440;
  return `${pad(Math.floor(t / 60))}:${pad(t % 60)}`;
}

function ago(iso) {
  if (!iso) return "never";
  const secs = (Date.now() - Date.parse(iso)) / 1000;
  if (secs < 90) return "just now";
  if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
  if (secs < 129600) return `${Math.round(secs / 3600)} h ago`;
  return `${Math.round(secs / 86400)} days ago`;
}

async function loadDevices(s, seq) {
  const [list, usage] = await Promise.all([
    api("/api/v1/devices"),
    api("/api/v1/usage/devices", { from: s.from, to: s.to, tz: TZ }),
  ]);
  if (seq !== loadSeq) return;
  const byId = new Map(usage.data.map((r) => [r.device_id, r]));
  $("#devices-sub").textContent = `Usage from ${prettyDay(s.from)} to ${prettyDay(s.to)} · ${abbrev(usage.summary.totals.total_tokens)} tokens in all`;
  const tbody = $("#devices-table tbody");
  tbody.textContent = "";
  const rows = [["device_id", "name", "platform", "last_sync", "revoked", ...TOKEN_FIELDS, "share_percent"]];
  for (const d of list.devices) {
    const u = byId.get(d.device_id) || { total_tokens: "0", share_percent: "0" };
    const share = Number(u.share_percent);
    const action = d.revoked
      ? el("span", { class: "badge off", text: "revoked" })
      : el("button", { type: "button", class: "danger", "aria-label": `Revoke ${d.name}`, text: "Revoke", onclick: () => revoke(d) });
    tbody.append(el("tr", { "data-device": d.device_id },
      el("td", {}, el("span", { class: "name" }, el("span", { text: d.name }))),
      el("td", { text: d.platform || "–" }),
      el("td", { title: d.last_seen || "", text: ago(d.last_seen) }),
      el("td", { class: "num", "data-value": u.total_tokens, title: full(u.total_tokens), text: abbrev(u.total_tokens) }),
      el("td", { class: "share" }, el("div", { class: "meter", "aria-hidden": "true" }, el("span", { style: `width:${share.toFixed(1)}%` })), el("span", { class: "pct", text: `${share.toFixed(1)}%` })),
      el("td", { class: "num" }, action)));
    rows.push([d.device_id, d.name, d.platform, d.last_seen || "", String(d.revoked), ...TOKEN_FIELDS.map((k) => u[k] ?? "0"), u.share_percent]);
  }
  if (!list.devices.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "sub", text: "No devices yet. Run `tokenledger login` on a machine." })));
  csv = { name: `tokenledger-devices-${s.from}-${s.to}.csv`, rows };
}

async function revoke(d) {
  if (!confirm(`Revoke ${d.name}? Its token stops working at once.`)) return;
  try {
    await api(`/api/v1/devices/${encodeURIComponent(d.device_id)}`, {}, { method: "DELETE" });
    status(`Revoked ${d.name}.`);
    load();
  } catch (e) {
    status(`Could not revoke ${d.name}: ${e.message}`, true);
  }
}

// ---------- controls ----------
function fillModelOptions(s) {
  const sel = $("#model-filter");
  if (s.model) seenModels.add(s.model);
  const want = ["", ...Array.from(seenModels).sort()];
  if (sel.options.length !== want.length) {
    sel.textContent = "";
    sel.append(el("option", { value: "", text: "All models" }));
    want.slice(1).forEach((m) => sel.append(el("option", { value: m, text: m })));
  }
  sel.value = s.model;
}

function syncControls(s) {
  $$("#presets [data-range]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === s.range)));
  $("#custom-range").hidden = s.range !== "custom";
  $("#from").value = s.from;
  $("#to").value = s.to;
  $("#source-filter").value = s.source;
  fillModelOptions(s);
  for (const v of VIEWS) {
    $(`#view-${v}`).hidden = v !== s.view;
    const tab = $(`.tabs [data-view="${v}"]`);
    if (v === s.view) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  $("#presets").hidden = s.view === "day";
}

function load() {
  const s = readState();
  const seq = ++loadSeq;
  syncControls(s);
  document.body.dataset.state = "loading";
  status("Loading…");
  const run = { overview: loadOverview, day: loadDay, devices: loadDevices }[s.view];
  current = run(s, seq).then(
    () => { if (seq === loadSeq) { status(""); document.body.dataset.state = "ready"; } },
    (e) => { if (seq === loadSeq) { status(`Could not load: ${e.message}`, true); document.body.dataset.state = "error"; } },
  );
  return current;
}

function toCsv(rows) {
  const cell = (v) => { const t = String(v ?? ""); return /[",\n]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t; };
  return rows.map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}

function exportCsv() {
  const text = toCsv(csv.rows);
  window.tokenledger.lastCsv = text;
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = el("a", { href: url, download: csv.name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  status(`Exported ${csv.rows.length - 1} row(s) to ${csv.name}.`);
}

function init() {
  $("#user-name").textContent = $('meta[name="user-name"]')?.content || "";
  $("#tz").textContent = `days in ${TZ}`;
  const srcSel = $("#source-filter");
  SOURCES.forEach((x) => srcSel.append(el("option", { value: x, text: x })));
  $$("#presets [data-range]").forEach((b) => b.addEventListener("click", () => {
    if (b.dataset.range === "custom") {
      const s = readState();
      writeState({ range: "custom", from: s.from, to: s.to });
    } else writeState({ range: b.dataset.range });
  }));
  $("#apply-range").addEventListener("click", () => {
    const from = $("#from").value, to = $("#to").value;
    if (parseYmd(from) && parseYmd(to) && from <= to) writeState({ range: "custom", from, to });
    else status("Pick a start day on or before the end day.", true);
  });
  srcSel.addEventListener("change", () => writeState({ source: srcSel.value }));
  $("#model-filter").addEventListener("change", (e) => writeState({ model: e.target.value }));
  $$("[data-stack]").forEach((b) => b.addEventListener("click", () => writeState({ stack: b.dataset.stack }, false)));
  $$(".tabs [data-view]").forEach((a) => a.addEventListener("click", (ev) => { ev.preventDefault(); writeState({ view: a.dataset.view }); }));
  const shiftDay = (n) => { const s = readState(); writeState({ view: "day", day: ymd(addDays(parseYmd(s.day), n)) }); };
  $("#day-prev").addEventListener("click", () => shiftDay(-1));
  $("#day-next").addEventListener("click", () => shiftDay(1));
  $("#day-pick").addEventListener("change", (e) => { if (parseYmd(e.target.value)) writeState({ view: "day", day: e.target.value }); });
  $("#export-csv").addEventListener("click", exportCsv);
  $("#logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": CSRF } });
    location.href = "/login";
  });
  addEventListener("popstate", load);
  load();
}

// A small handle for tests and scripts: wait for the current view, read the last export.
window.tokenledger = { idle: () => current, lastCsv: "", state: readState, setState: writeState, exportCsv, toCsv: () => toCsv(csv.rows) };
init();
