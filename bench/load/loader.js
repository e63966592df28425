// One load-generator process of the wsglue bench.
//
// Usage: node loader.js HOST PORT SOURCE_ADDRESS [v1]
//
// The orchestrator (bench/__main__.py) starts several of these, each bound to
// its own source address (127.0.0.2, 127.0.0.3, ...) because one address has
// only ~28k ephemeral ports and one process may hold only 20,000 files.  It
// sends one JSON command per line on stdin; each command is answered with
// one JSON line on stdout.  Times are process.hrtime (CLOCK_MONOTONIC) in
// milliseconds, the same clock in every process on the machine, so that a
// broadcast sent by one loader can be timed as it reaches all of them.
//
// Commands:
//   {"cmd":"open","n":N,"concurrency":C,"timeout":S}
//       open N more idle connections with raw-socket handshakes (cheap: the
//       loader must not be the bottleneck), C in flight at once.
//   {"cmd":"arm","tag":T,"timeout":S}
//       expect one message starting with T on every held connection; answer
//       with the arrival times once all arrived or S seconds passed.
//   {"cmd":"trigger","message":M}   send M on the first held connection.
//   {"cmd":"closeall"}              close every held connection.
//   {"cmd":"echo","n":N,"seconds":S,"warmup":W,"client":"raw"|"ws"}
//       N clients in a closed loop (ping, wait for pong, ping ...): raw
//       sockets with prebuilt frames (the default), or `ws` clients.
//   {"cmd":"exit"}
//
// With `v1` every raw connection (held and echo) speaks wsglue.v1 (docs/protocol.md,
// the protocol): it offers the subprotocol, sends {"t":"hello","client":C}
// (C unique per connection) and counts as open only once its
// {"t":"welcome",...} arrived.  Broadcasts then arrive as
// {"t":"m","s":"b","o":N,"d":TEXT} (the tag is looked for in `d`); the
// trigger and the echo pings go out as {"t":"m","id":N,"d":TEXT} with a
// fresh id each (a repeated id would be acked but not handed to the
// handler), and a round trip ends on the handler's {"t":"r","d":"pong"}
// (the {"t":"ack",...} frames are skipped).
'use strict';

const net = require('net');
const readline = require('readline');
const { WebSocket } = require('ws');

const host = process.argv[2];
const port = parseInt(process.argv[3], 10);
const source = process.argv[4];
const v1 = process.argv[5] === 'v1';

const now = () => Number(process.hrtime.bigint()) / 1e6;
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const REQUEST = Buffer.from(
  `GET / HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\n` +
  'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
  (v1 ? 'Sec-WebSocket-Protocol: wsglue.v1\r\n' : '') +
  'Sec-WebSocket-Version: 13\r\n\r\n');
const SELECTED = /\r\nsec-websocket-protocol: *wsglue\.v1\r\n/i;
const HEADER_END = Buffer.from('\r\n\r\n');

// -- raw held connections ------------------------------------------------

const held = [];          // open raw connections
let armed = null;         // {tag, times, expected, timer}

function maskedFrame(opcode, payload) {
  // Client frames must be masked; a zero mask key is valid and costs nothing.
  const len = payload.length;
  if (len > 125) throw new Error('control/trigger frame too long');
  const frame = Buffer.alloc(6 + len);
  frame[0] = 0x80 | opcode;
  frame[1] = 0x80 | len;
  payload.copy(frame, 6);
  return frame;
}

function onFrame(conn, opcode, payload) {
  if (opcode === 0x1 || opcode === 0x2) {
    if (armed !== null && !conn.got && (v1
      ? payload[6] === 0x6d && payload.indexOf(armed.needle, 12) >= 0  // {"t":"m" ... "d":"TAG
      : payload.length >= armed.tag.length &&
        payload.compare(armed.tag, 0, armed.tag.length, 0, armed.tag.length) === 0)) {
      conn.got = true;
      armed.times.push(now());
      if (armed.times.length >= armed.expected) finishArm();
    }
  } else if (opcode === 0x9) {
    conn.sock.write(maskedFrame(0xA, payload));
  } else if (opcode === 0x8) {
    conn.sock.end(maskedFrame(0x8, payload.subarray(0, 2)));
  }
}

function parseFrames(conn) {
  let buf = conn.buf;
  let off = 0;
  for (let i = 0; i < 1e6; i++) {
    if (buf.length - off < 2) break;
    const opcode = buf[off] & 0x0f;
    let len = buf[off + 1] & 0x7f;
    let head = 2;
    if (len === 126) {
      if (buf.length - off < 4) break;
      len = buf.readUInt16BE(off + 2); head = 4;
    } else if (len === 127) {
      if (buf.length - off < 10) break;
      len = Number(buf.readBigUInt64BE(off + 2)); head = 10;
    }
    if (buf.length - off < head + len) break;
    conn.frame(conn, opcode, buf.subarray(off + head, off + head + len));
    off += head + len;
  }
  // A copy: buf may lie in the shared READ_BUFFER.
  conn.buf = off === buf.length ? EMPTY : Buffer.from(buf.subarray(off));
}
const EMPTY = Buffer.alloc(0);

// -- wsglue.v1 frames ------------------------------------------------------
//
// Masked with a fixed, non-zero key (the server unmasks for real).  An echo
// ping is {"t":"m","id":N,"d":"ping"}: its prefix and suffix are masked once
// here (the suffix for each of the four positions it may start at), only
// the digits of the id are masked per frame.

const MASK = Buffer.from([0x37, 0xfa, 0x21, 0x3d]);

function maskedText(text) {
  const payload = Buffer.from(text);
  const len = payload.length;
  if (len > 65535) throw new Error('frame too long');
  const head = len < 126 ? 2 : 4;
  const frame = Buffer.allocUnsafe(head + 4 + len);
  frame[0] = 0x81;
  if (len < 126) frame[1] = 0x80 | len;
  else { frame[1] = 0x80 | 126; frame.writeUInt16BE(len, 2); }
  MASK.copy(frame, head);
  for (let i = 0; i < len; i++) frame[head + 4 + i] = payload[i] ^ MASK[i & 3];
  return frame;
}

const masked = (bytes, at) => Buffer.from(bytes.map((b, i) => b ^ MASK[(at + i) & 3]));
const PING_PREFIX = Buffer.from('{"t":"m","id":');
const PING_SUFFIX = Buffer.from(',"d":"ping"}');
const MASKED_PREFIX = masked(PING_PREFIX, 0);
const MASKED_SUFFIX = [0, 1, 2, 3].map((at) => masked(PING_SUFFIX, at));

function v1Ping(id) {
  const digits = String(id);
  const len = PING_PREFIX.length + digits.length + PING_SUFFIX.length;  // < 126
  const frame = Buffer.allocUnsafe(6 + len);
  frame[0] = 0x81;
  frame[1] = 0x80 | len;
  MASK.copy(frame, 2);
  MASKED_PREFIX.copy(frame, 6);
  let at = PING_PREFIX.length;
  for (let i = 0; i < digits.length; i++, at++) frame[6 + at] = digits.charCodeAt(i) ^ MASK[at & 3];
  MASKED_SUFFIX[at & 3].copy(frame, 6 + at);
  return frame;
}

// Client ids: unique per connection of this run ([A-Za-z0-9_-], 8-64).
let clients = 0;
const CLIENT_PREFIX = `ld${process.pid}_${source.replace(/\./g, '-')}_`;
const helloFrame = () => maskedText(`{"t":"hello","client":"${CLIENT_PREFIX}${clients++}"}`);
const WELCOME = Buffer.from('{"t":"welcome"');

// Local ports are chosen here, not by the kernel.  A connect from a bound
// source address with port 0 makes Linux search the address's ports for a
// free one, and that search grows with the ports in use: past ~10k
// connections per address the loaders spent 8x more time in the kernel
// than in JavaScript, and the 100k ramp ran at ~850 handshakes/s whatever
// the server.  Each loader owns its source address, so counting up from
// FIRST_PORT finds free ports at once; one in use is skipped.
const FIRST_PORT = 10000;
let nextPort = FIRST_PORT;
function takePort() {
  const p = nextPort;
  nextPort = nextPort >= 65535 ? FIRST_PORT : nextPort + 1;
  return p;
}

// One read buffer for every socket of this loader (net.connect's `onread`):
// Node hands each read to the callback in it, without allocating a buffer
// or going through the stream machinery for every read, which matters
// when 10,000 sockets each get a broadcast frame.  The bytes are handled
// before the next read; what must outlive it (a partial frame) is copied.
const READ_BUFFER = Buffer.allocUnsafe(65536);

// Why handshakes failed since the last report: {reason: count}.
let failures = {};
const takeFailures = () => { const f = failures; failures = {}; return f; };

function openOne(timeoutMs, list = held, frame = onFrame) {
  return new Promise((resolve) => {
    const started = now();
    const conn = { sock: null, buf: EMPTY, upgraded: false, open: false, got: false, frame, sentAt: 0, nextId: 0 };
    let settled = false;
    // `why`: what a failure was, counted in `failures` for the report.
    const done = (ok, why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (!ok) {
        conn.sock.destroy();
        failures[why] = (failures[why] || 0) + 1;
      }
      resolve({ ok, started, opened: now() });
    };
    const timer = setTimeout(() => done(false, conn.upgraded ? 'no welcome in time' : 'no 101 in time'), timeoutMs);
    let retries = 100;
    const attempt = () => {
      const sock = net.connect({
        host, port, localAddress: source, localPort: takePort(),
        onread: { buffer: READ_BUFFER, callback: (n, buf) => { received(buf.subarray(0, n)); } },
      });
      conn.sock = sock;
      sock.setNoDelay(true);
      sock.on('connect', () => sock.write(REQUEST));
      sock.on('error', (err) => {
        if (err.code === 'EADDRINUSE' && retries-- > 0 && !settled) {
          sock.removeAllListeners('close');
          sock.destroy();
          attempt();
        } else {
          done(false, `socket error ${err.code}`);
        }
      });
      listen(sock);
    };
    const listen = (sock) => {
      sock.on('close', () => {
        if (conn.open) {
          conn.open = false;
          const i = list.indexOf(conn);
          if (i >= 0) list.splice(i, 1);
        }
        done(false, conn.upgraded ? 'closed before the welcome' : 'closed before the 101');
      });
    };
    const welcomed = (c, opcode, payload) => {
      if (opcode === 0x1 && payload.length >= WELCOME.length &&
          payload.compare(WELCOME, 0, WELCOME.length, 0, WELCOME.length) === 0) {
        c.frame = frame;
        c.open = true;
        list.push(c);
        done(true);
      } else if (opcode === 0x8) {
        done(false, `close ${payload.length >= 2 ? payload.readUInt16BE(0) : ''} before the welcome`);
      } else if (opcode === 0x9) {
        onFrame(c, opcode, payload);
      } else {
        done(false, 'a frame before the welcome');
      }
    };
    // `chunk` lies in READ_BUFFER: parsed now, and copied if kept.
    const received = (chunk) => {
      let buf = conn.buf.length ? Buffer.concat([conn.buf, chunk]) : chunk;
      if (!conn.upgraded) {
        const end = buf.indexOf(HEADER_END);
        if (end < 0) {
          conn.buf = Buffer.from(buf);
          return;
        }
        if (buf.toString('latin1', 0, 12) !== 'HTTP/1.1 101' ||
            (v1 && !SELECTED.test(buf.toString('latin1', 0, end + 2)))) {
          conn.buf = EMPTY;
          return done(false, `answered ${buf.toString('latin1', 9, 12)}${v1 ? ' (or wsglue.v1 not selected)' : ''}`);
        }
        conn.upgraded = true;
        buf = buf.subarray(end + 4);
        if (v1) {
          // Open once welcomed: the frames before it go to `welcomed`.
          conn.frame = welcomed;
          conn.sock.write(helloFrame());
        } else {
          conn.open = true;
          list.push(conn);
          done(true);
        }
      }
      conn.buf = buf;
      if (buf.length) parseFrames(conn);
    };
    attempt();
  });
}

async function open(n, concurrency, timeoutS) {
  const results = [];
  let next = 0, failed = 0;
  const worker = async () => {
    while (next < n && failed < 100) {
      next++;
      const r = await openOne(timeoutS * 1000);
      if (!r.ok) failed++;
      results.push(r);
    }
  };
  const t0 = now();
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, n)) }, worker));
  let ok = 0, first = Infinity, last = 0;
  for (const r of results) {
    if (!r.ok) continue;
    ok++;
    if (r.started < first) first = r.started;
    if (r.opened > last) last = r.opened;
  }
  return { ev: 'opened', ok, failed: n - ok, held: held.length, t0, t1: now(),
           first: ok ? first : t0, last: ok ? last : t0, why: takeFailures() };
}

function finishArm() {
  if (armed === null) return;
  clearTimeout(armed.timer);
  const a = armed;
  armed = null;
  reply({ ev: 'armed', tag: a.tag.toString(), expected: a.expected, times: a.times });
}

function arm(tag, timeoutS) {
  for (const c of held) c.got = false;
  armed = { tag: Buffer.from(tag), needle: Buffer.from('"d":"' + tag), times: [], expected: held.length,
            timer: null };
  armed.timer = setTimeout(finishArm, timeoutS * 1000);
  if (held.length === 0) finishArm();
}

function closeAll(list = held) {
  return new Promise((resolve) => {
    const conns = list.splice(0);
    let left = conns.length;
    if (!left) return resolve();
    const deadline = setTimeout(() => { for (const c of conns) c.sock.destroy(); resolve(); }, 10000);
    for (const c of conns) {
      c.open = false;
      c.sock.once('close', () => { if (--left === 0) { clearTimeout(deadline); resolve(); } });
      c.sock.end(maskedFrame(0x8, Buffer.from([0x03, 0xe8])));
    }
  });
}

// -- echo: raw clients in a closed loop ------------------------------------
//
// Each client writes one prebuilt masked `ping` frame and sends the next when
// a data frame comes back.  The mask key is fixed but not zero, so the server
// does the full unmasking work; building and parsing frames here costs a
// fraction of what a `ws` client spends, which leaves the two cores to the
// server under test.

const ECHO_MASK = MASK;
const ECHO_PING = (() => {
  const payload = Buffer.from('ping');
  const frame = Buffer.alloc(6 + payload.length);
  frame[0] = 0x81;
  frame[1] = 0x80 | payload.length;
  ECHO_MASK.copy(frame, 2);
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ ECHO_MASK[i % 4];
  return frame;
})();

async function echoRaw(n, seconds, warmup) {
  const conns = [];
  const lat = [];
  let measuring = false, stopped = false, count = 0;
  const frame = (conn, opcode, payload) => {
    if (opcode === 0x1 || opcode === 0x2) {
      // wsglue.v1: only the reply {"t":"r",...} ends a round trip (not the ack).
      if (v1 && payload[6] !== 0x72) return;
      const t = now();
      if (measuring && !stopped) { count++; lat.push(Math.round((t - conn.sentAt) * 1000) / 1000); }
      if (!stopped) { conn.sentAt = t; conn.sock.write(v1 ? v1Ping(++conn.nextId) : ECHO_PING); }
    } else {
      onFrame(conn, opcode, payload);
    }
  };
  let next = 0, failed = 0;
  const worker = async () => {
    while (next < n && failed < 100) {
      next++;
      if (!(await openOne(20000, conns, frame)).ok) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(64, n)) }, worker));
  const opened = conns.length;
  for (const c of conns) { c.sentAt = now(); c.sock.write(v1 ? v1Ping(++c.nextId) : ECHO_PING); }
  await new Promise((resolve) => setTimeout(resolve, warmup * 1000));
  measuring = true;
  const tStart = now();
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  stopped = true;
  const tEnd = now();
  await closeAll(conns);
  return { ev: 'echo', opened, failed: n - opened, count, seconds: (tEnd - tStart) / 1000, lat,
           why: takeFailures() };
}

// -- echo: ws clients in a closed loop -------------------------------------

function echo(n, seconds, warmup) {
  return new Promise((resolve) => {
    const clients = [];
    const lat = [];
    let opened = 0, failed = 0, measuring = false, stopped = false, count = 0;
    let tStart = 0, tEnd = 0;
    const finish = () => {
      stopped = true;
      tEnd = now();
      let closed = 0;
      const total = clients.length;
      const done = () => resolve({ ev: 'echo', opened, failed, count,
                                   seconds: (tEnd - tStart) / 1000, lat });
      const guard = setTimeout(() => { for (const c of clients) c.terminate(); done(); }, 5000);
      for (const c of clients) {
        c.once('close', () => { if (++closed === total) { clearTimeout(guard); done(); } });
        c.close();
      }
      if (!total) { clearTimeout(guard); done(); }
    };
    const start = () => {
      setTimeout(() => {
        measuring = true; tStart = now();
        setTimeout(finish, seconds * 1000);
      }, warmup * 1000);
      for (const c of clients) { c.sentAt = now(); c.send('ping'); }
    };
    const giveUp = setTimeout(() => { if (!stopped && opened + failed < n) start(); }, 20000);
    for (let i = 0; i < n; i++) {
      const c = new WebSocket(`ws://${host}:${port}/`, { localAddress: source, perMessageDeflate: false });
      clients.push(c);
      c.on('open', () => { if (++opened + failed === n) { clearTimeout(giveUp); start(); } });
      c.on('error', () => { if (c.readyState !== WebSocket.OPEN && opened + ++failed === n) { clearTimeout(giveUp); start(); } });
      c.on('message', () => {
        const t = now();
        if (measuring && !stopped) { count++; lat.push(Math.round((t - c.sentAt) * 1000) / 1000); }
        if (!stopped) { c.sentAt = t; c.send('ping'); }
      });
    }
  });
}

// -- commands --------------------------------------------------------------

const rl = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on('line', (line) => {
  const cmd = JSON.parse(line);
  queue = queue.then(async () => {
    switch (cmd.cmd) {
      case 'open': reply(await open(cmd.n, cmd.concurrency || 64, cmd.timeout || 10)); break;
      case 'arm': arm(cmd.tag, cmd.timeout || 10); reply({ ev: 'arm-ok' }); break;
      case 'trigger': {
        const t = now();
        if (held.length) {
          const c = held[0];
          held[0].sock.write(v1 ? maskedText(JSON.stringify({ t: 'm', id: ++c.nextId, d: cmd.message }))
            : maskedFrame(0x1, Buffer.from(cmd.message)));
        }
        reply({ ev: 'triggered', t, sent: held.length > 0 });
        break;
      }
      case 'closeall': await closeAll(); reply({ ev: 'closed' }); break;
      case 'echo':
        if (v1 && cmd.client === 'ws') { reply({ ev: 'error', error: 'wsglue.v1 echo needs raw clients' }); break; }
        reply(await (cmd.client === 'ws' ? echo : echoRaw)(cmd.n, cmd.seconds, cmd.warmup));
        break;
      case 'exit': process.exit(0); break;
      default: reply({ ev: 'error', error: `unknown command ${cmd.cmd}` });
    }
  });
});
rl.on('close', () => process.exit(0));
reply({ ev: 'ready', pid: process.pid, source });
