"""Fixtures shared by the suites: process fixtures (module-scoped) and the scratch dir."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ProxyProc, proxy, simulator


@pytest.fixture(scope="session", autouse=True)
def _scratch_under_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Scratch files the helpers make (``make_settings`` stores) go under pytest's own
    temporary tree, which pytest prunes, instead of piling up in /tmp."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("scratch"))
    yield
    tempfile.tempdir = previous


@pytest.fixture(scope="module")
def procs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="module")
def sim_url(procs_dir: Path) -> Iterator[str]:
    with simulator(procs_dir) as (url, _):
        yield url


@pytest.fixture(scope="module")
def proxy_proc(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, "upstream:\n  read_timeout_seconds: 2\n") as proc:
        yield proc
