"""The browser tests' own watch on the page: what the console's content security policy
blocks, and an uncaught error, are problems that fail a test, even where the test said to
expect some console errors; an expected refusal is not."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import (
    PLAYWRIGHT_TIMEOUT_MS,
    SETUP_BUDGET,
    ConsoleProxy,
    Pages,
    login,
    until,
)

pytestmark = pytest.mark.browser


@pytest.mark.timeout(SETUP_BUDGET + 60)
def test_policy_violations_and_page_errors_are_problems(
    console_proxy: ConsoleProxy, pages: Pages
) -> None:
    page = pages.open()
    login(page, console_proxy, "viewer")
    watch = pages.watch(page)
    watch.allow(r".")  # even a test expecting console errors...
    assert watch.problems() == []

    # ...fails on what the policy blocks: a style attribute, an inline script.
    page.evaluate("document.body.setAttribute('style', 'background: red')")
    page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.__ran = true'; document.body.append(s); }"""
    )
    expect(page.locator("body")).to_have_attribute("style", "background: red")
    assert page.evaluate("window.__ran === undefined")  # the policy held
    # And on an uncaught exception.
    page.evaluate("setTimeout(() => { throw new Error('boom from the page') }, 0)")
    until(
        lambda: any(e.startswith("page error") for e in watch.errors),
        PLAYWRIGHT_TIMEOUT_MS / 1000,
        "the page error reported",
        page,
    )

    problems = watch.problems()
    assert any("Content Security Policy" in p and "style" in p for p in problems), problems
    assert any("Content Security Policy" in p and "script" in p for p in problems), problems
    assert any(p.startswith("page error") and "boom from the page" in p for p in problems)
    watch.errors.clear()  # this test provoked them: the fixture's own check must pass
