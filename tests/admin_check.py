"""
Drive the admin page (C{/admin} on the API's port) in Debian's Chromium
through Playwright and print what happened as one JSON object on stdout.

    python tests/admin_check.py http://127.0.0.1:APIPORT KEY SID [SCREENSHOT.png]

Run by L{tests.test_admin} in a child process (Playwright's sync API cannot
run inside trial's reactor thread).  The page is given the key, must list
session C{SID}, is photographed, and then its disconnect button for C{SID}
is clicked; the run reports whether the row went away.  Every wait is
bounded; a step that times out ends the run with C{"error"} set.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

from browser_check import ARGS, CHROMIUM

WAIT_MS = 10000


def main(base: str, key: str, sid: str, screenshot: str = "") -> Dict[str, Any]:
    from playwright.sync_api import sync_playwright

    result: Dict[str, Any] = {"error": None, "steps": []}
    steps: List[str] = result["steps"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=20000)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.set_default_timeout(WAIT_MS)
            errors: List[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Refused requests (the wrong key's 401s, the favicon's 404) are
            # console errors too; only the others count.
            page.on(
                "console",
                lambda m: (
                    m.type == "error" and not m.text.startswith("Failed to load resource") and errors.append(m.text)
                ),
            )
            page.goto(base + "/admin")
            page.wait_for_selector("#login:not([hidden])")
            steps.append("asked for a key")
            page.fill("#key", "wrong-key")
            page.click("#login button[type=submit]")
            page.wait_for_function("() => document.querySelector('#login-error').textContent.includes('refused')")
            steps.append("refused a wrong key")
            page.fill("#key", key)
            page.click("#login button[type=submit]")
            row = f"tr[data-sid='{sid}']"
            page.wait_for_selector(row)
            steps.append("listed the session")
            result["stored"] = page.evaluate("() => sessionStorage.getItem('wsglue-admin-key') !== null")
            # A few readings, so that the plot has lines.
            page.wait_for_function("() => document.querySelector('#rate-in').textContent !== '–'")
            result["numbers"] = page.evaluate(
                "() => ({sessions: document.querySelector('#sessions').textContent,"
                " connections: document.querySelector('#connections').textContent})"
            )
            if screenshot:
                page.screenshot(path=screenshot, full_page=True, caret="initial")
                steps.append("took a screenshot")
            page.click(f"{row} button.disconnect")
            page.wait_for_selector(row, state="detached")
            steps.append("the session went away")
            result["pageErrors"] = errors
        except Exception as e:  # a bounded wait ran out, or the browser failed
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            browser.close()
    return result


if __name__ == "__main__":
    try:
        report = main(*sys.argv[1:])
    except Exception as e:
        report = {"error": f"{type(e).__name__}: {e}", "steps": []}
    print(json.dumps(report))
