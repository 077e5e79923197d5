"""The numbers of per-tenant usage, and the key they are counted under. Plain data.

A row is one (tenant, slug, variant, minute): the tenant the registry knows the caller as
(never a header's unknown value, so a caller cannot create rows), the slug its request
named (the tenant is looked up for requests that name a prompt) and the model variant
that answered (``""``: the default one).
Minutes are unix minutes (``unix seconds // 60``), UTC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

#: The counters of a row, in the order every store and answer lists them.
FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost_usd")
MINUTE = 60


class UsageKey(NamedTuple):
    """A tuple: built and hashed once per request of a known tenant, cheaply."""

    tenant: str
    slug: str
    variant: str
    minute: int


@dataclass(slots=True)
class UsageCounts:
    requests: int = 0
    #: Requests that ended in an error of any class (as `promptproxy_errors_total`).
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    #: Estimated from `metrics.prices` by the model sent; a model without a price adds none.
    cost_usd: float = 0.0

    def merge(self, other: UsageCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd

    def to_fields(self) -> dict[str, float]:
        """The counters that are not zero (a store writes nothing for the others)."""
        values = (self.requests, self.errors, self.input_tokens, self.output_tokens)
        fields: dict[str, float] = {
            name: value for name, value in zip(FIELDS, values, strict=False) if value
        }
        if self.cost_usd:
            fields["cost_usd"] = self.cost_usd
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, float]) -> UsageCounts:
        """Unknown names are ignored (a newer replica's); a value that is not a finite
        number counts as zero."""

        def number(name: str) -> float:
            value = fields.get(name, 0.0)
            try:
                found = float(value)
            except (TypeError, ValueError):
                return 0.0
            return found if math.isfinite(found) else 0.0

        return cls(
            requests=int(number("requests")),
            errors=int(number("errors")),
            input_tokens=int(number("input_tokens")),
            output_tokens=int(number("output_tokens")),
            cost_usd=number("cost_usd"),
        )


Rows = dict[UsageKey, UsageCounts]
#: What a read sums a range into: (slug, variant) -> counts.
Totals = dict[tuple[str, str], UsageCounts]


def merge_rows(into: Rows, rows: Mapping[UsageKey, UsageCounts]) -> None:
    for key, counts in rows.items():
        held = into.get(key)
        if held is None:
            into[key] = held = UsageCounts()
        held.merge(counts)
