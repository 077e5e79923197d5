"""A bounded schemathesis run of the admin OpenAPI against the real admin app.

The admin app is served by a real aiohttp server on 127.0.0.1 (its own thread and loop),
with an embedded store in a tmp dir and an admin token. Schemathesis (its Python engine, the
one its CLI drives) generates requests from /admin/v1/openapi.json, valid and invalid, plus
methods the API does not declare, and every check must hold:

- no 5xx, whatever the input;
- the status code, content type and body of every answer are ones the document declares;
- the server accepts what the document allows and refuses what it forbids (the document is
  as strict as the server), and a 405 lists the allowed methods in `Allow`.

Bounded: a fixed seed and derandomized generation (the same requests every run) and a fixed
number of examples per operation, so the run is the same size every time, well under the
suite's 60 s per-test timeout. (Schemathesis' `max-time` is not used: it makes fuzzing
repeat until the time is spent, so the run would depend on the machine's speed.)
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from schemathesis.engine import Status, events, from_schema

from proxy.services import open_services
from proxy.web.admin_params import SERIES_SINCE_REGEX, series_seconds
from proxy.web.admin_routes import ROUTES
from proxy.web.app import build_admin_app
from proxy.web.openapi import document
from tests.processes import free_port
from tests.support import make_settings

TOKEN = "fuzz-admin-token"
#: Fuzzing examples per operation; with the coverage phase's own cases the run makes ~1,000
#: requests in about 6 s (2-core machine).
MAX_EXAMPLES = 20
#: Operations whose bodies have rules JSON Schema cannot state, so a schema-valid body may
#: still be refused with a 400 naming the field (every other check still holds for them):
#: a template is Jinja the sandbox must accept, using only declared variables; an analysis
#: policy's steps ascend strictly, a feedback check names a feedback this proxy takes, and
#: its counts refuse 16.0 (JSON Schema calls that an integer); an export is checked like
#: pushes (slugs, templates, content hashes), numbers 1..n per prompt with one prod, and
#: its audit seqs increase strictly; a tenant's tier is one the config lists, and its key
#: digests are each listed once; an eval suite's cases are read by the suite reader (regexes
#: compile, schemas are valid, case names are unique) and need versions that exist; a
#: replay needs captured calls and a `since` in one of its forms.
BEYOND_JSON_SCHEMA = (
    "POST /admin/v1/prompts/{slug}/evals",
    "POST /admin/v1/prompts/{slug}/replays",
    "POST /admin/v1/prompts/{slug}/versions",
    "PUT /admin/v1/prompts/{slug}/rollout",
    "POST /admin/v1/registry/import",
    "PUT /admin/v1/tenants/{tenant_id}",
)
SEED = [
    (
        "POST",
        "/admin/v1/prompts/support/versions",
        {"template": "Hello {{ name }}", "variables": [{"name": "name"}]},
    ),
    (
        "POST",
        "/admin/v1/prompts/support/versions",
        {"template": "Hi {{ name }}", "variables": [{"name": "name"}]},
    ),
    ("POST", "/admin/v1/prompts/support/promote", {"version": 1}),
]


class AdminServer:
    """The admin app on a free 127.0.0.1 port, served from a thread with its own loop so the
    (synchronous) schemathesis engine can call it from the test's thread."""

    def __init__(self, store_dir: Path) -> None:
        self._settings = make_settings(
            environ={"PROMPTPROXY_ADMIN_TOKEN": TOKEN},
            **{"registry.store": f"embedded:{store_dir / 'registry.db'}"},
        )
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="admin-fuzz-server", daemon=True)
        self.url = ""

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the test thread by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with open_services(self._settings) as services:
            # Eval runs and replays start (a data plane "listens" on a port nothing serves:
            # their calls fail at once), as in a running proxy, instead of a 503.
            services.evals.listening(f"http://127.0.0.1:{free_port()}", "fuzz")
            runner = web.AppRunner(build_admin_app(services))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise RuntimeError(f"admin server did not start: {self._error!r}")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


@pytest.fixture
def admin_url(tmp_path: Path) -> Iterator[str]:
    server = AdminServer(tmp_path)
    server.start()
    try:
        _seed(server.url)
        yield server.url
    finally:
        server.stop()


def _seed(url: str) -> None:
    """A prompt with a prod and a draft version, so some generated calls reach real data."""
    import urllib.request

    import orjson

    for method, path, body in SEED:
        request = urllib.request.Request(
            url + path,
            data=orjson.dumps(body),
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status in (200, 201)


def _config(url: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": 20261205,
            "base-url": url,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "workers": 1,
            "request-timeout": 5,
            # No example database: replaying a past run's failures would make runs differ
            # (and write .hypothesis/ into the checkout).
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "response_headers_conformance": {"enabled": True},
                "positive_data_acceptance": {"enabled": True},
                "negative_data_rejection": {"enabled": True},
                "unsupported_method": {"enabled": True},
                "allow_header_conformance": {"enabled": True},
                "missing_required_header": {"enabled": False},
                "use_after_free": {"enabled": False},
                "ensure_resource_availability": {"enabled": False},
                "ignored_auth": {"enabled": False},
                "object_level_authorization": {"enabled": False},
            },
            "operations": [
                {
                    "include-name": name,
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                }
                for name in BEYOND_JSON_SCHEMA
            ]
            + [
                {
                    # A follow stays open until the client leaves: test the finite read.
                    "include-name": "GET /admin/v1/prompts/{slug}/shadow/pairs",
                    "parameters": {"follow": False},
                },
            ],
        }
    )


def _failures(url: str) -> tuple[list[str], int]:
    schema = schemathesis.openapi.from_dict(document(ROUTES), config=_config(url))

    @schema.hook("map_case")
    def _one_layer(context: Any, case: Any) -> Any:
        # A prompt route takes tenant= or tier=, not both (a 400): a rule between two
        # parameters, which JSON Schema cannot state; tests/component cover that 400.
        query = case.query
        if query and "tenant" in query and "tier" in query:
            del query["tier"]
        # A series' step is at most its since (a 400 naming step otherwise): the same kind
        # of rule; tests/component/test_rollout_series_route.py covers that 400.
        if query and case.operation.path.endswith("/rollout/series"):
            since, step = str(query.get("since", "15m")), query.get("step")
            valid = re.fullmatch(SERIES_SINCE_REGEX, since) is not None and type(step) is int
            if valid and step > series_seconds(since):
                query["step"] = series_seconds(since)
        return case

    problems: list[str] = []
    scenarios = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios += 1
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status is Status.FAILURE and check.failure_info is not None:
                        problems.append(
                            f"{event.recorder.label} [{check.name}] "
                            f"{check.failure_info.failure.title}: "
                            f"{check.failure_info.failure.message} | "
                            f"{check.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return problems, scenarios


def test_the_admin_api_keeps_every_promise_of_its_openapi(admin_url: str) -> None:
    problems, scenarios = _failures(admin_url)
    assert scenarios > 0
    assert not problems, "\n\n".join(dict.fromkeys(problems))
