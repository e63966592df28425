"""
Drive the wsglue page in Debian's Chromium through Playwright and print what
happened as one JSON object on stdout.

    python tests/browser_check.py http://127.0.0.1:PORT/

Run by L{tests.test_browser} in a child process: Playwright's sync API cannot
run inside trial's reactor thread.  Every wait is a Playwright wait with a
bound; a step that times out ends the run with C{"error"} set and the
C{#output} text so far.  Exit status 0 whenever the JSON was printed.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, Dict

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 8000

ELEMENTS = """() => {
  const out = {};
  for (const id of ["connect", "disconnect", "message", "sendMessage", "output"]) {
    const e = document.getElementById(id);
    out[id] = e === null ? null : {
      tag: e.tagName.toLowerCase(),
      type: e.getAttribute("type"),
      placeholder: e.getAttribute("placeholder"),
      maxlength: e.getAttribute("maxlength"),
      readonly: e.readOnly === true,
    };
  }
  return out;
}"""

OUTPUT_HAS = "([text, n]) => document.querySelector('#output').value.split(text).length > n"


def main(url: str) -> Dict[str, Any]:
    from playwright.sync_api import sync_playwright

    result: Dict[str, Any] = {"error": None, "steps": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20000)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)

            def output() -> str:
                return page.eval_on_selector("#output", "e => e.value")

            def waitFor(text: str, count: int = 1) -> None:
                # Wait until #output holds `text` at least `count` times.
                result["steps"].append(f"wait {text!r} x{count}")
                page.wait_for_function(OUTPUT_HAS, arg=[text, count], timeout=WAIT_MS)

            def ourCookie() -> Any:
                return [c for c in context.cookies() if c["name"] == "CookieName"]

            try:
                page.goto(url)
                result["elements"] = page.evaluate(ELEMENTS)
                result["documentCookieBefore"] = page.evaluate("document.cookie")

                page.click("#sendMessage")
                waitFor("Not Connected!", 1)
                page.click("#disconnect")
                waitFor("Not Connected!", 2)
                result["outputNotConnected"] = output()

                page.click("#connect")
                waitFor("Connected!", 3)
                result["outputConnected"] = output()
                result["cookies"] = ourCookie()
                result["documentCookie"] = page.evaluate("document.cookie")

                page.fill("#message", "")
                page.click("#sendMessage")
                waitFor("<== pong")
                result["outputPing"] = output()

                page.fill("#message", "hello there")
                page.press("#message", "Enter")
                waitFor("<== ok")
                result["outputText"] = output()
                result["messageAfterSend"] = page.input_value("#message")

                waitFor("<== notify")
                result["outputNotify"] = output()

                page.click("#disconnect")
                waitFor("Disconnected!")
                result["outputDisconnected"] = output()

                page.reload()
                result["outputAfterReload"] = output()
                page.click("#connect")
                waitFor("Connected!")
                page.click("#sendMessage")
                waitFor("<== pong")
                result["cookiesAfterReload"] = ourCookie()
                result["outputReconnected"] = output()
                page.click("#disconnect")
                waitFor("Disconnected!")
            except Exception as e:
                result["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
                try:
                    result["outputAtError"] = output()
                except Exception:
                    pass
        finally:
            browser.close()
    return result


if __name__ == "__main__":
    # A SIGTERM from the test (on timeout) unwinds the with-blocks, so the
    # browser is closed rather than orphaned.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    try:
        report = main(sys.argv[1])
    except Exception as e:
        report = {"error": f"browser did not run: {type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(report) + "\n")
