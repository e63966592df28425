"""
Run C{tests/wsglue_unit.js} against C{static/scripts/wsglue.js} in Debian's
Chromium through Playwright (a blank page, no server: the script replaces
C{WebSocket} and the timers with fakes) and print its result as one JSON
object on stdout.  Run by L{tests.test_wsglue_js} in a child process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Dict

from browser_check import ARGS, CHROMIUM

HERE = os.path.dirname(os.path.abspath(__file__))
WSGLUE = os.path.join(os.path.dirname(HERE), "static", "scripts", "wsglue.js")
UNIT = os.path.join(HERE, "wsglue_unit.js")


def main() -> Dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20000)
        try:
            page = browser.new_page()
            page.set_default_timeout(8000)
            errors: list = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.set_content("<!DOCTYPE html><title>wsglue.js</title>")
            page.add_script_tag(path=WSGLUE)
            with open(UNIT, encoding="utf-8") as f:
                result: Dict[str, Any] = page.evaluate(f.read())
            result["error"] = None
            result["pageErrors"] = errors
            return result
        finally:
            browser.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    try:
        report = main()
    except Exception as e:
        report = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}
    sys.stdout.write(json.dumps(report) + "\n")
