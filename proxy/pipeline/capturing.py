"""Which requests are captured for replay (``capture.slugs``): a share per slug, drawn per
request. The share of a slug is looked up once and kept, so a request pays a dict lookup,
and a random draw only for slugs that are captured at all."""

from __future__ import annotations

import random
from collections.abc import Callable

from proxy.config import CaptureConfig

#: Slugs whose share is kept; past it the cache starts again (slugs are few, callers may
#: name made-up ones).
_MAX_SLUGS = 10_000


class CaptureSampler:
    __slots__ = ("_config", "_draw", "_shares")

    def __init__(self, config: CaptureConfig, draw: Callable[[], float] = random.random) -> None:
        self._config = config
        self._draw = draw
        self._shares: dict[str, float] = {}

    def sampled(self, slug: str) -> bool:
        share = self._shares.get(slug)
        if share is None:
            if len(self._shares) >= _MAX_SLUGS:
                self._shares.clear()
            share = self._shares[slug] = self._config.share_of(slug)
        return share > 0.0 and self._draw() < share
