"""Which requests are sampled by a share per slug: captured for replay (``capture.slugs``)
or judged online (``evals.online``). The share of a slug is looked up once and kept, so a
request pays a dict lookup, and a random draw only for slugs that are sampled at all."""

from __future__ import annotations

import random
from collections.abc import Callable

#: Slugs whose share is kept; past it the cache starts again (slugs are few, callers may
#: name made-up ones).
_MAX_SLUGS = 10_000
#: The answer text an online judge reads at most (when no shadow or capture already reads
#: it): a judge scores what it is given, and a longer one costs more to send.
JUDGED_ANSWER_CHARS = 16_000


class ShareSampler:
    __slots__ = ("_draw", "_share_of", "_shares")

    def __init__(
        self, share_of: Callable[[str], float], draw: Callable[[], float] = random.random
    ) -> None:
        """``share_of``: a slug's share, 0 to 1 (the config's rules, read once per slug)."""
        self._share_of = share_of
        self._draw = draw
        self._shares: dict[str, float] = {}

    def sampled(self, slug: str) -> bool:
        share = self._shares.get(slug)
        if share is None:
            if len(self._shares) >= _MAX_SLUGS:
                self._shares.clear()
            share = self._shares[slug] = self._share_of(slug)
        return share > 0.0 and self._draw() < share
