"""The fleet's counter of this replica's failed heartbeats (the board itself comes with the
store's backend: ``proxy.backends``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.heartbeat_errors = Counter(
            "promptproxy_fleet_heartbeat_errors",
            "Heartbeats this replica could not write to the fleet board in the shared store",
            registry=registry,
        )
