// The Socket.IO peer of `python -m bench.recovery`: a Socket.IO 4.8 server
// with connection state recovery, on the in-memory adapter or, with --redis,
// on @socket.io/redis-streams-adapter (node-redis client).
//
//   node server.js PORT [--redis redis://127.0.0.1:RPORT/0] [--max-disconnection MS]
//
// It speaks the same scenario commands as bench/recovery/handler.py does for
// wsglue:
//   emit("stream", {count, rate, delay}, ack)  numbered messages "n 1".."n count"
//       to this client's socket (io.to(socket.id): the room of the session,
//       which a recovered socket keeps), `rate` a second, the first after
//       `delay` ms; ack("started") once the timer is set.
//   emit("bstart", {rate}, ack)  "b <k>" to everyone (io.emit), `rate` a second
//   emit("bstop", ack)           stop that broadcast
// Prints "listening on PORT" when it accepts connections.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i === -1 ? fallback : process.argv[i + 1];
}

async function main() {
  const port = Number(process.argv[2]);
  const redisUrl = option("--redis", null);
  const maxDisconnectionDuration = Number(option("--max-disconnection", 2 * 60 * 1000));
  const options = {
    connectionStateRecovery: { maxDisconnectionDuration, skipMiddlewares: true },
    transports: ["websocket"],
    // The scenarios cut connections: the server learns it from TCP, as wsglue does.
    pingInterval: 25000,
    pingTimeout: 20000,
  };
  let redisClient = null;
  if (redisUrl) {
    const { createClient } = require("redis");
    const { createAdapter } = require("@socket.io/redis-streams-adapter");
    redisClient = createClient({ url: redisUrl });
    redisClient.on("error", (err) => console.error("redis error", err.message));
    await redisClient.connect();
    options.adapter = createAdapter(redisClient);
  }
  const httpServer = http.createServer();
  const io = new Server(httpServer, options);
  const timers = new Set();
  let broadcast = null;
  let broadcastNumber = 0;

  io.on("connection", (socket) => {
    socket.on("stream", (request, ack) => {
      const room = socket.id;
      const count = Number(request.count);
      const every = 1000 / Number(request.rate);
      let k = 0;
      const start = setTimeout(() => {
        timers.delete(start);
        const loop = setInterval(() => {
          k += 1;
          io.to(room).emit("m", `n ${k}`);
          if (k >= count) {
            clearInterval(loop);
            timers.delete(loop);
          }
        }, every);
        timers.add(loop);
      }, Number(request.delay) || 0);
      timers.add(start);
      if (typeof ack === "function") ack("started");
    });
    socket.on("bstart", (request, ack) => {
      if (broadcast === null) {
        broadcast = setInterval(() => {
          broadcastNumber += 1;
          io.emit("b", `b ${broadcastNumber}`);
        }, 1000 / Number(request.rate));
      }
      if (typeof ack === "function") ack("ok");
    });
    socket.on("bstop", (ack) => {
      if (broadcast !== null) clearInterval(broadcast);
      broadcast = null;
      if (typeof ack === "function") ack("ok");
    });
  });

  httpServer.listen(port, "127.0.0.1", () => {
    console.log(`listening on ${port} (socket.io ${require("socket.io/package.json").version}, ` +
      `${redisUrl ? "redis-streams adapter" : "in-memory adapter"})`);
  });

  const stop = () => {
    for (const t of timers) clearTimeout(t);
    if (broadcast !== null) clearInterval(broadcast);
    io.close();
    if (redisClient) redisClient.quit().catch(() => {});
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
