// The wsglue demo page: a WebSocket session on the page's own host, kept
// across reconnects by WsGlue (scripts/wsglue.js); what goes each way is
// logged into #output and the connection's state shown in #state.
(function () {
  "use strict";

  var glue = null;
  // Whether the session was live: a failed attempt to reconnect is not a
  // disconnection.
  var live = false;
  var output = document.getElementById("output");
  var message = document.getElementById("message");
  var stateView = document.getElementById("state");

  function log(line) {
    output.value += line + "\n";
    output.scrollTop = output.scrollHeight;
  }

  function show(state, text) {
    stateView.setAttribute("data-state", state);
    stateView.textContent = text;
  }

  function onstate(state, detail) {
    if (state === "connecting") {
      log("Connecting to: " + detail.url);
      show(state, "connecting…");
    } else if (state === "resumed") {
      live = true;
      log("Connected!");
      log("Resumed: the messages missed meanwhile follow.");
      show(state, "connected (resumed: nothing lost)");
    } else if (state === "resynced") {
      live = true;
      log("Connected!");
      if (detail.fresh) {
        show("connected", "connected");
      } else {
        log("Resynced: the server could not replay what was missed.");
        show(state, "connected (resynced: missed messages are gone)");
      }
    } else if (state === "reconnecting") {
      if (live) {
        log("Disconnected!");
      }
      live = false;
      show(state, "reconnecting in " + detail.delay.toFixed(1) + " s");
    } else if (state === "closed") {
      live = false;
      log("Disconnected!");
      show(state, detail.byUser ? "disconnected" : "closed by the server (" + detail.code + ")");
    }
  }

  function onmessage(data) {
    log("<== " + (typeof data === "string" ? data : "(" + data.length + " bytes)"));
  }

  function connect() {
    if (glue === null) {
      glue = new WsGlue(null, {onmessage: onmessage, onstate: onstate});
    } else {
      glue.open();
    }
  }

  function running() {
    return glue !== null && glue.state !== "closed";
  }

  function disconnect() {
    if (!running()) {
      log("Not Connected!");
      return;
    }
    glue.close();
  }

  function send() {
    if (!running()) {
      log("Not Connected!");
      return;
    }
    var text = message.value === "" ? "ping" : message.value;
    var now = glue.isLive();
    if (glue.send(text) === 0) {
      log("Not sent, too many messages waiting: " + text);
      return;
    }
    log("==> " + text + (now ? "" : " (kept: sent once reconnected)"));
    message.value = "";
  }

  show("closed", "not connected");
  document.getElementById("connect").addEventListener("click", connect);
  document.getElementById("disconnect").addEventListener("click", disconnect);
  document.getElementById("sendMessage").addEventListener("click", send);
  message.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      send();
    }
  });
}());
