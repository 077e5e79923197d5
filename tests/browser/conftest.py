"""Fixtures of the console's browser tests: Debian's Chromium (installed with apt when it is
missing and we may), a real `promptproxy serve` with two named admin tokens, fast analysis
and shadow pairs, and Playwright pages that fail the test on a page error or a CSP
violation.

Playwright's sync API: the suite runs pytest-asyncio in auto mode, and a sync test has no
running loop for Playwright's own to clash with. The browser is module-scoped, so it is
closed before another module's async tests start their loops."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.processes import ProxyProc, proxy, simulator

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_PACKAGES = ("chromium", "chromium-driver")
APT_INSTALL = ("apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES)
APT_UPDATE = ("apt-get", "update")
#: Seconds each apt-get step may take: a first install downloads ~100 MB.
APT_INSTALL_SECONDS = 300.0
APT_UPDATE_SECONDS = 120.0
#: The first browser test's setup may install Chromium (each apt-get step bounded above), so
#: browser tests add this to their own budget in their timeout marks.
SETUP_BUDGET = APT_UPDATE_SECONDS + 2 * APT_INSTALL_SECONDS + 30

BROWSER_ARGS = (
    "--no-sandbox",  # the suite runs as root in a container; Chromium's sandbox refuses root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Every Playwright wait and action (milliseconds): a console page that has not drawn in
#: this long on 127.0.0.1 is broken, not slow.
PLAYWRIGHT_TIMEOUT_MS = 10_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

STICKY_HEADER = "x-user-id"
#: The analysis of rollouts the tests start: a verdict every second, on 5 requests per arm.
FAST_ANALYSIS: dict[str, Any] = {"interval": 1, "min_samples": 5}

_REPO = Path(__file__).resolve().parents[2]


# --- Chromium -----------------------------------------------------------------------------


def chromium_missing() -> list[str]:
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]


def _can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt(command: Sequence[str], seconds: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )


def ensure_chromium(
    missing: Callable[[], list[str]] = chromium_missing,
    can_install: Callable[[], bool] = _can_install,
    apt: Callable[[Sequence[str], float], subprocess.CompletedProcess[str]] = _apt,
) -> str | None:
    """Make Chromium and chromedriver present; None when they are, else why the browser
    tests must skip (with the command to run). An install that fails is a test failure
    showing apt's output: the machine was meant to run these tests."""
    absent = missing()
    if not absent:
        return None
    command = " ".join(APT_INSTALL)
    if not can_install():
        return f"{', '.join(absent)} missing; install with: sudo {command}"
    try:
        done = apt(APT_INSTALL, APT_INSTALL_SECONDS)
        if done.returncode != 0:
            # A fresh image has no package lists yet: the one case apt-get update fixes.
            updated = apt(APT_UPDATE, APT_UPDATE_SECONDS)
            if updated.returncode != 0:
                pytest.fail(f"{' '.join(APT_UPDATE)} failed:\n{updated.stdout}{updated.stderr}")
            done = apt(APT_INSTALL, APT_INSTALL_SECONDS)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(exc.cmd)} did not finish in {exc.timeout} s:\n{exc.output or ''}")
    if done.returncode != 0:
        pytest.fail(f"{command} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    still = missing()
    if still:
        pytest.fail(f"{command} succeeded but {', '.join(still)} still missing:\n{done.stdout}")
    return None


@pytest.fixture(scope="session")
def chromium() -> Path:
    reason = ensure_chromium()
    if reason is not None:
        pytest.skip(reason)
    return CHROMIUM


# --- The proxy ----------------------------------------------------------------------------


@dataclass
class Served:
    caller: str
    arm: str
    version: int
    text: str


@dataclass
class ConsoleProxy:
    """A real proxy with the console, the tokens of its two operators and the helpers the
    tests seed and check it with over HTTP (never through the page)."""

    proc: ProxyProc
    sim_url: str
    tokens: dict[str, str]  # operator name -> token
    shadow_dir: Path

    @property
    def console_url(self) -> str:
        return f"{self.proc.admin_url}/console/"

    @property
    def data_root(self) -> str:
        return self.proc.url.removesuffix("/v1")

    def api(self, name: str = "alice") -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.proc.admin_url}/admin/v1",
            headers={"Authorization": f"Bearer {self.tokens[name]}"},
            timeout=10.0,
        )

    def push(self, client: httpx.Client, slug: str, template: str, changelog: str = "") -> int:
        created = client.post(
            f"/prompts/{slug}/versions", json={"template": template, "changelog": changelog}
        )
        assert created.status_code == 201, created.text
        return int(created.json()["version"]["version"])

    def seed(self, slug: str, *templates: str, prod: int = 1) -> None:
        """Push ``templates`` as versions 1..N of ``slug`` and make ``prod`` its prod version;
        returns once the proxy serves it."""
        with self.api() as client:
            for number, template in enumerate(templates, 1):
                assert self.push(client, slug, template, f"version {number}") == number
            promoted = client.post(
                f"/prompts/{slug}/promote",
                json={"version": prod, "reason": "seed"},
                params={"wait": 5},
            )
            assert promoted.status_code == 200, promoted.text

    def start_rollout(self, slug: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.api() as client:
            started = client.put(
                f"/prompts/{slug}/rollout", json={"reason": "seed", **body}, params={"wait": 5}
            )
        assert started.status_code in (200, 201), started.text
        result: dict[str, Any] = started.json()
        return result

    def rollout(self, slug: str) -> dict[str, Any] | None:
        with self.api() as client:
            answer = client.get(f"/prompts/{slug}/rollout")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def prompt(self, slug: str) -> dict[str, Any]:
        with self.api() as client:
            answer = client.get(f"/prompts/{slug}")
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def audit(self, slug: str) -> list[dict[str, Any]]:
        """The prompt's audit entries, oldest first."""
        with self.api() as client:
            answer = client.get(f"/prompts/{slug}/history")
        assert answer.status_code == 200, answer.text
        entries: list[dict[str, Any]] = answer.json()["data"]
        return sorted(entries, key=lambda e: int(e["seq"]))

    def traffic(
        self, slug: str, callers: Sequence[str], question: str = "How do I reset my password?"
    ) -> list[Served]:
        """One chat completion per caller through the data plane (the real openai SDK), the
        caller id in the rollouts' sticky header; what each got."""
        client = openai.OpenAI(
            base_url=f"{self.data_root}/p/{slug}/v1", api_key="sk-test", max_retries=0, timeout=10
        )

        def one(caller: str) -> Served:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": question}],
                extra_headers={STICKY_HEADER: caller},
            )
            answer = raw.parse()
            return Served(
                caller,
                raw.headers["x-prompt-arm"],
                int(raw.headers["x-prompt-version"]),
                answer.choices[0].message.content or "",
            )

        with client, ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, callers))

    @contextlib.contextmanager
    def steady_traffic(
        self, slug: str, callers: Sequence[str], pause: float = 0.05
    ) -> Iterator[list[Served]]:
        """Rounds of ``traffic`` in the background until the block ends (analysis windows
        and charts need requests in every second); yields what was served so far. A failed
        request fails the test when the block ends."""
        served: list[Served] = []
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                served.extend(self.traffic(slug, callers))
                stop.wait(pause)

        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(run)
            try:
                yield served
            finally:
                stop.set()
                running.result(timeout=30)

    def log_text(self) -> str:
        return self.proc.log_path.read_text(errors="replace")


def _config(shadow_dir: Path) -> str:
    return f"""\
admin:
  tokens:
    - {{name: alice, env: CONSOLE_ALICE_TOKEN, role: admin}}
    - {{name: viewer, env: CONSOLE_VIEWER_TOKEN, role: read}}
analysis:
  flush_seconds: 0.5
shadow:
  noise_share: 0.5
  sink:
    dir: {shadow_dir}
"""


@pytest.fixture(scope="module")
def console_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleProxy]:
    """One proxy per test module, in front of the simulated provider (its own process, on a
    port the system chose), with an embedded store and a shadow sink in a temporary folder."""
    tmp = tmp_path_factory.mktemp("console")
    shadow_dir = tmp / "shadow"
    tokens = {"alice": secrets.token_urlsafe(24), "viewer": secrets.token_urlsafe(24)}
    env = {"CONSOLE_ALICE_TOKEN": tokens["alice"], "CONSOLE_VIEWER_TOKEN": tokens["viewer"]}
    with (
        simulator(tmp) as (sim_url, _),
        proxy(tmp, sim_url, _config(shadow_dir), env=env) as proc,
    ):
        yield ConsoleProxy(proc, sim_url, tokens, shadow_dir)


# --- The browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(chromium: Path, playwright_driver: Playwright) -> Iterator[Browser]:
    expect.set_options(timeout=PLAYWRIGHT_TIMEOUT_MS)
    launched = playwright_driver.chromium.launch(
        executable_path=str(chromium), headless=True, args=list(BROWSER_ARGS)
    )
    try:
        yield launched
    finally:
        launched.close()


#: What Chromium writes to the console when a policy blocks something.
_CSP = re.compile(r"Content Security Policy|Refused to (load|execute|apply|connect|frame)", re.I)


@dataclass
class PageWatch:
    """A page's console errors and uncaught exceptions. Any page error or CSP violation
    fails the test; a console error fails it unless the test said to expect it (a refused
    write the test provoked logs its status as a console error)."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: ConsoleMessage) -> None:
        where = message.location.get("url", "")
        line = f"console {message.type}: {message.text} ({where})"
        if message.type == "error" or _CSP.search(message.text):
            self.errors.append(line)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def problems(self) -> list[str]:
        return [
            e
            for e in self.errors
            if _CSP.search(e) or e.startswith("page error") or not self._expected(e)
        ]

    def _expected(self, line: str) -> bool:
        return any(p.search(line) for p in self.allowed)


#: Before it has a session, the console asks GET /console/session, which answers 401 (the
#: login form is the answer; a wrong token's POST is a 401 too), and Chromium logs every
#: 4xx fetch as a console error.
NO_SESSION_YET = r"status of 401 .*\(http://127\.0\.0\.1:\d+/console/session\)"
#: "No rollout (yet)" is a 404 of the rollout, its analysis, series and shadow routes: the
#: rollout and shadow pages ask, and draw "no rollout running" from the answer.
NO_ROLLOUT = (
    r"status of 404 .*\(http://127\.0\.0\.1:\d+/admin/v1/prompts/[^/ ]+/"
    r"(rollout|rollout/series|analysis|shadow/report|shadow/pairs)(\?[^ )]*)?\)"
)
#: Chromium asks for /favicon.ico by itself when a page names no icon: not the page's doing.
NO_FAVICON = r"status of 404 .*\(http://127\.0\.0\.1:\d+/favicon\.ico\)"


@dataclass
class Pages:
    """Opens pages in fresh browser contexts (no cookie carried between tests) and checks
    each page's watch when the test ends."""

    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)
    watches: dict[int, PageWatch] = field(default_factory=dict)

    def open(self, viewport: dict[str, int] | None = None, **options: Any) -> Page:
        context = self.browser.new_context(viewport=viewport or DESKTOP, **options)  # type: ignore[arg-type]
        context.set_default_timeout(PLAYWRIGHT_TIMEOUT_MS)
        context.set_default_navigation_timeout(PLAYWRIGHT_TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        self.watch_page(page)
        return page

    def watch_page(self, page: Page) -> PageWatch:
        watch = PageWatch()
        watch.allow(NO_SESSION_YET)
        watch.allow(NO_FAVICON)
        watch.allow(NO_ROLLOUT)
        watch.attach(page)
        self.watches[id(page)] = watch
        return watch

    def watch(self, page: Page) -> PageWatch:
        return self.watches[id(page)]

    def close(self) -> list[str]:
        # One round trip per page first: Playwright delivers the console messages the page
        # sent before it only inside a call, and the test may have ended on a plain assert.
        for context in self.contexts:
            for page in context.pages:
                with contextlib.suppress(Error):
                    page.evaluate("0")
        problems = [p for w in self.watches.values() for p in w.problems()]
        for context in self.contexts:
            with contextlib.suppress(Error):
                context.close()
        return problems


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    problems = opened.close()
    assert not problems, "the console logged errors:\n" + "\n".join(problems)


@pytest.fixture
def page(pages: Pages) -> Page:
    return pages.open()


# --- Screenshots --------------------------------------------------------------------------


@dataclass
class Screenshots:
    folder: Path
    taken: list[Path] = field(default_factory=list)

    def take(self, page: Page, name: str, *, full_page: bool = True) -> Path:
        """``name``.png in the folder: stable names, so PROMPTPROXY_SCREENSHOTS=docs/console
        refreshes the documentation's pictures in place."""
        path = self.folder / f"{name}.png"
        # The picture is of the page: the notices of the steps before it (toasts, gone by
        # themselves after 6 s) would cover it, so they are dismissed as a reader would.
        page.evaluate("document.querySelectorAll('.toast-close').forEach((b) => b.click())")
        if full_page:
            # Scrolled, a full-page picture draws the sticky header in the middle of it.
            page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        self.taken.append(path)
        return path


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    named = os.environ.get("PROMPTPROXY_SCREENSHOTS")
    folder = (_REPO / named) if named else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return Screenshots(folder)


# --- Driving the console ------------------------------------------------------------------


def login(page: Page, console: ConsoleProxy, name: str) -> None:
    """Type ``name``'s token into the login form, wait for the console to greet them and
    for the prompts list it lands on to be drawn. A test that navigated on before that lost
    its navigation now and then: the list, still loading, writes "#/" into the address when
    it draws (prompts.js renderList's apply(), history.replaceState), over the route the
    test had just gone to, and the page then showed the list again."""
    page.goto(console.console_url)
    page.get_by_test_id("login-token").fill(console.tokens[name])
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("whoami")).to_contain_text(name)
    ready(page, "/")


def ready(page: Page, route: str) -> None:
    """Wait until the page marked itself drawn for ``route`` (app.js pageReady)."""
    page.wait_for_function("(r) => document.body.dataset.ready === r", arg=route)


def until(check: Callable[[], Any], seconds: float, what: str, page: Page | None = None) -> Any:
    """Poll ``check`` until it returns something truthy, at most ``seconds``. With a
    ``page``, the waits go through Playwright: its events (responses, console messages)
    are only delivered while a Playwright call runs, never during a plain sleep."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {seconds} s")
        if page is None:
            time.sleep(0.2)
        else:
            page.wait_for_timeout(200)
