// The driver of the ingress benchmark (python -m bench.ingress).
//
// Usage: node driver.js WS_PORT API_PORT API_KEY REDIS_PORT STREAM
//
// One process holds the receiving WebSocket clients and sends the load
// (HTTP API requests, or XADDs to the Redis Stream the daemon reads), so
// that every latency is measured on one clock (process.hrtime, monotonic):
// each message carries the time it was sent, and the client that receives
// it subtracts that from the time it arrived.
//
// The clients are plain WebSocket clients (Node `ws`, no subprotocol): they
// get each message's text as it was sent.  Each opens without a cookie, so
// each is a session of its own; its id is the 40-hex value of the
// `Set-Cookie` of its handshake.
//
// One JSON command per line on stdin, one JSON answer per line on stdout:
//   {"cmd":"open","n":N,"concurrency":C}        open N clients (sessions)
//   {"cmd":"publish","seconds":S,"connections":C,"size":B}
//       C keep-alive connections in a closed loop of
//       POST /api/sessions/{sid}/messages to random sessions for S seconds
//   {"cmd":"batch","seconds":S,"connections":C,"messages":M,"size":B}
//       the same with POST /api/batch of M messages to random sessions
//   {"cmd":"burst","n":N,"size":B}
//       N entries written to another key, given the group, then RENAMEd
//       onto the stream the daemon reads: how fast it drains a backlog
//   {"cmd":"steady","rate":R,"seconds":S,"size":B}
//       XADD R entries a second for S seconds: the lag of each
//   {"cmd":"exit"}
// Every wait is bounded (`drain` seconds after the load stops).
'use strict';

const http = require('http');
const net = require('net');
const readline = require('readline');
const path = require('path');
// The bench's load generators' copy of `ws` (bench/load/node_modules).
const { WebSocket } = require(path.join(__dirname, '..', 'load', 'node_modules', 'ws'));

const [wsPort, apiPort] = [parseInt(process.argv[2], 10), parseInt(process.argv[3], 10)];
const apiKey = process.argv[4];
const redisPort = parseInt(process.argv[5], 10);
const stream = process.argv[6];

const now = () => Number(process.hrtime.bigint()) / 1e6;
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// -- the receiving clients ------------------------------------------------

const clients = [];   // {ws, sid}
let phase = null;     // {tag, seen: Uint8Array, lat: [], received, dup, stray, last, first}

function onMessage(data) {
  // "TAG SEQ T padding": TAG names the phase, T the time it was sent.
  const text = data.toString();
  const a = text.indexOf(' ');
  const b = text.indexOf(' ', a + 1);
  const t = now();
  if (phase === null || text.slice(0, a) !== phase.tag) {
    if (phase !== null) phase.stray++;
    return;
  }
  const seq = parseInt(text.slice(a + 1, b), 10);
  const sent = parseFloat(text.slice(b + 1)); // stops at the padding
  if (!(seq >= 0 && seq < phase.seen.length)) { phase.stray++; return; }
  if (phase.seen[seq]) { phase.dup++; return; }
  phase.seen[seq] = 1;
  phase.received++;
  phase.lat.push(t - sent);
  if (phase.first === 0) phase.first = t;
  phase.last = t;
  if (phase.received === phase.expected && phase.done) phase.done();
}

function openOne(timeoutMs) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${wsPort}/`, { perMessageDeflate: false });
    let sid = null;
    const timer = setTimeout(() => { ws.terminate(); resolve(null); }, timeoutMs);
    ws.on('upgrade', (res) => {
      for (const c of [].concat(res.headers['set-cookie'] || [])) {
        const m = /^[^=]+=([0-9a-f]{40})/.exec(c);
        if (m) sid = m[1];
      }
    });
    ws.on('open', () => {
      clearTimeout(timer);
      if (sid === null) { ws.terminate(); resolve(null); return; }
      const c = { ws, sid };
      clients.push(c);
      ws.on('close', () => { const i = clients.indexOf(c); if (i >= 0) clients.splice(i, 1); });
      resolve(c);
    });
    ws.on('message', onMessage);
    ws.on('error', () => { clearTimeout(timer); resolve(null); });
  });
}

async function open(n, concurrency) {
  let next = 0, failed = 0;
  const t0 = now();
  const worker = async () => {
    while (next < n && failed < 100) {
      next++;
      if ((await openOne(10000)) === null) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return { ev: 'opened', held: clients.length, failed, ms: now() - t0 };
}

// -- a phase: what the clients receive --------------------------------------

function startPhase(tag, capacity) {
  phase = { tag, seen: new Uint8Array(capacity), lat: [], received: 0, expected: Infinity,
    dup: 0, stray: 0, first: 0, last: 0, done: null };
  return phase;
}

// Wait until `expected` messages arrived or `seconds` passed.
function drain(p, expected, seconds) {
  p.expected = expected;
  if (p.received >= expected) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => { p.done = null; resolve(); }, seconds * 1000);
    p.done = () => { clearTimeout(timer); p.done = null; resolve(); };
  });
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(p / 100 * (sorted.length - 1))))];
}

function latency(p) {
  const s = Float64Array.from(p.lat).sort();
  return { p50_ms: percentile(s, 50), p99_ms: percentile(s, 99), max_ms: s.length ? s[s.length - 1] : null };
}

function body(tag, seq, size) {
  const head = `${tag} ${seq} ${now().toFixed(3)} `;
  return head.length >= size ? head : head + 'x'.repeat(size - head.length);
}

const randomSid = () => clients[Math.floor(Math.random() * clients.length)].sid;

// -- the HTTP API ------------------------------------------------------------

function post(agent, path, contentType, payload) {
  return new Promise((resolve) => {
    const req = http.request({
      host: '127.0.0.1', port: apiPort, method: 'POST', path, agent,
      headers: { 'Authorization': `Bearer ${apiKey}`, 'Content-Type': contentType,
        'Content-Length': Buffer.byteLength(payload) },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on('error', () => resolve({ status: 'error', body: '' }));
    });
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: e.message === 'timeout' ? 'timeout' : 'error', body: '' }));
    req.end(payload);
  });
}

// C connections each in a closed loop for `seconds`; `make(seq)` gives
// [path, type, payload, messages in it]; `count(body)` the delivered total.
async function closedLoop(tag, cmd, make, count) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: cmd.connections });
  const p = startPhase(tag, cmd.capacity);
  const statuses = {};
  let seq = 0, requests = 0, sent = 0, delivered = 0, overflow = false;
  const t0 = now();
  const stopAt = t0 + cmd.seconds * 1000;
  const worker = async () => {
    while (now() < stopAt) {
      const [path, type, payload, n, next] = make(seq);
      if (next > p.seen.length) { overflow = true; break; }
      seq = next;
      const r = await post(agent, path, type, payload);
      statuses[r.status] = (statuses[r.status] || 0) + 1;
      requests++;
      sent += n;
      if (r.status === 200) delivered += count(r.body);
    }
  };
  await Promise.all(Array.from({ length: cmd.connections }, worker));
  const t1 = now();
  const receivedAtEnd = p.received;
  await drain(p, sent, cmd.drain);
  agent.destroy();
  phase = null;
  return {
    ev: cmd.cmd, seconds: (t1 - t0) / 1000, requests, requests_per_s: requests / ((t1 - t0) / 1000),
    sent, messages_per_s: sent / ((t1 - t0) / 1000), statuses, delivered, received: p.received,
    received_at_end: receivedAtEnd, missing: sent - p.received, duplicates: p.dup, stray: p.stray,
    overflow, ...latency(p),
  };
}

function publish(cmd) {
  const make = (seq) => [`/api/sessions/${randomSid()}/messages`, 'text/plain', body('p', seq, cmd.size), 1, seq + 1];
  return closedLoop('p', cmd, make, (b) => JSON.parse(b).delivered);
}

function batch(cmd) {
  const make = (seq) => {
    const messages = [];
    for (let i = 0; i < cmd.messages; i++) messages.push({ session: randomSid(), data: body('b', seq + i, cmd.size) });
    return ['/api/batch', 'application/json', JSON.stringify({ messages }), cmd.messages, seq + cmd.messages];
  };
  const count = (b) => JSON.parse(b).results.reduce((s, r) => s + r.delivered, 0);
  return closedLoop('b', cmd, make, count);
}

// -- a small Redis client (RESP, pipelined) ------------------------------------

class Redis {
  constructor(port) {
    this.sock = net.connect({ host: '127.0.0.1', port });
    this.sock.setNoDelay(true);
    this.waiting = [];
    this.buf = Buffer.alloc(0);
    this.sock.on('data', (d) => this.received(d));
    this.sock.on('error', (e) => { for (const w of this.waiting.splice(0)) w(e); });
  }

  encode(args) {
    let out = `*${args.length}\r\n`;
    for (const a of args) {
      const s = String(a);
      out += `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
    }
    return out;
  }

  // Send several commands in one write; resolve with their replies.
  pipeline(commands) {
    const replies = commands.map(() => new Promise((resolve) => this.waiting.push(resolve)));
    this.sock.write(commands.map((c) => this.encode(c)).join(''));
    return Promise.all(replies);
  }

  async call(...args) {
    return (await this.pipeline([args]))[0];
  }

  received(data) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, data]) : data;
    let off = 0;
    while (off < this.buf.length) {
      const r = this.parse(off);
      if (r === null) break;
      off = r[1];
      this.waiting.shift()(r[0]);
    }
    this.buf = this.buf.subarray(off);
  }

  parse(off) {
    const end = this.buf.indexOf('\r\n', off);
    if (end < 0) return null;
    const kind = String.fromCharCode(this.buf[off]);
    const line = this.buf.toString('utf8', off + 1, end);
    const next = end + 2;
    if (kind === '+') return [line, next];
    if (kind === '-') return [new Error(line), next];
    if (kind === ':') return [parseInt(line, 10), next];
    if (kind === '$') {
      const n = parseInt(line, 10);
      if (n < 0) return [null, next];
      if (this.buf.length < next + n + 2) return null;
      return [this.buf.toString('utf8', next, next + n), next + n + 2];
    }
    if (kind === '*') {
      const n = parseInt(line, 10);
      if (n < 0) return [null, next];
      const items = [];
      let at = next;
      for (let i = 0; i < n; i++) {
        const r = this.parse(at);
        if (r === null) return null;
        items.push(r[0]);
        at = r[1];
      }
      return [items, at];
    }
    throw new Error(`bad reply from Redis: ${line}`);
  }

  close() { this.sock.end(); }
}

function flat(list) {
  const o = {};
  for (let i = 0; i + 1 < (list || []).length; i += 2) o[list[i]] = list[i + 1];
  return o;
}

async function groupState(redis, group) {
  const groups = await redis.call('XINFO', 'GROUPS', stream);
  for (const g of Array.isArray(groups) ? groups : []) {
    const o = flat(g);
    if (o.name === group) return { pending: o.pending, lag: o.lag, entries_read: o['entries-read'] };
  }
  return null;
}

async function burst(cmd) {
  const redis = new Redis(redisPort);
  const staging = `${stream}:staging`;
  await redis.call('DEL', staging);
  const p = startPhase('r', cmd.n);
  // Written to another key first: the daemon sees none of it while it is
  // written, then all of it at once.
  const t0 = now();
  for (let i = 0; i < cmd.n; i += 1000) {
    const commands = [];
    for (let j = i; j < Math.min(cmd.n, i + 1000); j++) {
      commands.push(['XADD', staging, '*', 'session', randomSid(), 'data', body('r', j, cmd.size)]);
    }
    await redis.pipeline(commands);
  }
  const written = now();
  const last = await redis.call('XINFO', 'STREAM', staging);
  const lastId = flat(last)['last-generated-id'];
  // The group of the daemon, at the start of the staged entries, moved
  // with them by RENAME (a stream's groups are part of its value).
  await redis.call('XGROUP', 'CREATE', staging, cmd.group, '0');
  const renamed = now();
  const r = await redis.call('RENAME', staging, stream);
  if (r instanceof Error) throw r;
  await drain(p, cmd.n, cmd.drain);
  const state = await groupState(redis, cmd.group);
  redis.close();
  phase = null;
  return {
    ev: 'burst', entries: cmd.n, write_ms: written - t0, last_id: lastId, received: p.received,
    missing: cmd.n - p.received, duplicates: p.dup, stray: p.stray,
    first_ms: p.first ? p.first - renamed : null, last_ms: p.last ? p.last - renamed : null,
    entries_per_s: p.received && p.last > renamed ? p.received / ((p.last - renamed) / 1000) : null,
    group_at_end: state,
  };
}

async function steady(cmd) {
  const redis = new Redis(redisPort);
  const total = Math.round(cmd.rate * cmd.seconds);
  const p = startPhase('s', total);
  let produced = 0, inflight = 0, maxInflight = 0;
  const t0 = now();
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((now() - t0) / 1000 * cmd.rate));
      if (due > produced) {
        const commands = [];
        for (; produced < due; produced++) {
          commands.push(['XADD', stream, '*', 'session', randomSid(), 'data', body('s', produced, cmd.size)]);
        }
        inflight += commands.length;
        maxInflight = Math.max(maxInflight, inflight);
        redis.pipeline(commands).then(() => { inflight -= commands.length; });
      }
      if (produced >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  const t1 = now();
  const receivedAtEnd = p.received;
  const stateAtEnd = await groupState(redis, cmd.group);
  await drain(p, total, cmd.drain);
  const stateAfter = await groupState(redis, cmd.group);
  redis.close();
  phase = null;
  return {
    ev: 'steady', rate: cmd.rate, produced, produce_seconds: (t1 - t0) / 1000, received: p.received,
    received_at_end: receivedAtEnd, missing: total - p.received, duplicates: p.dup, stray: p.stray,
    group_at_end: stateAtEnd, group_after_drain: stateAfter, max_xadd_inflight: maxInflight,
    drained_ms: p.last ? p.last - t1 : null, ...latency(p),
  };
}

// -- commands ----------------------------------------------------------------

const commands = { open: (c) => open(c.n, c.concurrency || 32), publish, batch, burst, steady };

let chain = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'exit') {
    for (const c of clients) c.ws.terminate();
    process.exit(0);
  }
  chain = chain.then(() => commands[cmd.cmd](cmd)).then(reply, (e) => reply({ ev: 'error', cmd: cmd.cmd, error: String(e && e.stack || e) }));
});
process.stdin.on('end', () => process.exit(0));
reply({ ev: 'ready' });
