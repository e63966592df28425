"""
Drive the wsglue page in Debian's Chromium through Playwright while a
numbered stream (L{tests.stream_handler}) runs, through a dropped network,
an outage and a daemon restart, and print what happened as one JSON object
on stdout.

    python tests/browser_streams_check.py '{"argv": [...], "port": PORT}'

C{argv} starts the daemon (C{twistd -n wsglue … --handler
tests.stream_handler:NumberedStream}); this script starts it, and stops it
and starts it again on the same port, so that the browser sees it go.  Run
by L{tests.test_browser_streams} in a child process (Playwright's sync API
cannot run in trial's reactor thread).  With C{"cluster": true} in the
configuration it runs L{mainCluster} instead: a daemon with C{--workers 2
--redis}, the stream sent by L{Producer} through the HTTP API, and the
worker that holds the page's connection killed with SIGKILL.  Every wait
has a bound; a step that times out ends the run with C{"error"} set.  The daemon is stopped before
the script exits, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional

from browser_check import ARGS, CHROMIUM

WAIT_MS = 20000
STARTED = "started websocket server at"

OUTPUT_HAS = "([text, n]) => document.querySelector('#output').value.split(text).length > n"
STATE_IS = "(s) => document.querySelector('#state').getAttribute('data-state') === s"


class Daemon:
    """
    The daemon as a child process, its output kept by a reader thread.
    """

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.process: Optional[subprocess.Popen] = None
        self.lines: List[str] = []

    def start(self, timeout: float = 30, marker: str = STARTED, times: int = 1) -> None:
        """
        Start it and wait until it printed C{marker} C{times} times.
        """
        process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.process = process
        started = threading.Event()
        seen = [0]

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.lines.append(line.rstrip("\n"))
                if marker in line:
                    seen[0] += 1
                    if seen[0] >= times:
                        started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(timeout):
            raise RuntimeError("the daemon did not start: " + "\n".join(self.lines[-20:]))

    def stop(self, timeout: float = 15) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class Producer:
    """
    The numbered stream (C{n 1}, C{n 2}, …) sent to one session through the
    HTTP API at L{RATE} a second, from a thread: whichever worker answers,
    so the stream outlives any one of them.  Each message has its own
    C{Idempotency-Key}, so a retried request never delivers twice.
    L{pause} waits for the request in flight and holds the next one.
    """

    RATE = 50

    def __init__(self, api: str, key: str, sid: str) -> None:
        self.url = f"{api}/api/sessions/{sid}/messages"
        self.key = key
        self.sent = 0
        self.error: Optional[str] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def pause(self) -> None:
        self._lock.acquire()

    def resume(self) -> None:
        self._lock.release()

    def _post(self, n: int) -> None:
        request = urllib.request.Request(
            self.url,
            data=f"n {n}".encode("ascii"),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.key}",
                "Content-Type": "text/plain",
                "Idempotency-Key": f"n-{n}",
            },
        )
        # Bounded: 100 tries, 5 seconds each at most.
        for attempt in range(100):
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    answer.read()
                    return
            except (urllib.error.URLError, OSError) as e:
                why = str(e)
            if self._stop.wait(0.05):
                break
        raise RuntimeError(f"message n {n} not accepted: {why}")

    def _run(self) -> None:
        n = 0
        began = time.monotonic()
        try:
            while not self._stop.is_set():
                with self._lock:
                    n += 1
                    self._post(n)
                    self.sent = n
                # 50 a second, not faster; a late one does not make up time.
                due = began + n / self.RATE
                now = time.monotonic()
                if due < now:
                    began += now - due
                else:
                    self._stop.wait(due - now)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"


def workerOf(pid: int) -> int:
    """
    The parent process id of C{pid}, from C{/proc}.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


def mainCluster(config: Dict[str, Any]) -> Dict[str, Any]:
    """
    The page on a daemon with C{--workers 2 --redis}, receiving the
    numbered stream from the API, while the worker that holds its
    connection is killed with SIGKILL, and new connections are refused (the
    file C{config["hold"]} exists) until the page has typed while offline.
    """
    from playwright.sync_api import sync_playwright

    result: Dict[str, Any] = {"error": None, "steps": []}
    url = f"http://127.0.0.1:{config['port']}/"
    daemon = Daemon(config["argv"])
    producer: Optional[Producer] = None
    hold = config["hold"]
    try:
        daemon.start(marker="subscribed at", times=2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20000)
            try:
                context = browser.new_context()
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)

                def output() -> str:
                    return page.eval_on_selector("#output", "e => e.value")

                def count(text: str) -> int:
                    return output().count(text)

                def waitFor(text: str, n: int = 1) -> None:
                    result["steps"].append(f"wait {text!r} x{n}")
                    page.wait_for_function(OUTPUT_HAS, arg=[text, n], timeout=WAIT_MS)

                def waitState(state: str) -> None:
                    result["steps"].append(f"state {state}")
                    page.wait_for_function(STATE_IS, arg=state, timeout=WAIT_MS)

                def say(text: str) -> None:
                    page.fill("#message", text)
                    page.press("#message", "Enter")

                def lastNumber() -> int:
                    numbers = [int(line[6:]) for line in output().splitlines() if line.startswith("<== n ")]
                    return numbers[-1] if numbers else 0

                try:
                    page.goto(url)
                    page.click("#connect")
                    waitFor("Connected!")
                    cookies = [c for c in context.cookies() if c["name"] == config["cookie"]]
                    sid = cookies[0]["value"].split(".", 1)[0]
                    producer = Producer(config["api"], config["key"], sid)
                    producer.start()
                    waitFor("<== n 20\n")

                    # The worker that holds the page's connection.
                    say("pid")
                    waitFor("<== pid ")
                    pid = int(output().split("<== pid ", 1)[1].split("\n", 1)[0])
                    result["workerIsChild"] = workerOf(pid) == daemon.process.pid
                    result["killedAfter"] = lastNumber()

                    # New connections are refused from now on, whichever
                    # worker takes them, until the page has typed.
                    open(hold, "w").close()
                    resumed = count("Resumed:")
                    producer.pause()
                    try:
                        os.kill(pid, signal.SIGKILL)
                    finally:
                        producer.resume()
                    waitState("reconnecting")
                    result["stateAfterKill"] = "reconnecting"
                    for i in (1, 2, 3):
                        say(f"typed {i}")
                    result["outputWhileOffline"] = output()
                    # At least one attempt refused, then let them in.
                    waitFor("Connecting to:", count("Connecting to:") + 1)
                    result["sentWhileOffline"] = producer.sent
                    os.unlink(hold)
                    waitFor("Resumed:", resumed + 1)
                    result["stateAfterKill"] = page.get_attribute("#state", "data-state")
                    waitFor(f"<== n {max(lastNumber(), result['sentWhileOffline']) + 50}\n")
                    for i in (1, 2, 3):
                        say(f"count typed {i}")
                    waitFor("<== count typed 3 = ")
                    say("pid")
                    waitFor("<== pid ", 2)
                    result["pidAfter"] = int(output().rsplit("<== pid ", 1)[1].split("\n", 1)[0])
                    result["pidKilled"] = pid
                    producer.stop()
                    result["producerError"] = producer.error
                    result["sent"] = producer.sent
                    waitFor(f"<== n {producer.sent}\n")
                    result["outputAfterKill"] = output()
                except Exception as e:
                    result["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                    try:
                        result["outputAtError"] = output()
                    except Exception:
                        pass
            finally:
                if producer is not None:
                    producer.stop()
                    result["producerError"] = producer.error
                browser.close()
    finally:
        if os.path.exists(hold):
            os.unlink(hold)
        daemon.stop()
        result["daemonOutput"] = "\n".join(daemon.lines[-200:])
    return result


def main(config: Dict[str, Any]) -> Dict[str, Any]:
    from playwright.sync_api import sync_playwright

    result: Dict[str, Any] = {"error": None, "steps": []}
    url = f"http://127.0.0.1:{config['port']}/"
    daemon = Daemon(config["argv"])
    try:
        daemon.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20000)
            try:
                page = browser.new_context().new_page()
                page.set_default_timeout(WAIT_MS)
                # A second browser, another session: it lifts the hold.
                control = browser.new_context().new_page()
                control.set_default_timeout(WAIT_MS)

                def output() -> str:
                    return page.eval_on_selector("#output", "e => e.value")

                def count(text: str) -> int:
                    return output().count(text)

                def waitFor(text: str, n: int = 1, on: Any = page) -> None:
                    result["steps"].append(f"wait {text!r} x{n}")
                    on.wait_for_function(OUTPUT_HAS, arg=[text, n], timeout=WAIT_MS)

                def waitState(state: str) -> None:
                    result["steps"].append(f"state {state}")
                    page.wait_for_function(STATE_IS, arg=state, timeout=WAIT_MS)

                def say(text: str, on: Any = page) -> None:
                    on.fill("#message", text)
                    on.press("#message", "Enter")

                def lastNumber() -> int:
                    numbers = [int(line[6:]) for line in output().splitlines() if line.startswith("<== n ")]
                    return numbers[-1] if numbers else 0

                try:
                    page.goto(url)
                    page.click("#connect")
                    waitFor("<== n 20")
                    result["stateConnected"] = page.get_attribute("#state", "data-state")

                    # (b) The server aborts the page's TCP connection.
                    say("drop")
                    waitFor("Resumed:")
                    result["stateAfterDrop"] = page.get_attribute("#state", "data-state")
                    waitFor(f"<== n {lastNumber() + 25}\n")

                    # (c) An outage: the server aborts the connection and every
                    # new one of this session until the control page says
                    # release; what is typed meanwhile is kept.
                    say("hold")
                    waitState("reconnecting")
                    result["stateDuringHold"] = "reconnecting"
                    for i in (1, 2, 3):
                        say(f"typed {i}")
                    result["outputDuringHold"] = output()
                    # At least one more attempt fails while held.
                    attempts = count("Connecting to:")
                    waitFor("Connecting to:", attempts + 1)
                    control.goto(url)
                    control.click("#connect")
                    waitFor("Connected!", 1, control)
                    say("release", control)
                    waitFor("<== ok", 1, control)
                    waitFor("Resumed:", 2)
                    waitFor(f"<== n {lastNumber() + 25}\n")
                    for i in (1, 2, 3):
                        say(f"count typed {i}")
                    waitFor("<== count typed 3 = ")
                    result["outputAfterHold"] = output()

                    # (a) The daemon stops and starts again on the same port:
                    # its history is gone, the page resyncs.
                    daemon.stop()
                    waitState("reconnecting")
                    say("typed while down")
                    daemon.start()
                    waitFor("Resynced:")
                    result["stateAfterRestart"] = page.get_attribute("#state", "data-state")
                    resynced = output().index("Resynced:")
                    waitFor("<== n 50\n", output()[:resynced].count("<== n 50\n") + 1)
                    say("count typed while down")
                    waitFor("<== count typed while down = ")
                    result["outputAfterRestart"] = output()

                    page.click("#disconnect")
                    waitState("closed")
                    say("after")
                    waitFor("Not Connected!")
                    result["outputEnd"] = output()
                except Exception as e:
                    result["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                    try:
                        result["outputAtError"] = output()
                    except Exception:
                        pass
            finally:
                browser.close()
    finally:
        daemon.stop()
        result["daemonOutput"] = "\n".join(daemon.lines[-200:])
    return result


if __name__ == "__main__":
    # A SIGTERM from the test (on timeout) unwinds the with-blocks and the
    # finally clauses: the browser is closed and the daemon stopped.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    try:
        config = json.loads(sys.argv[1])
        report = (mainCluster if config.get("cluster") else main)(config)
    except Exception as e:
        report = {"error": f"browser did not run: {type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(report) + "\n")
