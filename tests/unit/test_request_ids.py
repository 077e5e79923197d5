"""Request ids: what callers quote back for feedback, so unique and unguessable."""

from __future__ import annotations

import re

from proxy.web.middlewares import RequestIds


def test_ids_are_24_hex_digits_and_never_repeat_across_refills() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(5 * 341 + 7)]  # several refills of the pool
    assert all(re.fullmatch(r"[0-9a-f]{24}", one) for one in made)
    assert len(set(made)) == len(made)


def test_two_sources_share_nothing() -> None:
    first, second = RequestIds(), RequestIds()
    assert {first.new() for _ in range(100)}.isdisjoint(second.new() for _ in range(100))
