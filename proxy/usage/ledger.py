"""``UsageLedger``: where every replica adds its per-tenant counts, and where a query sums
them. One per backend, opened with the others by ``proxy.backends``:

- embedded: a SQLite file beside the registry (``usage_sqlite``), kept across restarts;
- Redis: hashes per tenant and hour, and per tenant and day (``usage_redis``);
- PostgreSQL: one table, a row per (tenant, slug, variant, minute) (``usage_postgres``).

Adding is commutative (every counter is a sum), so replicas never read before they write.
Minutes older than ``usage.keep_days`` are deleted or expire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from proxy.usage.counts import Rows, Totals, UsageCounts, UsageKey

#: The minutes of a day.
DAY_MINUTES = 1440


@dataclass(slots=True)
class Added:
    """What became of a flush that did not raise."""

    #: Rows certainly not added (the caller keeps them for its next flush).
    unwritten: Rows = field(default_factory=dict)
    #: Rows given up because whether they were added is unknown: never sent again, so a
    #: row is never counted twice (a few seconds may be missing instead).
    lost: int = 0


class UsageLedger(Protocol):
    async def add(self, rows: Mapping[UsageKey, UsageCounts]) -> Added:
        """Add a flush's rows. Raises when nothing was added (the caller keeps the rows
        for the next flush); otherwise says which rows were not added, or are lost."""
        ...

    async def read(self, tenant: str, start: int, end: int, slug: str | None = None) -> Totals:
        """The sums of ``tenant``'s rows in minutes ``[start, end)``, by (slug, variant);
        only ``slug``'s when given. Pairs without a request are left out."""
        ...

    async def close(self) -> None: ...
