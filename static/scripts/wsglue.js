// WsGlue: a browser client of wsglue's `wsglue.v1` subprotocol, a session
// that survives reconnects.  No build step, no dependency:
//
//   <script src="scripts/wsglue.js"></script>
//   var glue = new WsGlue(null, {
//     onmessage: function (data, meta) { ... },   // meta.stream: "session", "broadcast" or "reply"
//     onstate: function (state, detail) { ... }
//   });
//   glue.send("hello");   // sent now, or kept and sent once the session is back
//   glue.close();         // closes and stays closed until glue.open()
//
// States: "connecting" {url, attempt}, "open" (the socket is open, the hello
// is sent), "resumed" (nothing was missed: the missed messages follow) or
// "resynced" (recovered false: what was missed is gone, fetch your state
// again; also the answer to the first connection, with detail.fresh true),
// "reconnecting" {delay (seconds), code}, "closed" {code, byUser}.  A server
// that does not select wsglue.v1 (continuity off) is served plainly:
// "resynced" with detail.plain, meta.stream "plain", no acks, no resume.
(function (root) {
  "use strict";

  var SUBPROTOCOL = "wsglue.v1";
  var SOON = [1001, 1012];   // the server is going away or restarting: come back soon
  var NEVER = [1008];        // the server refused this client: do not come back

  function defaultUrl() {
    var scheme = root.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + root.location.host + "/";
  }

  function newClientId() {
    var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    var bytes = new Uint8Array(16);
    root.crypto.getRandomValues(bytes);
    var id = "";
    for (var i = 0; i < bytes.length; i++) {
      id += alphabet.charAt(bytes[i] & 63);
    }
    return id;
  }

  function toBase64(bytes) {
    var text = "";
    for (var i = 0; i < bytes.length; i++) {
      text += String.fromCharCode(bytes[i]);
    }
    return root.btoa(text);
  }

  function fromBase64(b64) {
    var text = root.atob(b64);
    var bytes = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) {
      bytes[i] = text.charCodeAt(i);
    }
    return bytes;
  }

  // The delay before reconnect number `attempt` (from 0), in seconds: full
  // jitter under an exponential ceiling, never under a tenth of `low`.
  function backoff(attempt, low, high) {
    var ceiling = Math.min(high, low * Math.pow(2, Math.min(attempt, 32)));
    return Math.max(low / 10, Math.random() * ceiling);
  }

  function WsGlue(url, options) {
    options = options || {};
    this.url = url || defaultUrl();
    this.clientId = options.clientId || newClientId();
    this.minDelay = options.minDelay || 0.5;
    this.maxDelay = options.maxDelay || 20;
    this.maxPending = options.maxPending || 100;
    this.timeout = options.timeout || 10;
    this.onmessage = options.onmessage || function () {};
    this.onstate = options.onstate || function () {};
    this.onack = options.onack || function () {};
    // The last position seen in each stream, [epoch, offset]; null before
    // the first welcome.
    this.positions = null;
    // Messages not yet acknowledged, in id order: [id, frame text, data].
    this.pending = [];
    this.state = "closed";
    this.attempts = 0;
    this._nextId = 1;
    this._socket = null;
    this._welcomed = false;
    // The open socket is plain: the server did not select wsglue.v1.
    this._plain = false;
    this._timer = null;
    this._running = false;
    if (options.connect !== false) {
      this.open();
    }
  }

  WsGlue.backoff = backoff;
  WsGlue.SUBPROTOCOL = SUBPROTOCOL;

  // Connect, and keep reconnecting until close().  While waiting to
  // reconnect, connect at once.
  WsGlue.prototype.open = function () {
    if (this._running && this._socket !== null) {
      return;
    }
    this._running = true;
    this._cancelTimer();
    this._connect();
  };

  // Close (1000) and do not come back until open().  Kept messages stay
  // kept and are sent after open().
  WsGlue.prototype.close = function () {
    var wasRunning = this._running;
    this._running = false;
    this._cancelTimer();
    var socket = this._socket;
    if (socket !== null) {
      // Its close event comes later; this client is closed now.
      this._detach(socket);
      socket.close(1000);
    }
    if (wasRunning) {
      this._setState("closed", {code: 1000, byUser: true});
    }
  };

  // Whether the session is live: welcomed on an open socket.
  WsGlue.prototype.isLive = function () {
    return this._welcomed;
  };

  // Send `data` (a string, or an ArrayBuffer / Uint8Array) to the server's
  // handler: now if the session is live, else once it is back; again after
  // each reconnect until acknowledged.  Returns its id, or 0 when
  // maxPending messages are already waiting for their acknowledgement.
  WsGlue.prototype.send = function (data) {
    if (this.pending.length >= this.maxPending) {
      return 0;
    }
    var id = this._nextId++;
    var frame = {t: "m", id: id};
    if (typeof data === "string") {
      frame.d = data;
    } else {
      frame.b64 = toBase64(data instanceof Uint8Array ? data : new Uint8Array(data));
    }
    if (this._welcomed && this._plain) {
      // No acks on a plain connection: sent once, as it is.
      this._socket.send(data);
      return id;
    }
    var text = JSON.stringify(frame);
    this.pending.push([id, text, data]);
    if (this._welcomed) {
      this._socket.send(text);
    }
    return id;
  };

  WsGlue.prototype._setState = function (state, detail) {
    this.state = state;
    try {
      this.onstate(state, detail || {});
    } catch (e) {
      root.console && root.console.error(e);
    }
  };

  WsGlue.prototype._cancelTimer = function () {
    if (this._timer !== null) {
      root.clearTimeout(this._timer);
      this._timer = null;
    }
  };

  WsGlue.prototype._detach = function (socket) {
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (socket === this._socket) {
      this._socket = null;
      this._welcomed = false;
      this._plain = false;
    }
  };

  WsGlue.prototype._connect = function () {
    var self = this;
    self._timer = null;
    self._setState("connecting", {url: self.url, attempt: self.attempts});
    var socket;
    try {
      socket = new root.WebSocket(self.url, [SUBPROTOCOL]);
    } catch (e) {
      self._lost(null, 1006);
      return;
    }
    socket.binaryType = "arraybuffer";
    self._socket = socket;
    self._welcomed = false;
    self._plain = false;
    // Neither an open socket nor a welcome within `timeout` seconds: try again.
    self._timer = root.setTimeout(function () {
      self._timer = null;
      if (socket === self._socket && !self._welcomed) {
        self._detach(socket);
        socket.close();
        self._lost(null, 1006);
      }
    }, self.timeout * 1000);
    socket.onopen = function () {
      self._setState("open", {protocol: socket.protocol});
      if (socket.protocol !== SUBPROTOCOL) {
        self._plainOpen(socket);
        return;
      }
      var hello = {t: "hello", client: self.clientId};
      if (self.positions !== null) {
        hello.resume = {s: self.positions.s, b: self.positions.b};
      }
      socket.send(JSON.stringify(hello));
    };
    socket.onmessage = function (event) {
      self._received(socket, event.data);
    };
    socket.onclose = function (event) {
      self._detach(socket);
      self._lost(event.code, event.code);
    };
  };

  // Continuity is off on that server: no session to resume, no acks.  The
  // socket serves as it is: kept messages go out once, messages come in
  // as they are.
  WsGlue.prototype._plainOpen = function (socket) {
    this._cancelTimer();
    this._plain = true;
    this._welcomed = true;
    this.attempts = 0;
    var kept = this.pending;
    this.pending = [];
    this._setState("resynced", {recovered: false, fresh: true, plain: true});
    for (var i = 0; i < kept.length && socket === this._socket; i++) {
      socket.send(kept[i][2]);
    }
  };

  WsGlue.prototype._received = function (socket, data) {
    if (this._plain) {
      this._deliver(typeof data === "string" ? data : new Uint8Array(data), {stream: "plain", offset: null});
      return;
    }
    var frame;
    try {
      frame = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (frame === null || typeof frame !== "object") {
      return;
    }
    var payload = "b64" in frame ? fromBase64(frame.b64) : frame.d;
    if (frame.t === "m") {
      var stream = frame.s === "b" ? "b" : "s";
      if (this.positions !== null) {
        this.positions[stream] = [this.positions[stream][0], frame.o];
      }
      this._deliver(payload, {stream: stream === "s" ? "session" : "broadcast", offset: frame.o});
    } else if (frame.t === "r") {
      this._deliver(payload, {stream: "reply", offset: null});
    } else if (frame.t === "ack") {
      for (var i = 0; i < this.pending.length; i++) {
        if (this.pending[i][0] === frame.id) {
          this.pending.splice(i, 1);
          break;
        }
      }
      try {
        this.onack(frame.id);
      } catch (e) {
        root.console && root.console.error(e);
      }
    } else if (frame.t === "welcome") {
      this._welcome(socket, frame);
    }
  };

  WsGlue.prototype._deliver = function (payload, meta) {
    try {
      this.onmessage(payload, meta);
    } catch (e) {
      root.console && root.console.error(e);
    }
  };

  WsGlue.prototype._welcome = function (socket, frame) {
    this._cancelTimer();
    this._welcomed = true;
    this.attempts = 0;
    var fresh = this.positions === null;
    if (frame.recovered) {
      this._setState("resumed", {recovered: true, welcome: frame});
    } else {
      // Nothing will be replayed: carry on from the current positions.
      this.positions = {s: [frame.s[0], frame.s[1]], b: [frame.b[0], frame.b[1]]};
      this._setState("resynced", {recovered: false, fresh: fresh, welcome: frame});
    }
    // The server acks again what it already took: resending is safe.
    if (socket === this._socket) {
      for (var i = 0; i < this.pending.length; i++) {
        socket.send(this.pending[i][1]);
      }
    }
  };

  WsGlue.prototype._lost = function (code) {
    this._cancelTimer();
    if (!this._running) {
      return;
    }
    if (NEVER.indexOf(code) >= 0) {
      this._running = false;
      this._setState("closed", {code: code, byUser: false});
      return;
    }
    var delay;
    if (SOON.indexOf(code) >= 0) {
      delay = Math.random() * this.minDelay;
    } else {
      delay = backoff(this.attempts, this.minDelay, this.maxDelay);
    }
    this.attempts += 1;
    var self = this;
    this._setState("reconnecting", {delay: delay, code: code});
    this._timer = root.setTimeout(function () {
      self._timer = null;
      self._connect();
    }, delay * 1000);
  };

  root.WsGlue = WsGlue;
}(this));
