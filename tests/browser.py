"""Real-browser test support: Debian's chromium driven by Playwright (no browser download),
the console errors a page logs, and a dashboard process on a free port (no tests in here).

    from browser import chromium, open_page  # chromium: a fixture, requested by name

    def test_x(chromium, tmp_path):
        with open_page(chromium, tmp_path) as (page, errors):
            page.goto(url)
            assert errors == []

chromium is installed by the test set-up when missing (`apt-get install -y chromium`, as root
where apt-get exists, bounded in time); otherwise the test is skipped with the reason.
"""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import debian_tool, start_bin, stop_proc

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium keeps trying to reach Google's services,
# which on a closed network is a stream of refused connections (and console noise).
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def install_chromium() -> tuple[Path | None, str]:
    """The chromium binary, installed from Debian when missing and possible -> (path or None, why not)."""
    path, why = debian_tool("chromium", str(CHROMIUM))
    return (Path(path) if path else None), why


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Path of Debian's chromium, installed when missing; skips the test when it cannot be."""
    path, why = install_chromium()
    if path is None:
        pytest.skip(why)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright is not installed: {exc}")
    return path


class PageErrors(list):
    """Console messages of type error and uncaught page exceptions, as text, in order.

    Playwright's sync API delivers events only while one of its calls runs: `settled(page)` lets
    the page run a moment first (a plain time.sleep would see none of them)."""

    def watch(self, page) -> None:
        page.on("console", lambda msg: msg.type == "error" and self.append(f"console: {msg.text} {msg.location}"))
        page.on("pageerror", lambda exc: self.append(f"pageerror: {exc}"))

    def settled(self, page, ms: int = 500) -> list[str]:
        page.wait_for_timeout(ms)
        return list(self)


@contextlib.contextmanager
def open_page(chromium_path: Path, tmp_path: Path, viewport=(1400, 1600)):
    """A new page in a headless chromium with its own fresh profile -> (page, PageErrors).
    The browser is closed on leaving, even on failure."""
    from playwright.sync_api import sync_playwright

    profile = Path(tmp_path) / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(chromium_path), headless=True, args=list(CHROMIUM_ARGS),
            viewport={"width": viewport[0], "height": viewport[1]}, timeout=60_000)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            errors = PageErrors()
            errors.watch(page)
            yield page, errors
        finally:
            context.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def http_json(url: str, timeout: float = 10.0) -> tuple[int, dict | None]:
    status, _, body = http_get(url, timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


# Per Vega chart on the page: how many data marks it drew (shapes inside Vega's mark groups; axes,
# grid and legends are other groups, the voronoi paths only serve the hover, and an empty data set
# draws no mark at all).
_CHART_MARKS = """() => Array.from(document.querySelectorAll('[data-testid="stVegaLiteChart"]')).map(c =>
  Array.from(c.querySelectorAll('g.role-mark:not([class*="voronoi"]) path'))
       .filter(p => (p.getAttribute('d') || '').length > 2).length)"""


def chart_marks(page) -> list[int]:
    """Data marks per chart, in page order (0 = an empty chart)."""
    return page.evaluate(_CHART_MARKS)


def exception_count(page) -> int:
    """Streamlit's exception boxes on the page (a script that raised)."""
    return page.locator('[data-testid="stException"]').count()


def screenshot_whole(page, path: Path) -> Path:
    """A screenshot of the whole Streamlit page: it scrolls inside its own container, so the
    viewport is made as tall as that container's content first (a full-page screenshot alone
    would stop at the viewport)."""
    height = page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], int(height) + 50)})
    page.wait_for_timeout(1000)          # charts and tables lay themselves out again
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


class StreamlitServer:
    """A Streamlit server on 127.0.0.1:<free port> in its own process group, waited for (bounded)
    until /_stcore/health answers, stopped on leaving (SIGTERM, then the group killed)."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = self.start()

    def start(self) -> subprocess.Popen:
        raise NotImplementedError

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_up(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args[0]} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if http_get(self.url + "/_stcore/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"nothing answers on {self.url} within {timeout} s:\n{self.log()}")

    def stop(self) -> int | None:
        return stop_proc(self.proc, timeout=10)

    def __enter__(self):
        try:
            self.wait_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Dashboard(StreamlitServer):
    """bin/cqt-dashboard --db DB on a free port."""

    def __init__(self, db: Path, env: dict[str, str], log_path: Path, *args: str):
        self.db, self.env, self.args = db, env, args
        super().__init__(log_path)

    def start(self) -> subprocess.Popen:
        return start_bin("cqt-dashboard", "--db", str(self.db), "--port", str(self.port), "--address", "127.0.0.1",
                         *self.args, env=self.env, log_path=self.log_path)


class StreamlitScript(StreamlitServer):
    """`streamlit run SCRIPT` from the virtualenv (for testing the browser checks themselves)."""

    def __init__(self, script: Path, log_path: Path):
        self.script = script
        super().__init__(log_path)

    def start(self) -> subprocess.Popen:
        exe = Path(sys.executable).with_name("streamlit")
        cmd = [str(exe), "run", str(self.script), "--server.headless", "true", "--server.address", "127.0.0.1",
               "--server.port", str(self.port), "--browser.gatherUsageStats", "false"]
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(self.script.parent), start_new_session=True)
