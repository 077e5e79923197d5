"""How long each console page takes to draw its data with 200 prompts and 10 running
rollouts: from the start of the navigation to the page marking itself ready (app.js
`pageReady`, `window.__consoleTimings`). Reported, not asserted (issue 13): the figures go to
stdout and a file: loadtest/results/console.json when PROMPTPROXY_CONSOLE_TIMINGS=1 (how the
committed figures are refreshed; a plain run leaves the tree as it found it), else the
test's temporary folder. What is asserted is that every page did load, and
that the prompts list drew all 200 prompts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import (
    FAST_ANALYSIS,
    SETUP_BUDGET,
    ConsoleProxy,
    Pages,
    Screenshots,
    login,
    ready,
)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
COMMITTED_RESULTS = REPO / "loadtest" / "results" / "console.json"
PROMPTS = 200
ROLLOUTS = 10
SAMPLES = 7


def slug(n: int) -> str:
    return f"load-{n:03d}"


def seed(console: ConsoleProxy) -> None:
    """200 prompts, the first 10 with a second version under a running rollout (canaries,
    and every third a shadow), all over the admin API."""

    def one(n: int) -> None:
        with console.api() as client:
            console.push(client, slug(n), f"You answer questions about topic {n}.")
            if n < ROLLOUTS:
                console.push(client, slug(n), f"You answer questions about topic {n}, briefly.")
            promoted = client.post(
                f"/prompts/{slug(n)}/promote", json={"version": 1, "reason": "seed"}
            )
            assert promoted.status_code == 200, promoted.text
            if n < ROLLOUTS:
                mode = "shadow" if n % 3 == 2 else "canary"
                started = client.put(
                    f"/prompts/{slug(n)}/rollout",
                    json={
                        "candidate": 2,
                        "mode": mode,
                        "percent": 100 if mode == "shadow" else 10,
                        "sticky": "header:x-user-id",
                        "analysis": FAST_ANALYSIS,
                        "reason": "seed",
                    },
                )
                assert started.status_code == 201, started.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(PROMPTS)))
    with console.api() as client:
        listed = client.get("/prompts").json()["data"]
        rollouts = client.get("/rollouts").json()["data"]
    assert len(listed) == PROMPTS
    assert len(rollouts) == ROLLOUTS


#: page -> (hash route, the route name pageReady records)
PAGES: dict[str, tuple[str, str]] = {
    "prompts list": ("#/", "/"),
    "prompt": (f"#/prompts/{slug(1)}", "/prompts/:slug"),
    "rollout": (f"#/rollouts/{slug(1)}", "/rollouts/:slug"),
    "shadow": (f"#/shadow/{slug(2)}", "/shadow/:slug"),
    "fleet": ("#/fleet", "/fleet"),
    "audit": ("#/audit", "/audit"),
}


def load(page: Page, console: ConsoleProxy, where: str, route: str) -> dict[str, float]:
    """One cold document load of a route (the session cookie kept): ms from navigation start
    to the data drawn, and the browser's own navigation marks."""
    page.goto("about:blank")
    page.goto(console.console_url + where)
    ready(page, route)
    expect(page.get_by_test_id("error")).to_have_count(0)  # drew its data, not a failure
    figures: dict[str, float] = page.evaluate(
        """(route) => {
            const nav = performance.getEntriesByType('navigation')[0];
            return {ready_ms: window.__consoleTimings[route],
                    dom_content_loaded_ms: nav.domContentLoadedEventEnd,
                    load_ms: nav.loadEventEnd, transfer_bytes: nav.transferSize};
        }""",
        route,
    )
    return figures


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def machine(browser: Browser) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_head(),
        "command": "pytest tests/browser/test_console_loadtime.py",
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "browser": f"chromium {browser.version} (headless)",
        "playwright": metadata.version("playwright"),
        "loadavg_at_end": os.getloadavg(),
    }


@pytest.mark.timeout(SETUP_BUDGET + 240)
def test_console_page_load_times(
    console_proxy: ConsoleProxy,
    pages: Pages,
    browser: Browser,
    screenshots: Screenshots,
    tmp_path: Path,
) -> None:
    loadavg_at_start = os.getloadavg()
    seed(console_proxy)
    page = pages.open()
    login(page, console_proxy, "viewer")

    # The list draws every prompt, and each running rollout's slug links to its page.
    page.goto(console_proxy.console_url + "#/")
    ready(page, "/")
    expect(page.get_by_test_id("prompt-row")).to_have_count(PROMPTS)
    for n in range(ROLLOUTS):
        expect(page.locator(f'a[href="#/rollouts/{slug(n)}"]')).to_have_count(1)
    screenshots.take(page, "load-prompts-list", full_page=False)  # 200 rows: the first screen

    measured: dict[str, list[dict[str, float]]] = {name: [] for name in PAGES}
    for _ in range(SAMPLES):
        for name, (where, route) in PAGES.items():
            measured[name].append(load(page, console_proxy, where, route))

    result = {
        "meta": {
            **machine(browser),
            "loadavg_at_start": loadavg_at_start,
            "prompts": PROMPTS,
            "rollouts": ROLLOUTS,
            "samples_per_page": SAMPLES,
            "measure": "ms from navigation start to the page's pageReady() (its first data "
            "drawn), a cold document load each time, session cookie kept; proxy and browser "
            "on the same machine, not pinned",
        },
        "pages": {
            name: {
                "route": PAGES[name][0],
                "ready_ms": spread([s["ready_ms"] for s in samples]),
                "dom_content_loaded_ms": spread([s["dom_content_loaded_ms"] for s in samples]),
                "samples_ready_ms": [round(s["ready_ms"], 1) for s in samples],
            }
            for name, samples in measured.items()
        },
    }
    results = (
        COMMITTED_RESULTS
        if os.environ.get("PROMPTPROXY_CONSOLE_TIMINGS") == "1"
        else tmp_path / "console.json"
    )
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nconsole load times ({result['meta']['date']}, {result['meta']['cpu_model']}):")
    for name, figures in result["pages"].items():
        ready_ms = figures["ready_ms"]
        median, worst = ready_ms["median"], ready_ms["max"]
        print(f"  {name:<13} ready median {median:>6.1f} ms, max {worst:>6.1f} ms")
    for samples in measured.values():
        assert all(s["ready_ms"] > 0 for s in samples)
