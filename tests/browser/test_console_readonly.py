"""A read-only operator sees the console without a single write control, and a write forged
from their page (with the session cookie and even its CSRF value) is refused; so is a write
sent to the admin port by a page of another origin, even with an admin's session in the
browser. Nothing changes either way."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    PLAYWRIGHT_TIMEOUT_MS,
    SETUP_BUDGET,
    ConsoleProxy,
    Pages,
    Screenshots,
    login,
    ready,
    until,
)
from tests.processes import free_port

pytestmark = pytest.mark.browser

SLUG = "billing-help"
#: Every control that changes something, on the prompt page (prompts.js) and the rollout
#: page (rollout.js), by the test ids those modules document.
WRITE_CONTROLS = ", ".join(
    [
        f'[data-testid="{testid}"]'
        for testid in (
            # prompt page
            "writes",
            "promote-version",
            "promote-submit",
            "rollback-submit",
            "rollout-form",
            "rollout-submit",
            # rollout page
            "percent-controls",
            "percent-slider",
            "percent-input",
            "percent-apply",
            "promote",
            "abort",
            "rollback",
        )
    ]
    + ['[data-testid^="step-"]']
)
#: The controls of those pages that only choose what to read.
READING_CONTROLS = {
    "version-open",
    "diff-from",
    "diff-to",
    "diff-show",
    "history-at",
    "history-at-show",
}
#: The pages an operator acts from.
WRITE_PAGES = {
    "prompt": (f"#/prompts/{SLUG}", "/prompts/:slug"),
    "rollout": (f"#/rollouts/{SLUG}", "/rollouts/:slug"),
}


@pytest.fixture(scope="module")
def seeded(console_proxy: ConsoleProxy) -> ConsoleProxy:
    """v1 prod, v2 in a 20 % canary, v3 a draft: something for every write to act on."""
    console_proxy.seed(SLUG, "You help with invoices.", "You help with invoices and refunds.")
    console_proxy.start_rollout(
        SLUG, {"candidate": 2, "mode": "canary", "percent": 20, "sticky": "header:x-user-id"}
    )
    with console_proxy.api() as client:
        console_proxy.push(client, SLUG, "You help with invoices, refunds and taxes.")
    return console_proxy


def state(console: ConsoleProxy) -> dict[str, Any]:
    """What a write would change: prod, the rollout's candidate and share, the audit."""
    rollout = console.rollout(SLUG)
    prompt = console.prompt(SLUG)
    return {
        "prod": prompt["prod_version"],
        "statuses": {v["version"]: v["status"] for v in prompt["data"]},
        "rollout": rollout and (rollout["candidate"], rollout["percent"], rollout["id"]),
        "audit": [e["seq"] for e in console.audit(SLUG)],
    }


def count_write_controls(page: Page, console: ConsoleProxy) -> dict[str, int]:
    found = {}
    for name, (where, route) in WRITE_PAGES.items():
        page.goto(console.console_url + where)
        ready(page, route)
        found[name] = page.locator(WRITE_CONTROLS).count()
    return found


def controls(page: Page, console: ConsoleProxy) -> set[str]:
    """The test id (or tag and text) of every control on the write pages."""
    found: set[str] = set()
    for where, route in WRITE_PAGES.values():
        page.goto(console.console_url + where)
        ready(page, route)
        found |= set(
            page.evaluate(
                """() => [...document.querySelectorAll(
                    '#main button, #main input, #main select, #main textarea'
                )].map((e) => e.dataset.testid || `${e.tagName} ${e.textContent.trim()}`)"""
            )
        )
    return found


@pytest.mark.timeout(SETUP_BUDGET + 90)
def test_read_only_operator_has_no_write_control_and_cannot_forge_one(
    seeded: ConsoleProxy, pages: Pages, screenshots: Screenshots
) -> None:
    before = state(seeded)

    # The same pages show an admin their write controls: the selector finds them...
    admin = pages.open()
    login(admin, seeded, "alice")
    assert all(n > 0 for n in count_write_controls(admin, seeded).values())

    # ...and a read-only operator none, with the header saying why.
    page = pages.open()
    login(page, seeded, "viewer")
    expect(page.get_by_test_id("role")).to_have_text("read-only")
    assert count_write_controls(page, seeded) == {"prompt": 0, "rollout": 0}
    assert controls(page, seeded) <= READING_CONTROLS
    expect(page.get_by_test_id("rollout-percent")).to_contain_text("20")
    screenshots.take(page, "readonly-rollout")

    # A write forged from the page itself, with the cookie and the session's CSRF value.
    pages.watch(page).allow(r"status of 403")
    refused = page.evaluate(
        """async (slug) => {
            const session = await (await fetch('/console/session')).json();
            const send = async (method, path, body) => {
                const r = await fetch('/admin/v1/prompts/' + slug + path, {
                    method, credentials: 'same-origin',
                    headers: {'Content-Type': 'application/json',
                              'X-CSRF-Token': session.csrf || 'none'},
                    body: body === undefined ? undefined : JSON.stringify(body)});
                const answer = await r.json();
                return [r.status, answer.error ? answer.error.message : null];
            };
            return {
                ramp: await send('PUT', '/rollout', {candidate: 2, mode: 'canary',
                                                     percent: 100, reason: 'forged'}),
                promote: await send('POST', '/rollout/promote', {reason: 'forged'}),
                abort: await send('DELETE', '/rollout?reason=forged'),
                rollback: await send('POST', '/rollback', {reason: 'forged'}),
                promote_draft: await send('POST', '/promote', {version: 3, reason: 'forged'}),
                push: await send('POST', '/versions', {template: 'forged'}),
            };
        }""",
        SLUG,
    )
    assert {name: status for name, (status, _) in refused.items()} == dict.fromkeys(refused, 403)
    assert all("read-only" in message for _, message in refused.values()), refused
    assert state(seeded) == before


EVIL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>not the console</title></head><body>
<iframe name="sink" title="sink"></iframe>
<form id="form" method="post" enctype="text/plain" target="sink"
      action="ADMIN/admin/v1/prompts/SLUG/rollout/promote">
  <input type="hidden" name='{"reason": "csrf by form", "x": "' value='"}'>
</form>
<script>
(async () => {
  const admin = 'ADMIN';
  const out = {};
  // A "simple" request: no preflight, the browser sends it with the cookie.
  try {
    await fetch(admin + '/admin/v1/prompts/SLUG/rollback', {
      method: 'POST', mode: 'no-cors', credentials: 'include',
      headers: {'Content-Type': 'text/plain'}, body: '{"reason": "csrf by fetch"}'});
    out.simple = 'sent';
  } catch (e) { out.simple = 'blocked: ' + e.message; }
  // Reading the session's CSRF value across origins: no CORS headers, so no.
  try {
    const r = await fetch(admin + '/console/session', {credentials: 'include'});
    out.session = 'read: ' + (await r.text());
  } catch (e) { out.session = 'blocked'; }
  // A JSON write with a guessed CSRF header needs a preflight the proxy never grants.
  try {
    const r = await fetch(admin + '/admin/v1/prompts/SLUG/rollout', {
      method: 'DELETE', credentials: 'include', headers: {'X-CSRF-Token': 'guess'}});
    out.preflighted = 'status ' + r.status;
  } catch (e) { out.preflighted = 'blocked'; }
  document.getElementById('form').submit();
  window.__evil = out;
})();
</script>
</body></html>
"""


@pytest.fixture
def evil_origin(seeded: ConsoleProxy) -> Iterator[str]:
    """Another web server on this host (same site, another port: the browser sends the
    console's SameSite=Strict cookie to the admin port from its pages) serving one page that
    tries to write to the admin port."""
    body = EVIL_PAGE.replace("ADMIN", seeded.proc.admin_url).replace("SLUG", SLUG).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.timeout(SETUP_BUDGET + 60)
def test_write_from_another_origin_is_refused_even_with_an_admin_session(
    seeded: ConsoleProxy, pages: Pages, evil_origin: str
) -> None:
    before = state(seeded)
    console = pages.open()
    login(console, seeded, "alice")

    evil = console.context.new_page()
    pages.watch_page(evil).allow(r"CORS policy|Failed to load resource|net::ERR_FAILED")
    # What came back from the admin port, as the network saw it (a no-cors answer is opaque
    # to the page's script, not to the browser), read from the DevTools protocol itself:
    # Playwright's "response" event is not enough. Chromium aborts the no-cors fetch right
    # after its opaque JSON answer's headers (net::ERR_ABORTED), and Playwright forgets a
    # request once it has failed: should the abort reach it first, it never emits "response"
    # for that fetch, and the wait below ran out with one POST seen.
    # responseReceivedExtraInfo is the network service's own report of the status line.
    sent: dict[str, tuple[str, str]] = {}
    status: dict[str, int] = {}
    devtools = console.context.new_cdp_session(evil)
    devtools.on(
        "Network.requestWillBeSent",
        lambda e: sent.setdefault(e["requestId"], (e["request"]["method"], e["request"]["url"])),
    )
    devtools.on(
        "Network.responseReceivedExtraInfo",
        lambda e: status.setdefault(e["requestId"], int(e["statusCode"])),
    )
    devtools.on(
        "Network.responseReceived",
        lambda e: status.setdefault(e["requestId"], int(e["response"]["status"])),
    )
    devtools.send("Network.enable")
    evil.goto(evil_origin)
    evil.wait_for_function("window.__evil !== undefined")
    outcome = evil.evaluate("window.__evil")
    assert outcome["session"] == "blocked"  # the CSRF value cannot be read from there
    assert outcome["preflighted"] == "blocked"  # nor a custom header sent

    # The simple POSTs did reach the proxy and were refused there: 403, not 401, so the
    # cookie came with them (same site, another port) and the CSRF checks said no.
    def posts() -> list[tuple[str, int]] | None:
        found = sorted(
            (url.rsplit("/", 1)[1], status[request])
            for request, (method, url) in sent.items()
            if method == "POST" and url.startswith(seeded.proc.admin_url) and request in status
        )
        return found if len(found) >= 2 else None

    writes = until(posts, PLAYWRIGHT_TIMEOUT_MS / 1000, "the forged POSTs answered", evil)
    assert writes == [("promote", 403), ("rollback", 403)]
    assert state(seeded) == before
