"""Builds this process's fleet parts for the configured store: the board (Redis hashes, or a
SQLite file beside the embedded registry), the heartbeat, and its failure counter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter

from proxy.config import FleetConfig, RegistryConfig
from proxy.registry.factory import EMBEDDED
from proxy.registry.fleet import FleetBoard

if TYPE_CHECKING:
    from redis.asyncio import Redis


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.heartbeat_errors = Counter(
            "promptproxy_fleet_heartbeat_errors",
            "Heartbeats this replica could not write to the fleet board in the shared store",
            registry=registry,
        )


def open_board(registry: RegistryConfig, fleet: FleetConfig, redis: Redis | None) -> FleetBoard:
    """``redis``: the process's shared Redis client when the store is Redis."""
    if registry.store.startswith(EMBEDDED):
        from proxy.registry.fleet_embedded import EmbeddedFleetBoard, board_path

        path = board_path(Path(registry.store[len(EMBEDDED) :]))
        return EmbeddedFleetBoard(path, fleet.forget_seconds)
    from proxy.registry.fleet_redis import RedisFleetBoard

    assert redis is not None, "a Redis registry comes with a Redis client"
    return RedisFleetBoard(redis, registry.redis_prefix, fleet.forget_seconds)
