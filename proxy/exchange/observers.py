"""What sees an exchange finish: an ordered list of observers, the same for both arms.

Each observer is a plain function of the finished ``Exchange`` that decides for itself
whether the exchange concerns it (the feedback index skips shadow copies, the pair half
only resolves a primary that was shadowed, ...). It runs on the request path, inside its
``finally``: it must never block, await or raise. The list itself is written once, in
``proxy.pipeline.record``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.exchange.outcome import Exchange

ExchangeObserver = Callable[[Exchange], None]


class Observers:
    """Tells each observer, in order, that an exchange finished."""

    __slots__ = ("_observers",)

    def __init__(self, observers: Sequence[ExchangeObserver]) -> None:
        self._observers = tuple(observers)

    def finished(self, exchange: Exchange) -> None:
        for observer in self._observers:
            observer(exchange)


def hand_over_pair_half(exchange: Exchange) -> None:
    """A primary whose shadow copy was sent: the shadow waits for this half to write its
    pair. A shadow call's own half stays with its runner, which owns the pair."""
    pair = exchange.pair
    if pair is None:
        return
    # The future holds the exchange from now on; no reference back, so no cycle for the GC.
    exchange.pair = None
    if not pair.done():
        pair.set_result(exchange)
