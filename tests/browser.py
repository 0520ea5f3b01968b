"""Open a page in a real headless browser (Playwright driving Debian's Chromium) and report what went wrong.

:func:`open_page` serves the page's directory over HTTP on 127.0.0.1 (a free port, in a thread) rather than
``file://``, so that the browser fetches every resource the way a web server would deliver it, then collects console
errors and warnings, uncaught page errors, failed requests and HTTP error responses, checks that every ``<img>``
decoded, and takes a full-page screenshot.

The browser is ``/usr/bin/chromium`` (``apt-get install chromium chromium-driver``; ``make test`` installs it), not
Playwright's own download: the test machines have no network access to Playwright's CDN.
"""

import contextlib
import dataclasses
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "PageCheck", "open_page", "serve_directory"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclasses.dataclass
class PageCheck:
    """What the browser saw while loading a page.

    Attributes:
      url: the URL that was opened.
      title: the document title.
      h2: the text of every ``<h2>``, in document order.
      console: console messages of type error or warning, as ``"type: text"``.
      page_errors: uncaught exceptions in the page.
      failed_requests: requests that failed at the network level, as ``"url (reason)"``.
      bad_responses: responses with HTTP status >= 400, as ``"status url"``.
      images: every ``<img>``: ``{"src", "alt", "complete", "natural_width", "natural_height"}``.
      broken_images: the ``src`` of images that did not decode (``naturalWidth == 0``).
      screenshot: the full-page PNG written.
      text: the page's visible text (``document.body.innerText``).
    """

    url: str
    title: str
    h2: list[str]
    console: list[str]
    page_errors: list[str]
    failed_requests: list[str]
    bad_responses: list[str]
    images: list[dict]
    broken_images: list[str]
    screenshot: Path
    text: str

    @property
    def problems(self) -> list[str]:
        """Everything that went wrong, one line each (empty for a clean page)."""
        return (
            [f"console {m}" for m in self.console]
            + [f"page error: {m}" for m in self.page_errors]
            + [f"request failed: {m}" for m in self.failed_requests]
            + [f"HTTP {m}" for m in self.bad_responses]
            + [f"image did not load: {m}" for m in self.broken_images]
        )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser tests need Debian's Chromium. Run `make test` (which installs it) or "
            "`apt-get install chromium chromium-driver`.",
            pytrace=False,
        )


def _visit(url: str, screenshot: Path, timeout_ms: int, wait_for: tuple[str, ...] = (), width: int = 1280) -> PageCheck:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415  (only the browser tests need it)

    console, page_errors, failed, bad = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on(
                "console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None
            )
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
            page.on("response", lambda r: bad.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(url, wait_until="load", timeout=timeout_ms)
            if not wait_for:
                page.wait_for_load_state("networkidle", timeout=timeout_ms)
            for text in wait_for:  # a single-page app (which may poll for ever) renders after the load
                page.get_by_text(text).first.wait_for(timeout=timeout_ms)
            images = page.eval_on_selector_all(
                "img",
                "imgs => imgs.map(i => ({src: i.getAttribute('src'), alt: i.getAttribute('alt'), complete: i.complete,"
                " natural_width: i.naturalWidth, natural_height: i.naturalHeight}))",
            )
            h2 = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent.trim())")
            title = page.title()
            text = page.inner_text("body")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return PageCheck(
        url=url,
        title=title,
        h2=h2,
        console=console,
        page_errors=page_errors,
        failed_requests=failed,
        bad_responses=bad,
        images=images,
        broken_images=[i["src"] for i in images if not i["natural_width"]],
        screenshot=screenshot,
        text=text,
    )


def open_page(
    path_or_url: str | Path,
    screenshot: Path,
    *,
    timeout_ms: int = 30_000,
    wait_for: tuple[str, ...] = (),
    width: int = 1280,
) -> PageCheck:
    """Load a page in headless Chromium and collect what went wrong; fails the test if Chromium is missing.

    Args:
      path_or_url: an HTML file (its directory is served over HTTP on 127.0.0.1 for the visit) or an
        ``http(s)://`` URL.
      screenshot: where to write the full-page PNG screenshot.
      timeout_ms: limit for loading the page, for the network to go idle and for each text of ``wait_for``.
      wait_for: texts the page must show, waited for in turn after the load instead of an idle network (a
        single-page app that polls its server is never idle).
      width: the viewport's width in CSS pixels (a wide table renders only the columns in view).

    Returns:
      A :class:`PageCheck`.
    """
    _require_chromium()
    screenshot = Path(screenshot)
    if urlparse(str(path_or_url)).scheme in ("http", "https"):
        return _visit(str(path_or_url), screenshot, timeout_ms, tuple(wait_for), width)
    path = Path(path_or_url).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no page at {path}")
    with serve_directory(path.parent) as base:
        return _visit(base + quote(path.name), screenshot, timeout_ms, tuple(wait_for), width)
