"""An operator's whole rollout, in the console only: log in with a token typed into the form,
start a canary of a new version from its prompt page, ramp it, read the analyser's verdict
and the live charts, look at a shadow rollout's pairs side by side, promote, then roll back.
The proxy's own answers (data plane, admin API) say it happened: the old version is served
again, and every step is audited under the operator's name with the reason they typed."""

from __future__ import annotations

import re

import httpx2 as httpx
import pytest
from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import (
    SETUP_BUDGET,
    ConsoleProxy,
    Pages,
    Screenshots,
    ready,
)

pytestmark = pytest.mark.browser

SLUG = "support-reply"
V1 = "You are the support desk of Acme.\nAnswer questions about passwords, accounts and billing.\n"
# Only courtesy words differ (the simulator answers the same to them), so the analysis has
# no real difference to find and passes; the versions still differ, in the diff and in the
# x-prompt-version header.
V2 = (
    "You are the support desk of Acme.\n"
    "Please answer questions about passwords, accounts and billing, kindly.\n"
)
SHADOW_SLUG = "order-status"
S1 = "You track orders: shipping dates, carriers and parcels."
S2 = "You track orders: refunds, returns, warehouses and customs."
CALLERS = [f"user-{n}" for n in range(20)]
#: How long the analyser and the 5 s page refresh may take to show what the test waits for.
VERDICT_MS = 40_000

REASONS = {
    "start": "try the politer wording on 10 %",
    "step": "no errors after a minute: 25 %",
    "slider": "still clean: half the callers",
    "promote": "the verdicts pass: make it prod",
    "rollback": "support asks for the old wording back",
    "shadow": "compare the refunds wording in the shadow",
}


def confirm(page: Page, reason: str) -> None:
    """The confirmation dialog every write opens: type the reason and confirm."""
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("confirm-reason")).to_be_focused()
    page.get_by_test_id("confirm-reason").fill(reason)
    page.get_by_test_id("confirm-ok").click()
    expect(dialog).to_have_count(0)


def percent_shown(page: Page, percent: int) -> None:
    expect(page.locator('[data-testid="rollout-percent"] [data-percent]')).to_have_attribute(
        "data-percent", str(percent)
    )


def start_rollout(
    page: Page, console: ConsoleProxy, slug: str, mode: str, percent: int, reason: str
) -> None:
    """From the prompt page's form: candidate v2, sticky on x-user-id, and for a canary the
    automated analysis (no steps: it judges and holds, the operator ramps)."""
    page.goto(f"{console.console_url}#/prompts/{slug}")
    ready(page, "/prompts/:slug")
    form = page.get_by_test_id("rollout-form")
    form.get_by_test_id("rollout-candidate").select_option("2")
    form.get_by_test_id("rollout-mode").select_option(mode)
    form.get_by_test_id("rollout-percent").fill(str(percent))
    form.get_by_test_id("rollout-sticky").select_option("header")
    form.get_by_test_id("rollout-sticky-header").fill("x-user-id")
    if mode == "canary":
        form.get_by_test_id("rollout-analysis").check()
        form.get_by_test_id("rollout-steps").fill("")
        form.get_by_test_id("rollout-interval").fill("2")
        form.get_by_test_id("rollout-min-samples").fill("5")
        # A chance fail on a busy machine (latency) must not abort the canary under the test.
        form.get_by_test_id("rollout-failure-limit").fill("5")
    form.get_by_test_id("rollout-submit").click()
    expect(page.get_by_test_id("confirm-summary")).to_contain_text(mode)
    confirm(page, reason)
    expect(page).to_have_url(re.compile(rf"#/rollouts/{slug}$"))
    ready(page, "/rollouts/:slug")


@pytest.mark.timeout(SETUP_BUDGET + 180)
def test_operator_runs_a_rollout_from_the_console(
    console_proxy: ConsoleProxy, pages: Pages, screenshots: Screenshots
) -> None:
    console = console_proxy
    console.seed(SLUG, V1)
    console.seed(SHADOW_SLUG, S1)
    with console.api() as client:
        assert console.push(client, SLUG, V2, "politer") == 2
        assert console.push(client, SHADOW_SLUG, S2, "refunds") == 2
    token = console.tokens["alice"]

    page = pages.open()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request_line(request)))

    # Log in: the token is typed into the form, never put in a URL. A wrong one is refused.
    page.goto(console.console_url)
    page.get_by_test_id("login-token").fill(token[::-1])
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("That token is not valid.")
    page.get_by_test_id("login-token").fill(token)
    screenshots.take(page, "login")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("whoami")).to_have_text("alice")
    ready(page, "/")
    expect(page.get_by_test_id("prompt-row")).to_have_count(2)
    screenshots.take(page, "prompts-list")

    # The prompt page: its versions, and what v2 changes.
    page.get_by_test_id("prompt-row").filter(has_text=SLUG).get_by_test_id("prompt-link").click()
    ready(page, "/prompts/:slug")
    expect(page.get_by_test_id("version-row")).to_have_count(2)
    page.get_by_test_id("diff-from").select_option("1")
    page.get_by_test_id("diff-to").select_option("2")
    page.get_by_test_id("diff-show").click()
    diff = page.get_by_test_id("diff-output")
    expect(diff.locator(".diff-del")).to_contain_text("Answer questions about passwords")
    expect(diff.locator(".diff-add")).to_contain_text("Please answer questions")
    screenshots.take(page, "prompt-detail")

    start_rollout(page, console, SLUG, "canary", 10, REASONS["start"])
    expect(page.get_by_test_id("rollout-candidate")).to_have_text("v2")
    percent_shown(page, 10)

    with console.steady_traffic(SLUG, CALLERS, pause=0.2) as served:
        # Ramp with a step button, then with the slider; each asks for a reason first.
        page.get_by_test_id("step-25").click()
        expect(page.get_by_test_id("confirm-move")).to_contain_text("from 10 % to 25 %")
        confirm(page, REASONS["step"])
        percent_shown(page, 25)
        page.get_by_test_id("percent-slider").fill("50")
        expect(page.get_by_test_id("percent-input")).to_have_value("50")
        page.get_by_test_id("percent-apply").click()
        confirm(page, REASONS["slider"])
        percent_shown(page, 50)
        assert console.rollout(SLUG)["percent"] == 50  # type: ignore[index]

        # The analyser's verdict, as the page shows it: a pass, and its figures.
        verdicts = page.locator('[data-testid="verdict"][data-result="pass"]')
        passed = verdicts.filter(has_text="at 50 %").first
        expect(passed).to_be_visible(timeout=VERDICT_MS)
        if passed.get_attribute("open") is None:
            passed.locator("summary").click()
        errors = passed.locator('[data-testid="verdict-check"][data-name="error_rate"]')
        expect(errors).to_have_attribute("data-result", "pass")
        # No error on either arm: the figures, in their unit.
        expect(errors.locator('td[data-label="stable"]')).to_have_text(re.compile(r"^0\s*%$"))
        expect(errors.locator('td[data-label="candidate"]')).to_have_text(re.compile(r"^0\s*%$"))
        # Live charts, canary against stable, with points.
        chart = page.get_by_test_id("chart-error-rate")
        expect(chart).not_to_have_attribute("data-points", "0", timeout=VERDICT_MS)
        assert int(chart.get_attribute("data-points") or 0) > 0
        expect(page.get_by_test_id("chart-p95-latency")).to_be_visible()
        screenshots.take(page, "rollout-verdict")
    arms = {s.arm for s in served}
    assert arms == {"stable", "canary"}, arms

    # A shadow rollout on another prompt: pairs side by side, differences marked.
    start_rollout(page, console, SHADOW_SLUG, "shadow", 100, REASONS["shadow"])
    with console.steady_traffic(SHADOW_SLUG, CALLERS[:4], pause=0.3) as shadowed:
        page.get_by_test_id("link-shadow").click()
        ready(page, "/shadow/:slug")
        pair = page.locator('[data-testid="shadow-pair"][data-kind="candidate"]').first
        expect(pair).to_be_visible(timeout=VERDICT_MS)
    assert {s.version for s in shadowed} == {1}  # callers only ever get the stable answer
    expect(pair.get_by_test_id("pair-primary")).to_contain_text("(v1)")
    expect(pair.get_by_test_id("pair-shadow")).to_contain_text("(v2)")
    expect(pair.get_by_test_id("pair-primary").locator("del").first).to_be_visible()
    expect(pair.get_by_test_id("pair-shadow").locator("ins").first).to_be_visible()
    screenshots.take(page, "shadow-pair")

    # The prompts list says at a glance how each rollout is doing: the canary's last
    # verdict (one has been reached, so not "pending" nor "unknown"), none for the shadow
    # without a policy. Which verdict is last is the analyser's: a chance fail on a loaded
    # machine is one (the canary tolerates 5), so all three are right here.
    page.goto(f"{console.console_url}#/")
    ready(page, "/")
    canary_row = page.locator(f'[data-testid="prompt-row"][data-slug="{SLUG}"]')
    expect(canary_row.get_by_test_id("rollout-verdict")).to_have_attribute(
        "data-result", re.compile(r"^(pass|fail|inconclusive)$")
    )
    shadow_row = page.locator(f'[data-testid="prompt-row"][data-slug="{SHADOW_SLUG}"]')
    expect(shadow_row).to_have_attribute("data-rollout", "shadow")
    expect(shadow_row.get_by_test_id("rollout-verdict")).to_have_count(0)
    screenshots.take(page, "prompts-list-rollouts")

    # Promote the canary, then roll it back: the old version is served again.
    page.goto(f"{console.console_url}#/rollouts/{SLUG}")
    ready(page, "/rollouts/:slug")
    page.get_by_test_id("promote").click()
    confirm(page, REASONS["promote"])
    expect(page.get_by_test_id("rollout-none")).to_be_visible()
    assert {s.version for s in console.traffic(SLUG, CALLERS)} == {2}
    page.get_by_test_id("rollback").click()
    expect(page.get_by_test_id("confirm-summary")).to_contain_text("now v2")
    confirm(page, REASONS["rollback"])
    expect(page.get_by_test_id("rollout-none")).to_contain_text("prod: v1")

    served_after = console.traffic(SLUG, CALLERS)
    assert {(s.arm, s.version) for s in served_after} == {("stable", 1)}
    assert system_prompts(console, len(CALLERS)) == {V1.strip()}

    # The audit log, through the admin API: each move is alice's, with the reason she typed.
    moves = [
        (e["action"], e["version"], e["actor"], e["reason"])
        for e in console.audit(SLUG)
        if e["actor"] != "analyser" and not str(e["actor"]).startswith("analyser:")
    ]
    assert moves[-5:] == [
        ("rollout_start", 2, "alice", REASONS["start"]),
        ("rollout_update", 2, "alice", REASONS["step"]),
        ("rollout_update", 2, "alice", REASONS["slider"]),
        ("promote", 2, "alice", REASONS["promote"]),
        ("rollback", 1, "alice", REASONS["rollback"]),
    ]
    shadow_start = [e for e in console.audit(SHADOW_SLUG) if e["action"] == "rollout_start"]
    assert [(e["actor"], e["reason"]) for e in shadow_start] == [("alice", REASONS["shadow"])]

    # The console's own audit page shows the same, and the fleet page the one replica.
    page.get_by_test_id("nav-audit").click()
    ready(page, "/audit")
    expect(page.get_by_test_id("audit-row").first).to_contain_text(REASONS["rollback"])
    expect(page.get_by_test_id("audit-row").first).to_contain_text("alice")
    screenshots.take(page, "audit")
    page.get_by_test_id("nav-fleet").click()
    ready(page, "/fleet")
    expect(page.get_by_test_id("fleet-banner")).to_have_attribute("data-state", "complete")
    expect(page.get_by_test_id("fleet-row")).to_have_count(1)
    screenshots.take(page, "fleet")

    # Logging out ends the session: the next visit asks for a token again.
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.goto(console.console_url + "#/audit")
    expect(page.get_by_test_id("login-token")).to_be_visible()

    # The token went into the login request's body, and nowhere else: not a URL, not the
    # page's storage (the session is an HttpOnly cookie the page cannot read), not a log.
    assert token not in page.url
    stored = page.evaluate(
        "JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie"
    )
    assert token not in stored
    assert not [u for u in urls if token in u]
    assert token not in console.log_text()


def request_line(request: Request) -> str:
    return f"{request.method} {request.url} {request.headers}"


def system_prompts(console: ConsoleProxy, last: int) -> set[str]:
    """The system prompts of the simulated provider's last requests."""
    seen = httpx.get(f"{console.sim_url.removesuffix('/v1')}/_sim/requests?limit={last}").json()
    return {str(s["body"]["messages"][0]["content"]).strip() for s in seen}
