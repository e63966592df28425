// One client process of the wsglue resume storm (bench/storm.py).
//
// Usage: node storm.js HOST PORT SOURCE_ADDRESS
//
// Holds many wsglue.v1 sessions on raw sockets (a handshake, a frame parser
// and JSON: cheap enough that the clients are not the bottleneck), each
// with its cookie, its client id and its positions in both streams, as a
// browser tab running wsglue.js would.  It never reconnects by itself: the
// orchestrator says when.  One JSON command per line on stdin, one JSON
// answer per line on stdout.  Times are process.hrtime (CLOCK_MONOTONIC) in
// milliseconds, the same clock in every process of the machine.
//
// Commands:
//   {"cmd":"open","n":N,"concurrency":C,"timeout":S}
//       open N new sessions (fresh hello), C at once; answer once each has
//       its welcome: {"ev":"opened","ok","failed","sids":[...]}.
//   {"cmd":"waitclosed","timeout":S}
//       answer once no session has an open socket (the server went away):
//       {"ev":"closed","open","codes":{code: n}}.
//   {"cmd":"drop"}  abort every socket (no close frame: a network blip).
//   {"cmd":"storm","expect":K,"prefix":P,"timeout":S,"settle":MS,"spread":MS}
//       every session reconnects at once (all sockets made in one turn;
//       with a spread, each after a random delay under it),
//       sends its hello with its positions and waits for its welcome and
//       the K messages P1..PK of its session stream.  Answers when all are
//       complete (or S seconds passed) and MS ms more went by (a late
//       duplicate is counted): {"ev":"storm","t0","welcome":[ms...],
//       "done":[ms...],"recovered","unrecovered","missing","duplicated",
//       "unexpected","gaps","retries","closes":{code: n},"incomplete"}.
//   {"cmd":"exit"}
'use strict';

const net = require('net');
const readline = require('readline');
const crypto = require('crypto');

const host = process.argv[2];
const port = parseInt(process.argv[3], 10);
const source = process.argv[4];

const now = () => Number(process.hrtime.bigint()) / 1e6;
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const EMPTY = Buffer.alloc(0);
const HEADER_END = Buffer.from('\r\n\r\n');
const ID_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';

function clientId() {
  const bytes = crypto.randomBytes(16);
  let s = '';
  for (const b of bytes) s += ID_CHARS[b & 63];
  return s;
}

// Local ports are counted up here, not searched by the kernel (see
// loader.js): each process owns its source address.
const FIRST_PORT = 10000;
let nextPort = FIRST_PORT;
function takePort() {
  const p = nextPort;
  nextPort = nextPort >= 65535 ? FIRST_PORT : nextPort + 1;
  return p;
}

function frame(opcode, payload) {
  // Masked with a zero key (valid, and costs nothing to apply).
  const len = payload.length;
  let head;
  if (len < 126) {
    head = Buffer.alloc(6);
    head[1] = 0x80 | len;
  } else {
    head = Buffer.alloc(8);
    head[1] = 0x80 | 126;
    head.writeUInt16BE(len, 2);
  }
  head[0] = 0x80 | opcode;
  return Buffer.concat([head, payload]);
}

function request(session) {
  let text = `GET / HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\n` +
    'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
    'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsglue.v1\r\n';
  if (session.cookie) text += `Cookie: ${session.cookie}\r\n`;
  return Buffer.from(text + '\r\n');
}

const sessions = [];
let storm = null;   // the storm under way

function newSession() {
  return {
    id: clientId(), cookie: null, sid: null, s: null, b: null,
    sock: null, buf: EMPTY, open: false, welcomed: false,
    // the storm's record
    tWelcome: -1, tDone: -1, recovered: null, counts: null, got: 0, retries: 0,
    onWelcome: null, onClose: null,
  };
}

// Open the socket of `session`, send the handshake and the hello; the
// session's onWelcome(frame) and onClose(code) tell how it went.
function connect(session) {
  session.buf = EMPTY;
  session.open = false;
  session.welcomed = false;
  session.closeCode = null;
  let retries = 100;
  const attempt = () => {
    const sock = net.connect({ host, port, localAddress: source, localPort: takePort() });
    session.sock = sock;
    sock.setNoDelay(true);
    sock.on('connect', () => sock.write(request(session)));
    sock.on('data', (chunk) => received(session, sock, chunk));
    sock.on('error', (err) => {
      if (err.code === 'EADDRINUSE' && retries-- > 0 && !session.open) {
        sock.removeAllListeners('close');
        sock.destroy();
        attempt();
      }
    });
    sock.on('close', () => {
      if (session.sock !== sock) return;
      session.sock = null;
      session.open = false;
      const wasWelcomed = session.welcomed;
      session.welcomed = false;
      if (session.onClose) session.onClose(session.closeCode, wasWelcomed);
    });
  };
  attempt();
}

function received(session, sock, chunk) {
  let buf = session.buf.length ? Buffer.concat([session.buf, chunk]) : chunk;
  if (!session.open) {
    const end = buf.indexOf(HEADER_END);
    if (end < 0) { session.buf = buf; return; }
    const head = buf.toString('latin1', 0, end);
    if (!head.startsWith('HTTP/1.1 101') || !/\r\nSec-WebSocket-Protocol: wsglue\.v1/i.test(head)) {
      session.buf = EMPTY;
      session.closeCode = -101;
      sock.destroy();
      return;
    }
    const cookie = /\r\nSet-Cookie: ([^;\r]+)/i.exec(head);
    if (cookie) {
      session.cookie = cookie[1];
      session.sid = cookie[1].split('=')[1].split('.')[0];
    }
    session.open = true;
    buf = buf.subarray(end + 4);
    const hello = { t: 'hello', client: session.id };
    if (session.s !== null) hello.resume = { s: session.s, b: session.b };
    sock.write(frame(0x1, Buffer.from(JSON.stringify(hello))));
  }
  let off = 0;
  while (buf.length - off >= 2) {
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
    const payload = buf.subarray(off + head, off + head + len);
    off += head + len;
    if (opcode === 0x1) {
      message(session, JSON.parse(payload.toString('utf8')));
    } else if (opcode === 0x9) {
      sock.write(frame(0xA, payload));
    } else if (opcode === 0x8) {
      session.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      sock.end(frame(0x8, payload.subarray(0, 2)));
    }
  }
  session.buf = off === buf.length ? EMPTY : Buffer.from(buf.subarray(off));
}

function message(session, f) {
  if (f.t === 'm') {
    const position = f.s === 's' ? session.s : session.b;
    if (storm !== null && f.o !== position[1] + 1) storm.gaps++;
    position[1] = f.o;
    if (storm !== null && f.s === 's' && session.counts !== null) storm.got(session, f.d);
  } else if (f.t === 'welcome') {
    session.welcomed = true;
    const recovered = f.recovered;
    if (!recovered) {
      session.s = [f.s[0], f.s[1]];
      session.b = [f.b[0], f.b[1]];
    }
    if (session.onWelcome) session.onWelcome(f);
  }
}

// -- open: fresh sessions ---------------------------------------------------

function openOne(timeoutMs) {
  return new Promise((resolve) => {
    const session = newSession();
    let settled = false;
    const done = (ok) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.onWelcome = session.onClose = null;
      if (ok) sessions.push(session);
      else if (session.sock) session.sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    session.onWelcome = () => done(true);
    session.onClose = () => done(false);
    connect(session);
  });
}

async function open(n, concurrency, timeoutS) {
  let next = 0, failed = 0;
  const first = sessions.length;
  const worker = async () => {
    while (next < n && failed < 100) {
      next++;
      if (!(await openOne(timeoutS * 1000))) failed++;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, n)) }, worker));
  const opened = sessions.slice(first);
  return { ev: 'opened', ok: opened.length, failed: n - opened.length, sids: opened.map((s) => s.sid) };
}

// -- waiting for the server to go ----------------------------------------------

function waitClosed(timeoutS) {
  return new Promise((resolve) => {
    const codes = {};
    const count = () => sessions.filter((s) => s.sock !== null).length;
    let left = count();
    const finish = () => {
      clearTimeout(timer);
      for (const s of sessions) s.onClose = null;
      resolve({ ev: 'closed', open: count(), codes });
    };
    const timer = setTimeout(finish, timeoutS * 1000);
    for (const s of sessions) {
      s.onClose = (code) => {
        codes[code] = (codes[code] || 0) + 1;
        if (--left === 0) finish();
      };
    }
    if (left === 0) finish();
  });
}

function drop() {
  for (const s of sessions) {
    s.onClose = null;
    if (s.sock) s.sock.destroy();
    s.sock = null;
    s.open = s.welcomed = false;
  }
  return { ev: 'dropped', n: sessions.length };
}

// -- the storm -------------------------------------------------------------

function runStorm(expect, prefix, timeoutS, settleMs, spreadMs) {
  return new Promise((resolve) => {
    const expected = new Map();
    for (let k = 1; k <= expect; k++) expected.set(prefix + k, k - 1);
    const closes = {};
    let complete = 0, lastDone = 0, finished = false;
    let settleTimer = null;
    const t0 = now();
    storm = {
      gaps: 0, unexpected: 0,
      got(session, text) {
        const k = expected.get(text);
        if (k === undefined) { this.unexpected++; return; }
        session.counts[k]++;
        if (session.counts[k] === 1 && ++session.got === expect && session.tWelcome >= 0) {
          session.tDone = now() - t0;
          lastDone = session.tDone;
          if (++complete === sessions.length) settle();
        }
      },
    };
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (settleTimer) clearTimeout(settleTimer);
      let recovered = 0, unrecovered = 0, missing = 0, duplicated = 0, retries = 0, incomplete = 0;
      const welcome = [], done = [];
      for (const s of sessions) {
        s.onWelcome = s.onClose = null;
        if (s.recovered === true) recovered++;
        else if (s.recovered === false) unrecovered++;
        for (const c of s.counts) {
          if (c === 0) missing++;
          else duplicated += c - 1;
        }
        retries += s.retries;
        if (s.tWelcome >= 0) welcome.push(Math.round(s.tWelcome * 1000) / 1000);
        if (s.tDone >= 0) done.push(Math.round(s.tDone * 1000) / 1000);
        else incomplete++;
      }
      const out = { ev: 'storm', t0, sessions: sessions.length, welcome, done, recovered, unrecovered,
                    missing, duplicated, unexpected: storm.unexpected, gaps: storm.gaps, retries,
                    closes, incomplete, lastDone };
      storm = null;
      resolve(out);
    };
    const settle = () => { settleTimer = setTimeout(finish, settleMs); };
    const timer = setTimeout(finish, timeoutS * 1000);
    for (const s of sessions) {
      s.tWelcome = s.tDone = -1;
      s.recovered = null;
      s.counts = new Array(expect).fill(0);
      s.got = 0;
      s.retries = 0;
      s.onWelcome = (f) => {
        if (s.tWelcome >= 0) return;  // a later connection after a retry
        s.tWelcome = now() - t0;
        s.recovered = f.recovered;
        if (s.got === expect) {
          s.tDone = s.tWelcome;
          if (++complete === sessions.length) settle();
        }
      };
      s.onClose = (code, wasWelcomed) => {
        closes[code] = (closes[code] || 0) + 1;
        if (finished) return;
        // Come back as wsglue.js would: soon, with jitter, doubling.
        s.retries++;
        const ceiling = Math.min(5000, 100 * 2 ** Math.min(s.retries - 1, 10));
        setTimeout(() => { if (!finished) connect(s); }, Math.random() * ceiling);
      };
    }
    // All at once: every socket is made in this one turn (or, with a
    // spread, each after a random delay under it, as clients with jitter).
    for (const s of sessions) {
      if (s.sock) { const old = s.sock; s.sock = null; old.destroy(); }
      if (spreadMs > 0) setTimeout(() => { if (!finished) connect(s); }, Math.random() * spreadMs);
      else connect(s);
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
      case 'open': reply(await open(cmd.n, cmd.concurrency || 64, cmd.timeout || 20)); break;
      case 'waitclosed': reply(await waitClosed(cmd.timeout || 30)); break;
      case 'drop': reply(drop()); break;
      case 'storm':
        reply(await runStorm(cmd.expect, cmd.prefix, cmd.timeout || 120, cmd.settle === undefined ? 1000 : cmd.settle,
                             cmd.spread || 0));
        break;
      case 'exit': process.exit(0); break;
      default: reply({ ev: 'error', error: `unknown command ${cmd.cmd}` });
    }
  }).catch((err) => reply({ ev: 'error', error: String(err && err.stack || err) }));
});
rl.on('close', () => process.exit(0));
reply({ ev: 'ready', pid: process.pid, source });
