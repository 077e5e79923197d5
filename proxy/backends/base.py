"""``Backend``: every part of the state replicas share, opened together from one `store`.

The store named by `registry.store` decides where each part lives; nothing else does. One
backend yields all of them, so a shared registry cannot come with a per-process lease, pool,
request index or pair files (every replica would then analyse and act on its own share of
the traffic):

- the prompt store (``PromptStore``), whose ``wait_for_change`` is the change notification;
- the fleet board (``FleetBoard``), where each replica beats;
- the analysis pool (``StatsPool``), lease (``Lease``) and state (``StateStore``);
- the feedback request index (``RequestIndex``);
- the shadow pair sink (``PairSink``);
- the per-tenant usage ledger (``UsageLedger``);
- the eval runs (``EvalRunStore``);
- the captured calls (``CaptureStore``).

``close`` closes every part, newest first, then the connections they share.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from proxy.analysis.lease import Lease
from proxy.analysis.pool import StatsPool
from proxy.analysis.state import StateStore
from proxy.backends.kinds import BackendKind, describe_store
from proxy.capture.records import CaptureStore
from proxy.config import Settings
from proxy.evals.runs import EvalRunStore
from proxy.feedback import RequestIndex
from proxy.registry.fleet import FleetBoard
from proxy.registry.store import PromptStore
from proxy.shadow.metrics import ShadowMetrics
from proxy.shadow.pairs import PairSink
from proxy.usage.ledger import UsageLedger


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What the parts need from the process that opens them."""

    #: This process's id: the holder named in analysis leases.
    replica: str
    #: Counters of the pair sink (written, dropped), on the app's registry.
    pair_metrics: ShadowMetrics
    #: A background write of a part failed (``op`` names the part); the parts log it too.
    on_error: Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    kind: BackendKind
    #: The `registry.store` value (may hold credentials: use ``describe``).
    store_url: str = field(repr=False)
    store: PromptStore
    board: FleetBoard
    pool: StatsPool
    lease: Lease
    state: StateStore
    index: RequestIndex
    pairs: PairSink
    usage: UsageLedger
    evals: EvalRunStore
    captures: CaptureStore
    #: Closes every part and the shared connections, in order (an ``AsyncExitStack``'s).
    closer: Callable[[], Awaitable[None]] = field(repr=False)

    @property
    def shared(self) -> bool:
        """Every replica pointed at this store shares every part (else: one process)."""
        return self.kind.shared

    def describe(self) -> str:
        """Kind and place without credentials, for logs and /readyz."""
        return describe_store(self.store_url)

    async def close(self) -> None:
        """Close every part, the pair sink and request index first (they flush what is
        queued), the prompt store and the shared connections last. Idempotent."""
        await self.closer()

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Opener(Protocol):
    """What each backend module exposes as ``open_backend``. On failure it closes what it
    opened before raising."""

    async def __call__(self, settings: Settings, context: BackendContext) -> Backend: ...
