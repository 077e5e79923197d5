"""What the request path uses of the process, and nothing more.

Built once by ``open_services`` (``proxy/services.py``, a layer above: it opens stores and
starts tasks, which the pipeline never does) and passed to every request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.config import ProxyConfig
from proxy.exchange.observers import Observers
from proxy.exchange.upstream import UpstreamClient
from proxy.metrics import ProxyMetrics
from proxy.pipeline.capturing import ShareSampler
from proxy.providers import Providers
from proxy.registry.snapshot import SnapshotHolder
from proxy.registry.templates import PromptRenderer
from proxy.shadow.runner import ShadowRunner

if TYPE_CHECKING:
    from proxy.tracing.otel import Tracing


@dataclass(frozen=True, slots=True)
class PipelineResources:
    config: ProxyConfig
    #: Where a request goes by its model, and the key that replaces the client's there.
    providers: Providers
    upstream: UpstreamClient
    metrics: ProxyMetrics
    snapshot: SnapshotHolder
    renderer: PromptRenderer
    shadow: ShadowRunner
    #: Stage 6: what sees the exchange finish (``pipeline/record.py``).
    finished: Observers
    #: Stage 6 of an eval run's call: its access log line only (``eval_observers``).
    eval_finished: Observers
    #: Which requests are captured for replay (``capture.slugs``).
    capture: ShareSampler
    #: Which served answers are judged online (``evals.online``).
    judging: ShareSampler
    #: Spans of each request and provider call (``tracing.enabled``); None: off, and the
    #: request path makes no call into tracing at all.
    tracing: Tracing | None = None
    #: Marks this process's eval runner's calls (``pipeline/evaluating.py``): random per
    #: process, never logged or sent upstream.
    eval_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
