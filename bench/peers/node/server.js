// The Node peer of the wsglue bench: the seed's stack (Node + ws) speaking
// the same protocol as `twistd wsglue --handler bench.handler:Bench`:
//   - WebSocket at path /, a session cookie on the handshake (Set-Cookie
//     with a fresh 40-hex id when the request carries no valid one);
//   - text "ping" -> "pong", "broadcast <payload>" -> <payload> to every
//     open connection, anything else -> "ok".
// Usage: node server.js PORT [HOST]
'use strict';

const http = require('http');
const crypto = require('crypto');
const { WebSocketServer, WebSocket } = require('ws');

const port = parseInt(process.argv[2] || '9997', 10);
const host = process.argv[3] || '127.0.0.1';
const COOKIE = 'CookieName';
const SID = /^"?([0-9a-f]{40})"?$/;

function sessionFrom(header) {
  if (!header) return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() !== COOKIE) continue;
    const m = SID.exec(part.slice(eq + 1).trim());
    if (m) return m[1];
  }
  return null;
}

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({ noServer: true, clientTracking: true, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  let sid = sessionFrom(req.headers.cookie);
  const extra = [];
  if (sid === null) {
    sid = crypto.randomBytes(20).toString('hex');
    extra.push(`Set-Cookie: ${COOKIE}=${sid}; Path=/; HttpOnly; SameSite=Lax`);
  }
  wss.once('headers', (headers) => { for (const h of extra) headers.push(h); });
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.sid = sid;
    wss.emit('connection', ws, req);
  });
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (isBinary) { ws.close(1003, 'binary messages are not supported'); return; }
    const text = data.toString();
    if (text === 'ping') { ws.send('pong'); return; }
    if (text.startsWith('broadcast ')) {
      const payload = text.slice(10);
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(payload);
      }
      return;
    }
    ws.send('ok');
  });
  ws.on('error', () => {});
});

server.listen(port, host, 4096, () => {
  process.stdout.write(`listening on ws://${host}:${port}/\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    for (const client of wss.clients) client.terminate();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
