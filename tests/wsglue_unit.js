// Checks of static/scripts/wsglue.js alone, in the browser, with a fake
// WebSocket and fake timers in place of the real ones: run by
// tests/wsglue_unit_check.py after wsglue.js is loaded; returns
// {name: value} for tests/test_wsglue_js.py to assert on.
(function () {
  "use strict";
  var sockets = [];
  var timers = [];

  function FakeSocket(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.closedWith = null;
    this.protocol = "";
    sockets.push(this);
  }
  FakeSocket.prototype.send = function (text) {
    this.rawSent = (this.rawSent || []).concat([text]);
    try { this.sent.push(JSON.parse(text)); } catch (e) { /* plain text */ }
  };
  FakeSocket.prototype.close = function (code) { this.closedWith = code === undefined ? null : code; };
  // What the server does to the socket.
  FakeSocket.prototype.serverOpens = function () {
    this.protocol = "wsglue.v1";
    this.onopen && this.onopen({});
  };
  FakeSocket.prototype.serverSends = function (frame) {
    this.onmessage && this.onmessage({data: JSON.stringify(frame)});
  };
  FakeSocket.prototype.serverCloses = function (code) {
    this.onclose && this.onclose({code: code});
  };

  window.WebSocket = FakeSocket;
  window.setTimeout = function (f, ms) { timers.push({f: f, ms: ms, live: true}); return timers.length; };
  window.clearTimeout = function (id) { if (id > 0) { timers[id - 1].live = false; } };
  Math.random = function () { return 0.999; };

  function live() { return timers.filter(function (t) { return t.live; }); }
  // The one pending timer that is not the connection's own timeout (whose
  // delay is `timeout` seconds): the reconnect.
  function fireReconnect() {
    var pending = live().filter(function (t) { return t.ms !== 10000; });
    if (pending.length !== 1) { throw new Error("reconnect timers pending: " + pending.length); }
    pending[0].live = false;
    pending[0].f();
  }
  function last() { return sockets[sockets.length - 1]; }

  var out = {};
  var states = [];
  var messages = [];
  var glue = new WsGlue("ws://example.test/", {
    onstate: function (s, d) { states.push([s, d]); },
    onmessage: function (data, meta) { messages.push([data, meta.stream, meta.offset]); }
  });
  out.clientId = glue.clientId;
  out.protocols = last().protocols;
  out.firstStates = states.map(function (s) { return s[0]; });
  last().serverOpens();
  out.hello = last().sent[0];
  last().serverSends({t: "welcome", recovered: false, s: ["E1", 3], b: ["E2", 7]});
  out.welcomeState = states[states.length - 1][0];
  out.welcomeFresh = states[states.length - 1][1].fresh;
  last().serverSends({t: "m", s: "s", o: 4, d: "four"});
  last().serverSends({t: "m", s: "b", o: 8, d: "eight"});
  last().serverSends({t: "r", d: "reply"});
  out.messages = messages.slice();
  out.sendId = glue.send("a");
  out.sentLive = last().sent[1];

  // A dropped connection: reconnect after a jittered delay under 0.5 s.
  last().serverCloses(1006);
  out.dropState = states[states.length - 1][0];
  out.dropDelay = states[states.length - 1][1].delay;
  glue.send("offline");
  out.pendingOffline = glue.pending.length;
  fireReconnect();
  out.socketsAfterReconnect = sockets.length;
  last().serverOpens();
  out.resumeHello = last().sent[0];
  last().serverSends({t: "welcome", recovered: true, s: ["E1", 5], b: ["E2", 8]});
  out.resumeState = states[states.length - 1][0];
  out.resent = last().sent.slice(1);
  last().serverSends({t: "ack", id: 1});
  last().serverSends({t: "ack", id: 2});
  out.pendingAfterAck = glue.pending.length;

  // Failures in a row: the ceilings double from 0.5 s up to 20 s.
  out.delays = [];
  last().serverCloses(1006);
  for (var i = 0; i < 8; i++) {
    out.delays.push(states[states.length - 1][1].delay);
    fireReconnect();
    last().serverCloses(1006);
  }
  // The server going away or restarting: back soon, whatever came before.
  out.soon = [];
  [1001, 1012].forEach(function (code) {
    fireReconnect();
    last().serverCloses(code);
    out.soon.push(states[states.length - 1][1].delay);
  });
  // A welcome starts the delays again from the shortest.
  fireReconnect();
  last().serverOpens();
  last().serverSends({t: "welcome", recovered: false, s: ["E3", 0], b: ["E4", 0]});
  out.resyncState = states[states.length - 1][0];
  out.resyncFresh = states[states.length - 1][1].fresh;
  out.positionsAfterResync = glue.positions;
  last().serverCloses(1006);
  out.delayAfterWelcome = states[states.length - 1][1].delay;

  // A policy close: no reconnect.
  fireReconnect();
  last().serverOpens();
  last().serverCloses(1008);
  out.policyState = states[states.length - 1];
  out.timersAfterPolicy = live().length;
  out.socketsAfterPolicy = sockets.length;

  // open() again, then the user's own close: closed, no reconnect.
  glue.open();
  last().serverOpens();
  out.helloAfterReopen = last().sent[0];
  last().serverSends({t: "welcome", recovered: true, s: ["E3", 0], b: ["E4", 0]});
  var mine = last();
  glue.close();
  out.userClose = [mine.closedWith, states[states.length - 1]];
  mine.serverCloses(1000);
  out.statesAfterUserClose = states[states.length - 1][0];
  out.timersAfterUserClose = live().length;
  out.socketsAfterUserClose = sockets.length;

  // Kept messages are bounded.
  var bounded = new WsGlue("ws://example.test/", {maxPending: 3});
  out.bounded = [bounded.send("1"), bounded.send("2"), bounded.send("3"), bounded.send("4")];
  bounded.close();

  // No welcome within the timeout: the attempt is given up and retried.
  var slow = new WsGlue("ws://example.test/", {});
  var slowStates = [];
  slow.onstate = function (s, d) { slowStates.push(s); };
  var slowSocket = last();
  slowSocket.serverOpens();
  var timeouts = live().filter(function (t) { return t.ms === 10000; });
  out.timeoutTimers = timeouts.length;
  timeouts[0].live = false;
  timeouts[0].f();
  out.slowClosed = slowSocket.closedWith !== undefined && slowSocket.onclose === null;
  out.slowStates = slowStates;
  slow.close();

  // A server without continuity: plain text both ways, kept messages sent
  // once as they are.
  var plainStates = [];
  var plainMessages = [];
  var plain = new WsGlue("ws://example.test/", {
    onstate: function (s, d) { plainStates.push([s, d.plain === true]); },
    onmessage: function (data, meta) { plainMessages.push([data, meta.stream]); }
  });
  plain.send("early");
  var plainSocket = last();
  plainSocket.protocol = "";
  plainSocket.onopen({});
  plainSocket.onmessage({data: "pong"});
  out.plainSentId = plain.send("ping");
  out.plainSent = plainSocket.rawSent;
  out.plainStates = plainStates.slice();
  out.plainMessages = plainMessages;
  out.plainPending = plain.pending.length;
  out.plainTimers = live().length;
  plain.close();
  return out;
}());
