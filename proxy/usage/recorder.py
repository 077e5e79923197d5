"""``UsageRecorder``: this replica's per-tenant counts until the flusher drains them.

An observer of finished exchanges (``proxy.pipeline.record``): it counts the primary
requests of tenants the registry knows (the tenant is looked up for requests that name a
prompt, so a plain pass-through is not counted). Shadow copies are the platform's
experiment, not the tenant's traffic, and are not counted (nor are an eval run's calls,
which stage 6 gives no observer but the access log). It runs on the request path, so it
only adds to a dict; ``UsageService`` (``proxy.usage.service``) writes it to the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from proxy.exchange.outcome import Exchange
from proxy.metric_series import estimated_cost
from proxy.usage.counts import MINUTE, Rows, UsageCounts, UsageKey, merge_rows

Clock = Callable[[], float]
PriceOf = Callable[[str | None], tuple[float, float] | None]


class UsageRecorder:
    __slots__ = ("_clock", "_max_rows", "_pending", "_price_of", "dropped")

    def __init__(self, clock: Clock, price_of: PriceOf, max_rows: int) -> None:
        """``price_of``: a model's (input, output) USD per million tokens, or None.
        ``max_rows``: rows held while the store cannot take them (see ``restore``)."""
        self._clock = clock
        self._price_of = price_of
        self._max_rows = max_rows
        self._pending: Rows = {}
        #: Rows given up since the start because the store could not take them in time.
        self.dropped = 0

    def finished(self, ex: Exchange) -> None:
        tenant, key = ex.tenant, ex.key
        # No version: the slug is not one the registry serves (a 404 before any version
        # was chosen); a caller must not make a row per slug it makes up.
        if tenant is None or key is None or ex.version is None or ex.pair_id is not None:
            return
        row = UsageKey(tenant, key.slug, key.variant or "", int(self._clock()) // MINUTE)
        counts = self._pending.get(row)
        if counts is None:
            counts = self._pending[row] = UsageCounts()
        counts.requests += 1
        if ex.error_class is not None:
            counts.errors += 1
        input_tokens, output_tokens = ex.input_tokens or 0, ex.output_tokens or 0
        counts.input_tokens += input_tokens
        counts.output_tokens += output_tokens
        if input_tokens or output_tokens:
            # The model sent is what is billed (a pin, or what the client asked for).
            price = self._price_of(ex.model_sent or ex.model_requested or ex.model_answered)
            if price is not None:
                counts.cost_usd += estimated_cost(price, input_tokens, output_tokens)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def drain(self) -> Rows:
        pending, self._pending = self._pending, {}
        return pending

    def restore(self, rows: Mapping[UsageKey, UsageCounts], oldest_minute: int) -> None:
        """Put back what a failed flush could not write. Minutes older than
        ``oldest_minute`` (past the ledger's keep) and, past ``max_rows``, the oldest
        minutes are given up and counted in ``dropped``: a store down for hours must not
        grow this replica's memory without bound."""
        kept = {key: counts for key, counts in rows.items() if key.minute >= oldest_minute}
        self.dropped += len(rows) - len(kept)
        merge_rows(kept, self._pending)
        if len(kept) > self._max_rows:
            newest = sorted(kept, key=lambda key: key.minute, reverse=True)[: self._max_rows]
            self.dropped += len(kept) - len(newest)
            kept = {key: kept[key] for key in newest}
        self._pending = kept
