"""The open-file budget check at start: raise the soft limit, warn when a full pool won't fit."""

from __future__ import annotations

import logging
import resource

import pytest

from proxy import fd_limit
from proxy.config import ProxyConfig, load_config


def _config(max_connections: int) -> ProxyConfig:
    return load_config(
        None,
        environ={},
        overrides={
            "upstream.max_connections": max_connections,
            "registry.store": "embedded:/tmp/unused.db",
        },
    ).config


def test_the_budget_is_two_descriptors_per_pooled_call_plus_shadow_and_base() -> None:
    config = _config(4096)
    assert fd_limit.needed(config) == 2 * 4096 + 100 + fd_limit.BASE_BUDGET


@pytest.mark.parametrize(("hard", "warns"), [(1024, True), (100_000, False)])
def test_the_soft_limit_is_raised_to_the_hard_one_and_a_short_budget_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, hard: int, warns: bool
) -> None:
    limits = {"now": (256, hard)}
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: limits.update(now=value))
    with caplog.at_level(logging.WARNING):
        soft = fd_limit.raise_soft_limit(_config(4096))
    assert soft == hard
    assert limits["now"] == (hard, hard)
    assert ("open-file limit" in caplog.text) is warns
