// The metering console: plain JavaScript over the gateway's API, nothing fetched from elsewhere.
// The key lives in this tab's sessionStorage only; every value reaches the page as text
// (textContent), never as HTML.
"use strict";

const KEY = "metering-console-key";
const POLL_MS = 2000;
const HISTORY = 60; // points on the rate chart: 2 minutes at POLL_MS
const COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#495057"];

const state = { key: null, admin: false, timer: null, prev: null, history: [] };

const $ = (id) => document.getElementById(id);

async function api(path) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${state.key}` },
    cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { status: response.status, body };
}

function detail(answer) {
  const body = answer.body || {};
  const extra = (body.extra || []).map((e) => `${e.key}: ${e.message}`).join("; ");
  return `${answer.status}: ${body.detail || "no answer"}${extra ? ` (${extra})` : ""}`;
}

function rows(tableId, items, cells) {
  const tbody = $(tableId).querySelector("tbody");
  tbody.replaceChildren();
  for (const item of items) {
    const tr = document.createElement("tr");
    for (const value of cells(item)) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

function text(id, value) {
  $(id).textContent = value;
}

// ---- log in / out

async function logIn(key) {
  state.key = key;
  const me = await api("/api/v1/whoami");
  if (me.status === 401) return "the gateway refused this key (401)";
  if (me.status !== 200) return `the gateway answered ${detail(me)}`;
  const scopes = me.body.scopes;
  state.admin = scopes.includes("admin");
  if (!state.admin && !scopes.includes("read")) {
    return `this key (${me.body.name}) has neither the read nor the admin scope`;
  }
  sessionStorage.setItem(KEY, key);
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  text("who", state.admin ? "admin key" : "read key");
  $("who").title = me.body.name;
  startLive();
  if (state.admin) loadAudit();
  else text("audit-note", "The audit log needs an admin key.");
  return null;
}

function logOut() {
  sessionStorage.removeItem(KEY);
  if (state.timer) clearInterval(state.timer);
  Object.assign(state, { key: null, admin: false, timer: null, prev: null, history: [] });
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  text("who", "");
  $("key").value = "";
}

// ---- live view

function startLive() {
  if (!state.admin) {
    text("live-note", "The live view needs an admin key (GET /api/v1/ops/counters).");
    return;
  }
  text("live-note", "");
  poll();
  state.timer = setInterval(poll, POLL_MS);
}

function perSecond(cur, prev, seconds) {
  const rates = {};
  for (const [name, total] of Object.entries(cur)) {
    rates[name] = Math.max(0, (total - ((prev || {})[name] || 0)) / seconds);
  }
  return rates;
}

async function poll() {
  const answer = await api("/api/v1/ops/counters");
  if (answer.status !== 200) {
    text("live-note", `counters: ${detail(answer)}`);
    return;
  }
  const cur = answer.body;
  const prev = state.prev;
  state.prev = cur;
  const seconds = prev ? Math.max(cur.at - prev.at, 1e-3) : 1;
  const debits = perSecond(cur.debits, prev ? prev.debits : cur.debits, seconds);
  const holds = perSecond(cur.reservations || {}, prev ? prev.reservations : cur.reservations, seconds);
  if (prev) {
    state.history.push({ at: cur.at, rates: debits });
    if (state.history.length > HISTORY) state.history.shift();
  }
  const ok = (debits.ok || 0) + (debits.replay || 0);
  const refused = (debits.insufficient_credits || 0) + (debits.monthly_cap_reached || 0);
  text("rate-ok", prev ? ok.toFixed(1) : "…");
  text("rate-402", prev ? refused.toFixed(1) : "…");
  const flusher = cur.flusher;
  text("flusher-status", `${flusher.status} (${flusher.running} running)`);
  $("flusher-status").className = flusher.status === "ok" ? "good" : "bad";
  text("flush-lag", `${flusher.oldest_event_age_seconds} s`);
  text("backlog", String(flusher.backlog));
  text("dead-letters", String(flusher.dead_letters || 0));
  $("dead-letters").className = flusher.dead_letters ? "bad" : "good";
  rows("outcomes", Object.keys(cur.debits).sort(), (k) => [k, (debits[k] || 0).toFixed(1), cur.debits[k]]);
  rows("reservations", Object.keys(cur.reservations || {}).sort(), (k) => [
    k,
    (holds[k] || 0).toFixed(1),
    cur.reservations[k],
  ]);
  rows("spenders", cur.top_spenders, (s) => [s.user_id, s.tier, s.period_spent, s.credits_remaining]);
  const shards = flusher.backlog_per_shard.map((n, i) => [i, n]).filter(([, n]) => n > 0);
  rows("shards", shards, (s) => s);
  drawRates();
}

function drawRates() {
  const canvas = $("rate-chart");
  const names = [...new Set(state.history.flatMap((p) => Object.keys(p.rates)))].sort();
  const series = names.map((name) => state.history.map((p) => p.rates[name] || 0));
  lineChart(canvas, series, names);
  const legend = $("rate-legend");
  legend.replaceChildren();
  names.forEach((name, i) => {
    const span = document.createElement("span");
    span.style.color = COLORS[i % COLORS.length];
    span.textContent = `■ ${name} `;
    legend.appendChild(span);
  });
}

function axes(ctx, canvas, top) {
  const pad = 40;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#adb5bd";
  ctx.fillStyle = "#495057";
  ctx.font = "12px sans-serif";
  ctx.beginPath();
  ctx.moveTo(pad, 10);
  ctx.lineTo(pad, canvas.height - 20);
  ctx.lineTo(canvas.width - 10, canvas.height - 20);
  ctx.stroke();
  ctx.fillText(formatNumber(top), 2, 16);
  ctx.fillText("0", 2, canvas.height - 20);
  return { x0: pad, y0: canvas.height - 20, w: canvas.width - pad - 10, h: canvas.height - 30 };
}

function formatNumber(n) {
  return n >= 100 ? n.toFixed(0) : n >= 1 ? n.toFixed(1) : n.toFixed(3);
}

function lineChart(canvas, series, names) {
  const ctx = canvas.getContext("2d");
  const top = Math.max(1, ...series.flat());
  const box = axes(ctx, canvas, top);
  const points = Math.max(2, HISTORY);
  series.forEach((values, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    values.forEach((v, j) => {
      const x = box.x0 + ((points - values.length + j) / (points - 1)) * box.w;
      const y = box.y0 - (v / top) * box.h;
      if (j === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  canvas.dataset.series = names.join(",");
}

function barChart(canvas, labels, values) {
  const ctx = canvas.getContext("2d");
  const top = Math.max(1e-6, ...values);
  const box = axes(ctx, canvas, top);
  const width = box.w / Math.max(1, values.length);
  ctx.fillStyle = COLORS[0];
  values.forEach((v, i) => {
    const h = (v / top) * box.h;
    ctx.fillRect(box.x0 + i * width + 1, box.y0 - h, Math.max(1, width - 2), h);
  });
  ctx.fillStyle = "#495057";
  if (labels.length) {
    ctx.fillText(labels[0], box.x0, canvas.height - 4);
    const last = labels[labels.length - 1];
    ctx.fillText(last, canvas.width - 10 - ctx.measureText(last).width, canvas.height - 4);
  }
  canvas.dataset.bars = String(values.filter((v) => v > 0).length);
}

// ---- user lookup

async function lookUp(user) {
  text("user-error", "");
  const path = encodeURIComponent(user); // a '/' in an id goes as %2F
  const balance = await api(`/api/v1/credits/balance?user_id=${path}`);
  if (balance.status !== 200) {
    $("user-view").hidden = true;
    text("user-error", `balance: ${detail(balance)}`);
    return;
  }
  const b = balance.body;
  text("u-remaining", b.credits_remaining);
  text("u-held", b.credits_held);
  text("u-spent", b.period_spent);
  text("u-tier", b.tier);
  text("u-reset", b.last_reset);
  text("u-expiring", b.expiring ? `${b.expiring.amount} at ${b.expiring.at}` : "nothing");
  $("user-view").hidden = false;
  $("user-view").dataset.user = b.user_id;
  const since = new Date(Date.now() - 30 * 86400 * 1000).toISOString().slice(0, 10);
  const [blocks, ledger, usage] = await Promise.all([
    api(`/api/v1/credits/${path}/grants`),
    api(`/api/v1/credits/${path}/transactions?limit=25`),
    api(`/api/v1/credits/${path}/usage?group_by=day&from=${since}T00:00:00Z`),
  ]);
  if (blocks.status === 200) {
    rows("blocks", blocks.body.grants, (g) => [g.kind, g.remaining, g.amount, g.priority, g.expires_at || "never"]);
  }
  if (ledger.status === 200) {
    rows("ledger", ledger.body.transactions, (t) => [
      t.created_at,
      t.type,
      t.amount,
      t.balance_after,
      t.request_id,
      t.model,
    ]);
    const waiting = ledger.body.unflushed_events;
    text("ledger-note", waiting ? `${waiting} newer changes are on their way to the ledger.` : "");
  } else {
    rows("ledger", [], () => []);
    text("ledger-note", `ledger: ${detail(ledger)}`);
  }
  if (usage.status === 200) {
    const used = new Map(usage.body.groups.map((g) => [g.key, Number(g.credits)]));
    const days = [];
    for (let t = Date.parse(`${since}T00:00:00Z`); t <= Date.now(); t += 86400 * 1000) {
      days.push(new Date(t).toISOString().slice(0, 10)); // every day, used or not
    }
    barChart($("usage-chart"), days, days.map((d) => used.get(d) || 0));
    text("usage-note", `${usage.body.total_requests} requests, ${usage.body.total_credits} credits since ${since}`);
  } else {
    text("usage-note", `usage: ${detail(usage)}`);
  }
}

// ---- audit log

async function loadAudit() {
  const answer = await api("/api/v1/audit?limit=100");
  if (answer.status !== 200) {
    text("audit-note", `audit log: ${detail(answer)}`);
    return;
  }
  text("audit-note", "");
  rows("audit-log", answer.body.entries, (e) => [e.at, e.actor, e.action, e.user_id, e.target, e.amount]);
}

// ---- wiring

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.tab === name);
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== name;
  if (name === "audit" && state.admin) loadAudit();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    text("login-error", "");
    const failed = await logIn($("key").value.trim());
    if (failed) {
      state.key = null;
      text("login-error", failed);
    }
  });
  $("logout").addEventListener("click", logOut);
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    lookUp($("user-id").value);
  });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  }
  const saved = sessionStorage.getItem(KEY);
  if (saved) logIn(saved).then((failed) => failed && logOut());
});
