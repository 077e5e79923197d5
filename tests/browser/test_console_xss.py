"""What the console shows is text, whatever it holds: a version whose template and changelog
are HTML and script, and shadow answers that echo a question made of them, show those
characters literally and run nothing, build no element, and trip no content security
policy. And the policy is in force: the page is served with it, and a script injected
inline into the page is blocked and reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import (
    PLAYWRIGHT_TIMEOUT_MS,
    SETUP_BUDGET,
    ConsoleProxy,
    Pages,
    login,
    ready,
)

pytestmark = pytest.mark.browser

SLUG = "markup-bait"
#: Each payload, were it parsed as HTML, would set ``window.__xss`` (inline handlers too,
#: had the policy allowed them) or draw an element the test looks for.
TEMPLATE = (
    "You answer plainly.\n"
    "<script>window.__xss = 'template-script'</script>\n"
    "<img src=x onerror=\"window.__xss = 'template-img'\">\n"
    "<svg><script>window.__xss = 'template-svg'</script></svg>\n"
    '<a href="javascript:window.__xss=1">click</a>\n'
    "<iframe srcdoc=\"<script>parent.__xss='frame'</script>\"></iframe>"
)
CHANGELOG = "<b>bold</b><img src=x onerror=\"window.__xss='changelog'\">"
#: The simulator's answer echoes the question's words, so the shadow answers hold these.
QUESTION = "<img/src=x/onerror=window.__xss='answer'> <svg/onload=window.__xss='svg'> <b>hi</b>"
MARKUP = "script, img, svg, a[href^='javascript'], iframe, b"


def leave(page: Page) -> None:
    """Mark the view on screen as left. A navigation that changes only the hash returns
    before the page has redrawn (hashchange comes later), so a wait for "ready" or for an
    error box could otherwise be met by the page being left, and check nothing; app.js
    draws each route into a fresh `.view`, which this mark is not on."""
    page.evaluate("document.querySelector('#main .view')?.setAttribute('data-left', '')")


def _no_markup_ran(page: Page) -> None:
    assert page.evaluate("window.__xss") is None


@pytest.fixture(scope="module")
def bait(console_proxy: ConsoleProxy) -> ConsoleProxy:
    """v1 prod, v2 the payload, in a shadow rollout with pairs that echo the question."""
    console_proxy.seed(SLUG, "You answer plainly.")
    with console_proxy.api() as client:
        assert console_proxy.push(client, SLUG, TEMPLATE, CHANGELOG) == 2
    console_proxy.start_rollout(
        SLUG, {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "header:x-user-id"}
    )
    served = console_proxy.traffic(SLUG, [f"caller-{n}" for n in range(4)], question=QUESTION)
    assert all("<img/src=x" in s.text for s in served), served
    return console_proxy


@pytest.mark.timeout(SETUP_BUDGET + 90)
def test_a_template_and_answers_full_of_markup_show_as_text(
    bait: ConsoleProxy, pages: Pages
) -> None:
    page = pages.open()
    login(page, bait, "alice")

    # The version: its template and changelog, character for character, and no element.
    page.goto(f"{bait.console_url}#/prompts/{SLUG}")
    ready(page, "/prompts/:slug")
    expect(page.get_by_test_id("version-row")).to_have_count(2)
    versions = page.locator('[data-testid="version-row"]')
    expect(versions.filter(has_text="<b>bold</b>")).to_have_count(1)
    versions.filter(has_text="<b>bold</b>").get_by_test_id("version-open").click()
    template = page.get_by_test_id("version-template")
    expect(template).to_have_text(TEMPLATE)
    assert template.locator(MARKUP).count() == 0
    # The diff against v1 is text too.
    page.get_by_test_id("diff-from").select_option("1")
    page.get_by_test_id("diff-to").select_option("2")
    page.get_by_test_id("diff-show").click()
    diff = page.get_by_test_id("diff-output")
    expect(diff).to_contain_text("<script>window.__xss = 'template-script'</script>")
    assert diff.locator(MARKUP).count() == 0
    _no_markup_ran(page)

    # The shadow pairs: both answers echo the question as text.
    page.goto(f"{bait.console_url}#/shadow/{SLUG}")
    ready(page, "/shadow/:slug")
    pair = page.get_by_test_id("shadow-pair").first
    expect(pair).to_be_visible(timeout=30_000)
    for side in ("pair-primary", "pair-shadow"):
        expect(pair.get_by_test_id(side)).to_contain_text("<img/src=x/onerror=window.__xss=")
        assert pair.get_by_test_id(side).locator(MARKUP).count() == 0
    _no_markup_ran(page)

    # A route made of markup or a javascript: URL is a page that names it, as text (the
    # second asks the API for a prompt of that name: a 400, which the page shows).
    pages.watch(page).allow(r"status of 400 .*/admin/v1/prompts/javascript%3Aalert\(1\)")
    for route in ("#/<img src=x onerror=window.__xss=1>", "#/prompts/javascript:alert(1)"):
        leave(page)
        page.goto(f"{bait.console_url}{route}")
        page.wait_for_function(
            """() => {
                const view = document.querySelector('#main .view:not([data-left])');
                return view !== null && (document.body.dataset.ready !== undefined
                    || view.querySelector('[data-testid=error]') !== null);
            }"""
        )
        assert page.locator("main").locator(MARKUP).count() == 0
        hrefs = page.eval_on_selector_all("a[href]", "(links) => links.map((a) => a.href)")
        assert not [h for h in hrefs if h.lower().startswith("javascript:")], hrefs
        _no_markup_ran(page)

    # A dot segment as a prompt key would walk up the API's path (/admin/v1/prompts/..
    # is /admin/v1): the page refuses it without asking the API anything.
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    for route in ("#/rollouts/..", "#/prompts/%2e%2e", "#/shadow/."):
        leave(page)
        page.goto(f"{bait.console_url}{route}")
        fresh = page.locator("#main .view:not([data-left])")
        expect(fresh.get_by_test_id("error").first).to_contain_text("Not a prompt key")
    walked = [u for u in asked if "/admin/v1/" in u and "/prompts/" not in u]
    assert not [u for u in walked if not u.endswith("/admin/v1/rollouts")], walked
    assert not [u for u in asked if u.rstrip("/").endswith(("/prompts/..", "/prompts/."))]


# --- the policy itself ---------------------------------------------------------------------


@pytest.fixture
def bare_context(browser: Browser) -> Iterator[BrowserContext]:
    """A context without the shared page watch: this test provokes the violation that
    watch fails every other test on."""
    context = browser.new_context()
    context.set_default_timeout(PLAYWRIGHT_TIMEOUT_MS)
    yield context
    context.close()


# Its own budget: run alone (-k), this test's setup is the one that may install Chromium.
@pytest.mark.timeout(SETUP_BUDGET + 60)
def test_the_policy_blocks_and_reports_an_injected_inline_script(
    console_proxy: ConsoleProxy, bare_context: BrowserContext
) -> None:
    page = bare_context.new_page()
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    answer = page.goto(console_proxy.console_url)
    assert answer is not None
    assert answer.ok
    headers = answer.headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    assert "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    page.get_by_test_id("login-token").wait_for()

    found: Any = page.evaluate(
        """() => new Promise((resolve) => {
          document.addEventListener('securitypolicyviolation', (event) => resolve({
            directive: event.effectiveDirective, blocked: event.blockedURI,
            ran: window.__inline === true,
          }), { once: true });
          const script = document.createElement('script');
          script.textContent = 'window.__inline = true';
          document.body.append(script);
        })"""
    )
    assert found == {"directive": "script-src-elem", "blocked": "inline", "ran": False}
    assert page.evaluate("window.__inline") is None
    assert any("Content Security Policy" in m for m in messages), messages

    # An inline event handler (what an HTML injection would use) is refused the same way.
    handler: Any = page.evaluate(
        """() => new Promise((resolve) => {
          document.addEventListener('securitypolicyviolation', (event) => resolve(
            event.effectiveDirective), { once: true });
          const img = document.createElement('img');
          img.setAttribute('onerror', 'window.__handler = true');
          img.src = 'data:,x';
          document.body.append(img);
        })"""
    )
    assert handler == "script-src-attr"
    assert page.evaluate("window.__handler") is None
