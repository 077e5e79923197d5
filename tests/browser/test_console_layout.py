"""The console on a phone and from the keyboard alone: no page scrolls sideways at 390 px,
the navigation stays in reach, and an operator who never touches a mouse logs in, moves
between pages and opens and cancels a write's confirmation."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    PHONE,
    SETUP_BUDGET,
    ConsoleProxy,
    Pages,
    Screenshots,
    login,
    ready,
    until,
)

pytestmark = pytest.mark.browser

SLUG = "returns-policy-assistant-for-the-european-storefronts"
SHADOW_SLUG = "shipping-estimates"
#: Every page, with the route it marks ready and the name of its phone screenshot.
PAGES = [
    ("#/", "/", "phone-prompts"),
    (f"#/prompts/{SLUG}", "/prompts/:slug", "phone-prompt"),
    (f"#/rollouts/{SLUG}", "/rollouts/:slug", "phone-rollout"),
    (f"#/shadow/{SHADOW_SLUG}", "/shadow/:slug", "phone-shadow"),
    ("#/fleet", "/fleet", "phone-fleet"),
    ("#/audit", "/audit", "phone-audit"),
]
#: Tab presses allowed to reach a control: the header holds a skip link, the brand, three
#: nav links and the session's controls, so more means it is not in the tab order.
MAX_TABS = 40


@pytest.fixture(scope="module")
def seeded(console_proxy: ConsoleProxy) -> ConsoleProxy:
    """A long slug with a canary (analysed, so verdicts with their wide tables of checks)
    and a shadow rollout with pairs: the pages at their widest content."""
    long_words = (
        "You answer questions about returns, refunds and exchanges for the European "
        "storefronts: Germany, France, Italy, Spain, the Netherlands and Belgium."
    )
    console_proxy.seed(SLUG, long_words, long_words + " Please be brief and kind.")
    console_proxy.start_rollout(
        SLUG,
        {
            "candidate": 2,
            "mode": "canary",
            "percent": 50,
            "sticky": "header:x-user-id",
            # One chance fail (a latency blip on a loaded machine) would abort the canary
            # under the tests (the default failure_limit is 0): no abort control, no
            # percent of 50, a page that says no rollout runs.
            "analysis": {"interval": 1, "min_samples": 5, "failure_limit": 1000},
        },
    )
    console_proxy.seed(
        SHADOW_SLUG, "You estimate parcel delivery dates.", "You estimate customs fees."
    )
    console_proxy.start_rollout(
        SHADOW_SLUG, {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"}
    )
    callers = [f"phone-user-{n}" for n in range(10)]
    with console_proxy.steady_traffic(SLUG, callers):
        console_proxy.traffic(SHADOW_SLUG, callers[:3])

        def verdict() -> bool:
            rollout = console_proxy.rollout(SLUG) or {}
            return bool((rollout.get("analysis_state") or {}).get("verdicts"))

        until(verdict, 30, "a verdict on the canary")
    return console_proxy


def horizontal_overflow(page: Page) -> int:
    """CSS pixels the page is wider than the phone's screen (0 or less: it never scrolls
    sideways). The screen is the layout viewport, documentElement.clientWidth: a mobile
    browser zooms out to show content wider than the screen, and its innerWidth then grows
    with that content, so ``scrollWidth <= innerWidth`` alone would always hold there."""
    return int(
        page.evaluate(
            """() => document.scrollingElement.scrollWidth
                     - Math.min(window.innerWidth, document.documentElement.clientWidth)"""
        )
    )


@pytest.mark.timeout(SETUP_BUDGET + 120)
def test_every_page_fits_a_phone(
    seeded: ConsoleProxy, pages: Pages, screenshots: Screenshots
) -> None:
    page = pages.open(PHONE, is_mobile=True, has_touch=True)
    login(page, seeded, "alice")
    for where, route, shot in PAGES:
        page.goto(seeded.console_url + where)
        ready(page, route)
        if route == "/shadow/:slug":
            expect(page.get_by_test_id("shadow-pair").first).to_be_visible()
        if route == "/rollouts/:slug":
            expect(page.get_by_test_id("verdict").first).to_be_visible()
        assert horizontal_overflow(page) <= 0, f"{where} scrolls sideways on a phone"
        screenshots.take(page, shot)

    # The navigation is on screen and works by touch.
    for link in ("nav-prompts", "nav-audit", "nav-fleet"):
        box = page.get_by_test_id(link).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"]
    page.get_by_test_id("nav-audit").tap()
    ready(page, "/audit")
    page.get_by_test_id("nav-prompts").tap()
    ready(page, "/")
    expect(page.get_by_test_id("prompt-row")).to_have_count(2)


def tab_to(page: Page, testid: str, *, first: int = 0) -> None:
    """Press Tab (at least ``first`` times) until the element with ``testid`` has the focus."""
    for presses in range(MAX_TABS):
        focused = page.evaluate("document.activeElement && document.activeElement.dataset.testid")
        if focused == testid and presses >= first:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{testid} not reached with {MAX_TABS} Tab presses")


@pytest.mark.timeout(SETUP_BUDGET + 90)
def test_keyboard_only(seeded: ConsoleProxy, pages: Pages, screenshots: Screenshots) -> None:
    page = pages.open()
    page.goto(seeded.console_url)
    # The login view puts the focus in the token field; Tab leaves it and comes round to it.
    expect(page.get_by_test_id("login-token")).to_be_focused()
    tab_to(page, "login-token", first=1)
    page.keyboard.type(seeded.tokens["alice"])
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("whoami")).to_have_text("alice")
    ready(page, "/")

    # Through the navigation to a link, and Enter follows it.
    tab_to(page, "nav-fleet")
    expect(page.get_by_test_id("nav-fleet")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/fleet$"))
    ready(page, "/fleet")
    tab_to(page, "nav-prompts")
    page.keyboard.press("Enter")
    ready(page, "/")
    tab_to(page, "prompt-link")  # the first prompt of the list
    page.keyboard.press("Enter")
    ready(page, "/prompts/:slug")

    # A write's confirmation opens with Enter and Escape cancels it: nothing is sent.
    before = [e["seq"] for e in seeded.audit(SHADOW_SLUG)] + [e["seq"] for e in seeded.audit(SLUG)]
    page.goto(f"{seeded.console_url}#/rollouts/{SLUG}")
    ready(page, "/rollouts/:slug")
    tab_to(page, "abort")
    page.keyboard.press("Enter")
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("confirm-reason")).to_be_focused()
    page.keyboard.type("changed my mind")
    screenshots.take(page, "confirm-dialog", full_page=False)
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page.get_by_test_id("abort")).to_be_visible()
    assert (seeded.rollout(SLUG) or {}).get("percent") == 50
    after = [e["seq"] for e in seeded.audit(SHADOW_SLUG)] + [e["seq"] for e in seeded.audit(SLUG)]
    assert after == before
