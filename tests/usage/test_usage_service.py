"""This replica's side of per-tenant usage: what the recorder counts (known tenants' own
requests, never shadow copies or unknown callers), how a flush the store refuses keeps the
rows (bounded), and what a query sums and says."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.config import UsageConfig
from proxy.errors import Conflict, ServiceUnavailable
from proxy.exchange.outcome import Exchange
from proxy.metrics import ProxyMetrics
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.registry.models import RegistrySnapshot, Tenant
from proxy.usage.counts import Totals, UsageCounts, UsageKey
from proxy.usage.ledger import Added
from proxy.usage.recorder import UsageRecorder
from proxy.usage.service import UsageService
from proxy.usage.usage_sqlite import SqliteUsageLedger

NOW = 1_764_999_960.0  # a whole minute
PRICE = {"gpt-4o": (2.5, 10.0)}


def exchange(tenant: str | None, **fields: object) -> Exchange:
    ex = Exchange(
        "r", "POST", Route.CHAT, 0.0, key=PromptKey("support"), tenant=tenant, version="3"
    )
    ex.model_requested = "gpt-4o"
    ex.input_tokens, ex.output_tokens = 100, 20
    for name, value in fields.items():
        setattr(ex, name, value)
    return ex


def recorder(max_rows: int = 1000) -> UsageRecorder:
    return UsageRecorder(lambda: NOW, PRICE.get, max_rows)


def test_the_recorder_counts_known_tenants_own_requests_only() -> None:
    rec = recorder()
    rec.finished(exchange("acme"))
    rec.finished(exchange("acme", error_class="upstream_5xx", input_tokens=None))
    rec.finished(exchange(None))  # no tenant the registry knows
    rec.finished(exchange("acme", pair_id="p1"))  # a shadow copy: the platform's
    rec.finished(exchange("acme", key=PromptKey("support", variant="claude")))
    rec.finished(exchange("acme", key=None))  # a pass-through: its tenant is never looked up
    # A slug the registry does not serve (404 before a version): a made-up slug per
    # request must not make a row each.
    rec.finished(exchange("acme", key=PromptKey("made-up"), version=None))
    rec.finished(exchange("acme", model_requested="unpriced", key=PromptKey("billing")))
    rows = rec.drain()
    minute = int(NOW) // 60
    assert rows[UsageKey("acme", "support", "", minute)] == UsageCounts(
        2, 1, 100, 40, pytest.approx((100 * 2.5 + 40 * 10.0) / 1e6)
    )
    assert rows[UsageKey("acme", "support", "claude", minute)].requests == 1
    # A model without a price: counted, costing nothing.
    assert rows[UsageKey("acme", "billing", "", minute)] == UsageCounts(1, 0, 100, 20, 0.0)
    assert len(rows) == 3
    assert rec.drain() == {}


def test_a_pin_is_priced_as_the_model_sent() -> None:
    rec = recorder()
    rec.finished(exchange("acme", model_requested="gpt-4o-mini", model_sent="gpt-4o"))
    (counts,) = rec.drain().values()
    assert counts.cost_usd == pytest.approx((100 * 2.5 + 20 * 10.0) / 1e6)


def test_restore_keeps_the_newest_minutes_and_counts_what_it_drops() -> None:
    rec = recorder(max_rows=1000)
    minute = int(NOW) // 60
    rows = {UsageKey("acme", f"s{i}", "", minute - i // 100): UsageCounts(1) for i in range(1500)}
    rec.finished(exchange("acme"))  # counted while the flush was failing: kept and merged
    rec.restore(rows, oldest_minute=minute - 12)
    assert rec.pending == 1000
    kept = rec.drain()
    assert min(key.minute for key in kept) >= minute - 9
    assert kept[UsageKey("acme", "support", "", minute)].requests == 1
    # 200 older than the keep (minutes -13, -14), then the oldest past max_rows.
    assert rec.dropped == 501


def service(
    tmp_path: Path, ledger_path: Path | None = None, **config: object
) -> tuple[UsageService, ProxyMetrics]:
    metrics = ProxyMetrics(CollectorRegistry(), ["gpt-4o"], PRICE)
    snapshot = RegistrySnapshot(
        revision=1, versions={}, prod={}, tenants={"acme": Tenant("acme", "pro")}
    )
    ledger = SqliteUsageLedger(
        ledger_path or tmp_path / "usage.db", keep_days=35, clock=lambda: NOW
    )
    made = UsageService(
        UsageConfig(**config),  # type: ignore[arg-type]
        recorder(),
        ledger,
        lambda: snapshot,
        metrics,
        clock=lambda: NOW,
    )
    return made, metrics


def value(metrics: ProxyMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_a_refused_flush_keeps_the_rows_for_the_next(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the ledger's folder cannot be made: every write fails
    usage, metrics = service(tmp_path, blocker / "usage.db")
    usage.recorder.finished(exchange("acme"))
    assert await usage.flush() is False
    assert usage.recorder.pending == 1
    assert value(metrics, "promptproxy_redis_errors_total", {"op": "usage_flush"}) == 1
    assert value(metrics, "promptproxy_usage_pending_rows") == 1
    blocker.unlink()  # the store is back
    usage.recorder.finished(exchange("acme"))
    assert await usage.flush() is True
    assert usage.recorder.pending == 0
    report = await usage.report("acme", None, None, None)
    assert report.total.requests == 2
    await usage.close()


async def test_a_report_sums_whole_minutes_and_says_who(tmp_path: Path) -> None:
    usage, _ = service(tmp_path)
    usage.recorder.finished(exchange("acme"))
    # Not flushed yet: the query flushes this replica first.
    report = await usage.report("acme", NOW - 90.5, NOW + 1, None)
    assert (report.known, report.tier) == (True, "pro")
    assert (report.since, report.until) == (NOW - 120, NOW + 60)
    assert report.total.requests == 1
    assert [(p.slug, p.variant) for p in report.prompts] == [("support", None)]
    stranger = await usage.report("nobody", None, None, None)
    assert (stranger.known, stranger.tier, stranger.total.requests) == (False, None, 0)
    # Before the keep: the answer says from when it summed.
    old = await usage.report("acme", NOW - 400 * 86_400, None, None)
    assert old.since == NOW - 35 * 86_400
    inverted = await usage.report("acme", NOW, NOW - 60, None)
    assert (inverted.since, inverted.until, inverted.total.requests) == (NOW, NOW, 0)
    await usage.close()


async def test_a_store_that_cannot_be_read_is_a_503(tmp_path: Path) -> None:
    usage, _ = service(tmp_path)
    await usage._ledger.close()  # every call fails from now on
    with pytest.raises(ServiceUnavailable) as raised:
        await usage.report("acme", None, None, None)
    assert raised.value.code == "usage_unavailable"


async def test_usage_off_is_refused(tmp_path: Path) -> None:
    usage, _ = service(tmp_path, enabled=False)
    with pytest.raises(Conflict):
        await usage.report("acme", None, None, None)
    await usage.close()


class Gate:
    """A ledger whose ``add`` waits until the test opens it, then answers ``added``."""

    def __init__(self, added: Added | None = None) -> None:
        self.opened = asyncio.Event()
        self.entered = asyncio.Event()
        self.rows: list[dict[UsageKey, UsageCounts]] = []
        self.added = added or Added()

    async def add(self, rows: dict[UsageKey, UsageCounts]) -> Added:
        self.entered.set()
        await self.opened.wait()
        self.rows.append(dict(rows))
        return self.added

    async def read(self, tenant: str, start: int, end: int, slug: str | None = None) -> Totals:
        return {}

    async def close(self) -> None:
        return None


def gated(tmp_path: Path, ledger: Gate) -> tuple[UsageService, ProxyMetrics]:
    usage, metrics = service(tmp_path)
    usage._ledger = ledger
    return usage, metrics


async def test_a_query_whose_client_hangs_up_still_writes_what_it_drained(
    tmp_path: Path,
) -> None:
    ledger = Gate()
    usage, _ = gated(tmp_path, ledger)
    usage.recorder.finished(exchange("acme"))
    query = asyncio.create_task(usage.report("acme", None, None, None))
    await ledger.entered.wait()
    query.cancel()  # the admin client went away mid-flush
    with pytest.raises(asyncio.CancelledError):
        await query
    ledger.opened.set()
    await usage.close()
    assert [sum(c.requests for c in rows.values()) for rows in ledger.rows] == [1]


async def test_closing_waits_for_a_flush_under_way(tmp_path: Path) -> None:
    ledger = Gate()
    usage, _ = gated(tmp_path, ledger)
    usage.recorder.finished(exchange("acme"))
    flushing = asyncio.create_task(usage.flush())
    await ledger.entered.wait()
    closing = asyncio.create_task(usage.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    ledger.opened.set()
    await closing
    assert await flushing is True
    assert len(ledger.rows) == 1


async def test_rows_a_ledger_did_not_add_are_kept_and_lost_ones_counted(
    tmp_path: Path,
) -> None:
    minute = int(NOW) // 60
    unwritten = {UsageKey("acme", "support", "", minute): UsageCounts(1)}
    ledger = Gate(Added(unwritten=unwritten, lost=4))
    ledger.opened.set()
    usage, metrics = gated(tmp_path, ledger)
    usage.recorder.finished(exchange("acme"))
    assert await usage.flush() is False
    assert usage.recorder.pending == 1
    assert value(metrics, "promptproxy_usage_dropped_rows_total") == 4
    assert value(metrics, "promptproxy_redis_errors_total", {"op": "usage_flush"}) == 1
