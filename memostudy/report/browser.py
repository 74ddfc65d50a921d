"""Open an HTML report in a real headless browser: load errors, plotly figures drawn, screenshot.

Uses the system Chromium (Debian's ``chromium`` package) driven by Playwright; Playwright's own
browser download is never used (it needs network). All network requests other than ``file:`` are
blocked, so the check proves the report opens offline.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from memostudy.errors import MemostudyError

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


def find_chromium() -> str | None:
    """Path of a system Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class BrowserCheck:
    """What a headless browser saw when it opened a page.

    Attributes:
        console_errors: console messages of type error and uncaught page errors.
        blocked_requests: URLs the page tried to fetch from the network (all blocked).
        plots_total: plotly figure containers on the page.
        plots_drawn: containers in which plotly drew its SVG (``.main-svg``).
        screenshot: PNG of the full page, if asked for.
    """

    console_errors: list[str] = field(default_factory=list)
    blocked_requests: list[str] = field(default_factory=list)
    plots_total: int = 0
    plots_drawn: int = 0
    title: str = ""
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the page loaded with no console error and every plotly figure was drawn."""
        return not self.console_errors and self.plots_drawn == self.plots_total


def check_html(path: str | Path, screenshot: str | Path | None = None, timeout_ms: int = 60000,
               width: int = 1280) -> BrowserCheck:
    """Open ``path`` in headless Chromium with the network blocked and report what it saw.

    Raises:
        MemostudyError: no Chromium or Playwright available (install Debian's ``chromium``).
    """
    exe = find_chromium()
    if exe is None:
        raise MemostudyError("no chromium found; install Debian's package: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise MemostudyError("playwright is not installed; run `make setup`") from None
    path = Path(path).resolve()
    result = BrowserCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})

            def route(r) -> None:
                if r.request.url.startswith(("file:", "data:", "blob:")):
                    r.continue_()
                else:
                    result.blocked_requests.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: result.console_errors.append(f"uncaught: {e}"))
            page.goto(path.as_uri(), wait_until="load", timeout=timeout_ms)
            page.wait_for_timeout(1500)
            result.plots_total = page.locator("div.js-plotly-plot").count()
            result.plots_drawn = page.locator("div.js-plotly-plot .main-svg").evaluate_all(
                "els => new Set(els.map(e => e.closest('.js-plotly-plot'))).size")
            result.title = page.title()
            if screenshot is not None:
                result.screenshot = Path(screenshot)
                result.screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(result.screenshot), full_page=True)
        finally:
            browser.close()
    # requests the page tried and we blocked are also failures of "opens offline"
    result.console_errors = [e for e in result.console_errors if "net::ERR_FAILED" not in e] + [
        f"network request blocked: {u}" for u in result.blocked_requests]
    return result
