// The scenario driver of `python -m bench.recovery`: the same scripted
// reconnects against wsglue (a small wsglue.v1 client on `ws`) and against
// Socket.IO (socket.io-client), in one Node runtime.
//
//   node client.js '<json config>'
//
// config: {system: "wsglue"|"socketio", urls: [A, B], scenario: "a"|"b"|"c"|"d"|"e"|"f",
//          clients, concurrency, count, rate, reconnects, pauseMs, longPauseMs,
//          broadcastRate, tailMs}
// Prints one JSON line: {"result": {...}} (see summarize()).
//
// Every client counts by content: the session stream is "n 1".."n count",
// the broadcast "b <k>"; lost = numbers never received, duplicated = numbers
// received more than once. A drop is ws.terminate(): the TCP socket is
// destroyed, no close frame (the network went away).
"use strict";

const crypto = require("crypto");
const net = require("net");
const { performance } = require("perf_hooks");
const WebSocket = require("ws");
const { io } = require("socket.io-client");

const CONNECT_TIMEOUT_MS = 10000;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// -- wsglue.v1 (SPEC §12) ------------------------------------------------------

class GlueClient {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.clientId = "b" + crypto.randomBytes(12).toString("hex");
    this.cookie = null; // the session: Set-Cookie of the first handshake, sent back as Cookie
    this.positions = { s: null, b: null };
    this.nextId = 1;
    this.replies = [];
    this.ws = null;
  }

  connect(url) {
    const started = performance.now();
    return withTimeout(
      new Promise((resolve, reject) => {
        const headers = this.cookie ? { Cookie: this.cookie } : {};
        const ws = new WebSocket(url, ["wsglue.v1"], { headers, perMessageDeflate: false });
        this.ws = ws;
        this.closed = new Promise((done) => ws.once("close", done));
        ws.on("upgrade", (res) => {
          const setCookie = res.headers["set-cookie"];
          if (setCookie && setCookie.length) this.cookie = setCookie[0].split(";")[0].trim();
        });
        ws.on("open", () => {
          const hello = { t: "hello", client: this.clientId };
          if (this.positions.s && this.positions.b) hello.resume = { s: this.positions.s, b: this.positions.b };
          ws.send(JSON.stringify(hello));
        });
        ws.on("message", (data) => {
          const frame = JSON.parse(data.toString());
          if (frame.t === "m") {
            const position = this.positions[frame.s];
            if (position) this.positions[frame.s] = [position[0], frame.o];
            this.onMessage(frame.d);
          } else if (frame.t === "welcome") {
            if (!frame.recovered) this.positions = { s: frame.s, b: frame.b };
            resolve({ recovered: frame.recovered, ms: performance.now() - started });
          } else if (frame.t === "r") {
            const waiter = this.replies.shift();
            if (waiter) waiter(frame.d);
          }
        });
        ws.on("error", reject);
        ws.on("close", (code) => reject(new Error(`closed ${code} before welcome`)));
      }),
      CONNECT_TIMEOUT_MS,
      "wsglue welcome",
    );
  }

  request(text) {
    const reply = new Promise((resolve) => this.replies.push(resolve));
    this.ws.send(JSON.stringify({ t: "m", id: this.nextId++, d: text }));
    return withTimeout(reply, CONNECT_TIMEOUT_MS, `reply to ${text}`);
  }

  stream(count, rate, delay) {
    return this.request(`stream ${count} ${rate} ${delay}`);
  }

  bstart(rate) {
    return this.request(`bstart ${rate}`);
  }

  bstop() {
    return this.request("bstop");
  }

  async drop() {
    this.replies = [];
    this.ws.terminate();
    await withTimeout(this.closed, CONNECT_TIMEOUT_MS, "close after drop");
  }

  // Resolves when the connection was closed under it (the proxy cut it).
  lost() {
    this.replies = [];
    return withTimeout(this.closed, CONNECT_TIMEOUT_MS, "close after the cut");
  }

  close() {
    if (this.ws) this.ws.terminate();
  }
}

// -- Socket.IO 4.8 with connectionStateRecovery ------------------------------

class SioClient {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.socket = null;
  }

  connect(url) {
    const started = performance.now();
    return withTimeout(
      new Promise((resolve, reject) => {
        if (this.socket === null) {
          // Reconnects are driven here (reconnection: false), at the same
          // moments as wsglue's; forceNew: one Manager (one connection) each.
          this.socket = io(url, { transports: ["websocket"], reconnection: false, forceNew: true });
          this.socket.on("m", (text) => this.onMessage(text));
          this.socket.on("b", (text) => this.onMessage(text));
        } else {
          // Reconnect to another server: the Manager opens its next
          // engine at this URI (as if a load balancer sent it elsewhere).
          this.socket.io.uri = url;
          this.socket.connect();
        }
        const onConnect = () => {
          this.socket.off("connect_error", onError);
          resolve({ recovered: Boolean(this.socket.recovered), ms: performance.now() - started });
        };
        const onError = (err) => {
          this.socket.off("connect", onConnect);
          reject(err);
        };
        this.socket.once("connect", onConnect);
        this.socket.once("connect_error", onError);
      }),
      CONNECT_TIMEOUT_MS,
      "socket.io connect",
    );
  }

  emit(event, payload) {
    return withTimeout(
      new Promise((resolve) => {
        if (payload === undefined) this.socket.emit(event, resolve);
        else this.socket.emit(event, payload, resolve);
      }),
      CONNECT_TIMEOUT_MS,
      `ack of ${event}`,
    );
  }

  stream(count, rate, delay) {
    return this.emit("stream", { count, rate, delay });
  }

  bstart(rate) {
    return this.emit("bstart", { rate });
  }

  bstop() {
    return this.emit("bstop");
  }

  async drop() {
    const gone = new Promise((resolve) => this.socket.once("disconnect", resolve));
    this.socket.io.engine.transport.ws.terminate();
    await withTimeout(gone, CONNECT_TIMEOUT_MS, "disconnect after drop");
  }

  lost() {
    if (!this.socket.connected) return Promise.resolve();
    const gone = new Promise((resolve) => this.socket.once("disconnect", resolve));
    return withTimeout(gone, CONNECT_TIMEOUT_MS, "disconnect after the cut");
  }

  close() {
    if (this.socket) this.socket.disconnect();
  }
}

// -- a half-open drop ----------------------------------------------------------

// A TCP proxy of one client: cut() destroys the client's side and leaves the
// server's side open and unread, so the server still believes the old
// connection alive when the client comes back (a phone that changed
// networks). close() ends the server's side too.
class HalfOpenProxy {
  constructor(url) {
    this.target = Number(new URL(url).port);
    this.pairs = new Set();
    this.kept = [];
    this.server = net.createServer((near) => {
      const far = net.connect(this.target, "127.0.0.1");
      const pair = { near, far, cut: false };
      this.pairs.add(pair);
      near.on("error", () => {});
      far.on("error", () => {});
      near.pipe(far);
      far.pipe(near);
      near.on("close", () => {
        this.pairs.delete(pair);
        if (!pair.cut) far.destroy();
      });
      far.on("close", () => near.destroy());
    });
  }

  listen() {
    return new Promise((resolve) => {
      this.server.listen(0, "127.0.0.1", () => resolve(this.server.address().port));
    });
  }

  cut() {
    for (const pair of this.pairs) {
      pair.cut = true;
      pair.far.unpipe(pair.near);
      pair.near.unpipe(pair.far);
      pair.far.pause();
      this.kept.push(pair.far);
      pair.near.destroy();
    }
  }

  close() {
    for (const far of this.kept) far.destroy();
    for (const pair of this.pairs) pair.near.destroy();
    this.server.close();
  }
}

// -- one client through one scenario -----------------------------------------

class Tally {
  constructor() {
    this.n = new Map();
    this.b = new Map();
    this.waiters = [];
    // What arrived, in order, with the drops and the reconnects marked:
    // kept in the JSON for clients that lost or doubled something.
    this.log = [];
  }

  mark(what) {
    this.log.push(what);
  }

  add(text) {
    const [stream, k] = text.split(" ");
    const map = stream === "n" ? this.n : this.b;
    const number = Number(k);
    map.set(number, (map.get(number) || 0) + 1);
    this.log.push(text);
    for (const w of this.waiters.slice()) w();
  }

  // Resolves when `test()` holds, or after `ms` (bounded): never rejects.
  until(test, ms) {
    if (test()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = () => {
        if (test()) finish(true);
      };
      const timer = setTimeout(() => finish(false), ms);
      const finish = (ok) => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(ok);
      };
      this.waiters.push(waiter);
    });
  }

  received() {
    let total = 0;
    for (const v of this.n.values()) total += v;
    return total;
  }
}

function counts(map, low, high) {
  // Lost: numbers in [low, high] never received; duplicated: extra copies.
  let lost = 0;
  let duplicated = 0;
  for (let k = low; k <= high; k++) {
    const c = map.get(k) || 0;
    if (c === 0) lost += 1;
    else duplicated += c - 1;
  }
  return { lost, duplicated };
}

async function runClient(config) {
  const tally = new Tally();
  const Client = config.system === "wsglue" ? GlueClient : SioClient;
  const client = new Client((text) => tally.add(text));
  let [urlA, urlB] = config.urls;
  const record = { reconnects: [], error: null, receivedBeforeDrop: null };
  let proxy = null;
  const reconnect = async (url) => {
    tally.mark("(reconnect)");
    const r = await client.connect(url);
    tally.mark(r.recovered ? "(recovered)" : "(not recovered)");
    record.reconnects.push(r);
  };
  const drop = async () => {
    tally.mark("(drop)");
    await client.drop();
  };
  const { count, rate } = config;
  try {
    if (config.scenario === "f") {
      proxy = new HalfOpenProxy(urlA);
      const port = await proxy.listen();
      urlA = urlA.replace(/:\d+/, `:${port}`);
      urlB = urlA;
    }
    await client.connect(urlA);
    const delay = config.scenario === "c" ? 300 : 0;
    await client.stream(count, rate, delay);
    const streamEnd = performance.now() + delay + (count * 1000) / rate;
    if (config.scenario === "a" || config.scenario === "d" || config.scenario === "e") {
      // Cut somewhere in the first half of the stream, come back after a pause.
      const at = Math.floor(count * (0.2 + 0.3 * Math.random()));
      await tally.until(() => tally.n.size >= at, streamEnd - performance.now() + 5000);
      await drop();
      await sleep(config.scenario === "e" ? config.longPauseMs : config.pauseMs);
      await reconnect(config.scenario === "d" ? urlB : urlA);
    } else if (config.scenario === "f") {
      // As a, but the server's side of the old connection stays open.
      const at = Math.floor(count * (0.2 + 0.3 * Math.random()));
      await tally.until(() => tally.n.size >= at, streamEnd - performance.now() + 5000);
      tally.mark("(half-open cut)");
      const lost = client.lost();
      proxy.cut();
      await lost;
      await sleep(config.pauseMs);
      await reconnect(urlA);
    } else if (config.scenario === "b") {
      for (let i = 0; i < config.reconnects; i++) {
        await sleep(20 + 60 * Math.random());
        await drop();
        await reconnect(urlA);
      }
    } else if (config.scenario === "c") {
      // The stream starts 300 ms after the request: the client leaves at
      // once, before any message, and comes back pauseMs after the first.
      record.receivedBeforeDrop = tally.received() + [...tally.b.values()].reduce((a, b) => a + b, 0);
      await drop();
      await sleep(delay + config.pauseMs);
      await reconnect(urlA);
    }
    await tally.until(() => tally.n.has(count), Math.max(0, streamEnd - performance.now()) + (config.tailMs ?? 3000));
  } catch (err) {
    record.error = String(err && err.message ? err.message : err);
  } finally {
    client.close();
    if (proxy) proxy.close();
  }
  const stream = counts(tally.n, 1, count);
  const bKeys = [...tally.b.keys()];
  const broadcast = bKeys.length
    ? counts(tally.b, Math.min(...bKeys), Math.max(...bKeys))
    : { lost: 0, duplicated: 0 };
  record.stream = stream;
  if (stream.lost || stream.duplicated || broadcast.lost || broadcast.duplicated) {
    record.lostNumbers = [];
    for (let k = 1; k <= count; k++) if (!tally.n.has(k)) record.lostNumbers.push(k);
    record.log = tally.log;
  }
  record.broadcast = broadcast;
  record.broadcastReceived = bKeys.length;
  return record;
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = values.slice().sort((x, y) => x - y);
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[i] * 10) / 10;
}

function summarize(records, config, seconds) {
  const resume = [];
  const s = {
    clients: records.length,
    errors: 0,
    errorSamples: [],
    reconnects: 0,
    recovered: 0,
    notRecovered: 0,
    streamLost: 0,
    streamDuplicated: 0,
    broadcastLost: 0,
    broadcastDuplicated: 0,
    // messages lost by clients that were told recovered: true on every
    // reconnect (a silent loss: the application was not asked to resync)
    lostWhileRecovered: 0,
    duplicatedWhileRecovered: 0,
    clientsWithMessageBeforeDrop: 0,
    samples: [],
  };
  for (const r of records) {
    if (r.error) {
      s.errors += 1;
      if (s.errorSamples.length < 5) s.errorSamples.push(r.error);
    }
    for (const c of r.reconnects) {
      s.reconnects += 1;
      if (c.recovered) s.recovered += 1;
      else s.notRecovered += 1;
      resume.push(c.ms);
    }
    s.streamLost += r.stream.lost;
    s.streamDuplicated += r.stream.duplicated;
    s.broadcastLost += r.broadcast.lost;
    s.broadcastDuplicated += r.broadcast.duplicated;
    if (r.reconnects.length && r.reconnects.every((c) => c.recovered)) {
      s.lostWhileRecovered += r.stream.lost + r.broadcast.lost;
      s.duplicatedWhileRecovered += r.stream.duplicated + r.broadcast.duplicated;
    }
    if (r.receivedBeforeDrop) s.clientsWithMessageBeforeDrop += 1;
    if (r.log && r.reconnects.every((c) => c.recovered) && s.samples.length < 5) {
      // Around each loss or double of a client told "recovered" every time.
      s.samples.push({ lostNumbers: r.lostNumbers.slice(0, 20), log: r.log });
    }
  }
  s.lost = s.streamLost + s.broadcastLost;
  s.duplicated = s.streamDuplicated + s.broadcastDuplicated;
  s.resumeP50Ms = percentile(resume, 50);
  s.resumeP99Ms = percentile(resume, 99);
  s.resumeMaxMs = resume.length ? Math.round(Math.max(...resume) * 10) / 10 : null;
  s.resumeMs = resume.map((ms) => Math.round(ms * 10) / 10);
  s.seconds = Math.round(seconds * 10) / 10;
  s.messagesExpected = records.length * config.count;
  return s;
}

async function main() {
  const config = JSON.parse(process.argv[2]);
  const started = performance.now();
  const Client = config.system === "wsglue" ? GlueClient : SioClient;
  let control = null;
  if (config.broadcastRate > 0) {
    control = new Client(() => {});
    await control.connect(config.urls[0]);
    await control.bstart(config.broadcastRate);
  }
  const records = [];
  let next = 0;
  const worker = async () => {
    while (next < config.clients) {
      next += 1;
      await sleep(50 * Math.random());
      records.push(await runClient(config));
    }
  };
  const workers = [];
  for (let i = 0; i < Math.min(config.concurrency, config.clients); i++) workers.push(worker());
  await Promise.all(workers);
  if (control) {
    await control.bstop().catch(() => {});
    control.close();
  }
  const result = summarize(records, config, (performance.now() - started) / 1000);
  process.stdout.write(JSON.stringify({ result }) + "\n");
  process.exit(0);
}

const hardStop = setTimeout(() => {
  process.stdout.write(JSON.stringify({ error: "client.js: overall time limit" }) + "\n");
  process.exit(2);
}, 600000);
hardStop.unref();

main().catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + "\n");
  process.exit(1);
});
