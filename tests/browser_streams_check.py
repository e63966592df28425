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
cannot run in trial's reactor thread).  Every wait has a bound; a step that
times out ends the run with C{"error"} set.  The daemon is stopped before
the script exits, whatever happened.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
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

    def start(self, timeout: float = 30) -> None:
        process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.process = process
        started = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self.lines.append(line.rstrip("\n"))
                if STARTED in line:
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
        report = main(json.loads(sys.argv[1]))
    except Exception as e:
        report = {"error": f"browser did not run: {type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(report) + "\n")
