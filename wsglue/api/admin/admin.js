// The wsglue admin page: plain JavaScript, no build step.  It asks for an
// API key (kept in sessionStorage, so it is gone with the tab), then reads
// GET /api/stats and GET /api/sessions every second, plots the last five
// minutes, and closes a session's tabs with DELETE /api/sessions/{sid}.
"use strict";

(function () {
  const KEY = "wsglue-admin-key";
  const PERIOD_MS = 1000;
  const WINDOW_S = 300;
  const $ = (id) => document.getElementById(id);

  let samples = []; // {t, connections, sessions, rateIn, rateOut}
  let last = null; // the previous /api/stats answer
  let timer = null;

  function key() {
    return sessionStorage.getItem(KEY);
  }

  class Unauthorized extends Error {}

  async function call(method, path) {
    const response = await fetch(path, {
      method,
      headers: { Authorization: "Bearer " + key() },
      cache: "no-store",
    });
    if (response.status === 401) throw new Unauthorized("the key was refused");
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    return body;
  }

  function status(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = "status " + (kind || "");
  }

  function showLogin(message) {
    clearInterval(timer);
    timer = null;
    $("board").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    status("not connected");
    $("key").focus();
  }

  function showBoard() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget").hidden = false;
    samples = [];
    last = null;
    tick();
    timer = setInterval(tick, PERIOD_MS);
  }

  async function tick() {
    try {
      const [stats, page] = await Promise.all([call("GET", "/api/stats"), call("GET", "/api/sessions?limit=1000")]);
      record(stats);
      renderSessions(page);
      status("live, updated " + new Date(stats.time * 1000).toLocaleTimeString(), "ok");
    } catch (e) {
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(KEY);
        showLogin("That key was refused.");
      } else {
        status("cannot reach the API: " + e.message, "bad");
      }
    }
  }

  function record(stats) {
    let rateIn = 0;
    let rateOut = 0;
    if (last !== null && stats.time > last.time) {
      const dt = stats.time - last.time;
      // A counter that went down (a worker restarted) counts from zero.
      rateIn = Math.max(0, stats.messages_received - last.messages_received) / dt;
      rateOut = Math.max(0, stats.messages_sent - last.messages_sent) / dt;
    }
    last = stats;
    samples.push({ t: stats.time, connections: stats.connections, sessions: stats.sessions, rateIn, rateOut });
    samples = samples.filter((s) => s.t >= stats.time - WINDOW_S);
    $("sessions").textContent = stats.sessions;
    $("connections").textContent = stats.connections;
    $("rate-in").textContent = rateIn.toFixed(rateIn < 10 ? 1 : 0);
    $("rate-out").textContent = rateOut.toFixed(rateOut < 10 ? 1 : 0);
    plot();
  }

  function plot() {
    const canvas = $("plot");
    const ctx = canvas.getContext("2d");
    const w = canvas.width;
    const h = canvas.height;
    const pad = { l: 48, r: 10, t: 10, b: 22 };
    ctx.clearRect(0, 0, w, h);
    const now = samples.length ? samples[samples.length - 1].t : 0;
    const top = Math.max(1, ...samples.map((s) => Math.max(s.connections, s.rateIn, s.rateOut)));
    const scale = niceCeiling(top);
    const x = (t) => pad.l + ((t - (now - WINDOW_S)) / WINDOW_S) * (w - pad.l - pad.r);
    const y = (v) => h - pad.b - (v / scale) * (h - pad.t - pad.b);

    ctx.strokeStyle = "#e3e6ec";
    ctx.fillStyle = "#5b6477";
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (scale * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.l, y(v));
      ctx.lineTo(w - pad.r, y(v));
      ctx.stroke();
      ctx.fillText(formatNumber(v), 4, y(v) + 4);
    }
    for (let m = 0; m <= 5; m++) {
      const label = m === 0 ? "now" : "-" + m + " min";
      ctx.fillText(label, x(now - m * 60) - (m === 0 ? 20 : 14), h - 6);
    }
    line(ctx, x, y, "connections", "#2f6fde");
    line(ctx, x, y, "rateIn", "#1a9c5b");
    line(ctx, x, y, "rateOut", "#d9822b");
  }

  function line(ctx, x, y, field, color) {
    if (samples.length < 2) return;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s[field])) : ctx.moveTo(x(s.t), y(s[field]))));
    ctx.stroke();
  }

  function niceCeiling(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function formatNumber(v) {
    return v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k" : String(Math.round(v * 10) / 10);
  }

  function renderSessions(page) {
    const body = $("session-list");
    const rows = page.sessions.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.sid = s.id;
      const sid = document.createElement("td");
      sid.className = "sid";
      sid.textContent = s.id;
      const conns = document.createElement("td");
      conns.textContent = s.connections === null ? "elsewhere" : String(s.connections);
      const action = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "disconnect";
      button.textContent = "disconnect";
      button.addEventListener("click", () => disconnect(s.id, button));
      action.appendChild(button);
      tr.append(sid, conns, action);
      return tr;
    });
    body.replaceChildren(...rows);
    $("session-count").textContent = "(" + page.sessions.length + (page.next ? "+" : "") + ")";
  }

  async function disconnect(sid, button) {
    button.disabled = true;
    try {
      const reason = encodeURIComponent("closed from the admin page");
      await call("DELETE", "/api/sessions/" + sid + "?code=4000&reason=" + reason);
      tick();
    } catch (e) {
      button.disabled = false;
      status("could not disconnect " + sid.slice(0, 8) + ": " + e.message, "bad");
    }
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    showBoard();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin();
  });

  if (key()) showBoard();
  else showLogin();
})();
