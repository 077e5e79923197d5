"""`feedback.max_local_entries`: the embedded store's in-memory feedback index bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config


def load(tmp_path: Path, text: str, store: str = "embedded:/tmp/r.db") -> int:
    path = tmp_path / "c.yaml"
    path.write_text(f"registry:\n  store: {store}\n{text}")
    return load_config(path, environ={}).config.feedback.max_local_entries


def test_the_default_fills_within_seconds_of_traffic(tmp_path: Path) -> None:
    """Full, and its memory flat, long before a 10k-request soak takes its first sample."""
    assert load(tmp_path, "") == 4096


@pytest.mark.parametrize("value", [1000, 100_000, 10_000_000])
def test_values_in_range_load_including_the_old_default(tmp_path: Path, value: int) -> None:
    assert load(tmp_path, f"feedback:\n  max_local_entries: {value}\n") == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (999, "greater than or equal to 1000"),
        (10_000_001, "less than or equal to 10000000"),
        ("lots", "valid integer"),
    ],
)
def test_values_out_of_range_are_refused_by_field_path(
    tmp_path: Path, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"feedback:\n  max_local_entries: {value}\n")
    (problem,) = info.value.problems
    assert problem.startswith("feedback.max_local_entries: ")
    assert message in problem


def test_a_shared_store_accepts_and_ignores_it(tmp_path: Path) -> None:
    """One file serves a laptop and production: the shared stores keep answers by
    `ttl_seconds` alone and cost the proxy no memory per answer."""
    text = "feedback:\n  max_local_entries: 50000\n"
    assert load(tmp_path, text, store="redis://localhost:1/0") == 50_000
