// The wsglue demo page: connect to the WebSocket on the page's own host,
// send messages, and log what goes each way into #output.
(function () {
  "use strict";

  var socket = null;
  var output = document.getElementById("output");
  var message = document.getElementById("message");

  function log(line) {
    output.value += line + "\n";
    output.scrollTop = output.scrollHeight;
  }

  function url() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + location.host + "/";
  }

  function isOpen() {
    return socket !== null && socket.readyState === WebSocket.OPEN;
  }

  function connect() {
    if (socket !== null && socket.readyState !== WebSocket.CLOSED) {
      return;
    }
    var target = url();
    log("Connecting to: " + target);
    socket = new WebSocket(target);
    socket.onopen = function () { log("Connected!"); };
    socket.onmessage = function (event) { log("<== " + event.data); };
    socket.onclose = function () {
      log("Disconnected!");
      socket = null;
    };
  }

  function disconnect() {
    if (!isOpen()) {
      log("Not Connected!");
      return;
    }
    socket.close(1000);
  }

  function send() {
    if (!isOpen()) {
      log("Not Connected!");
      return;
    }
    var text = message.value === "" ? "ping" : message.value;
    socket.send(text);
    log("==> " + text);
    message.value = "";
  }

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
