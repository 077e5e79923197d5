"""`promptproxy serve` that cannot work says so in one line and exits non-zero: a busy port,
an upstream on this machine nobody listens on, a simulator on another port than the
upstream, a store whose backend cannot serve the configuration. Real processes on
127.0.0.1; the ports are held open by the test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def dead_port() -> int:
    return free_port()  # bound and released: nothing listens there


def serve(
    tmp_path: Path,
    *,
    port: int | None = None,
    admin_port: int | None = None,
    upstream: str | None = None,
    config: str | None = None,
    store: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `serve` to its end (ports not given are free ones). A proxy that starts anyway
    would run until the timeout, which fails the test."""
    store = store or f"embedded:{tmp_path / 'registry.db'}"
    argv = ["serve", "--host", "127.0.0.1", "--store", store]
    argv += ["--port", str(port or free_port()), "--admin-port", str(admin_port or free_port())]
    if upstream is not None:
        argv += ["--upstream", upstream]
    if config is not None:
        path = tmp_path / "proxy.yaml"
        path.write_text(config)
        argv += ["--config", str(path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )


def simulator_config(upstream: str, sim_port: int) -> str:
    return f"upstream:\n  base_url: {upstream}\nsimulator:\n  enabled: true\n  port: {sim_port}\n"


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the JSON log lines the proxy wrote before it stopped."""
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if not line.startswith("{")]


def test_a_busy_data_port_is_one_line_and_exit_1(
    tmp_path: Path, sim_url: str, busy_port: int
) -> None:
    result = serve(tmp_path, port=busy_port, upstream=sim_url)
    assert result.returncode == 1
    assert error_lines(result) == [
        f"promptproxy: cannot listen on 127.0.0.1:{busy_port} for the data plane (server.port): "
        "the port is already in use (another promptproxy, or another program)"
    ]


def test_a_busy_admin_port_is_one_line_and_exit_1(
    tmp_path: Path, sim_url: str, busy_port: int
) -> None:
    result = serve(tmp_path, admin_port=busy_port, upstream=sim_url)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert f"127.0.0.1:{busy_port} for the admin endpoints (server.admin_port)" in line
    assert "already in use" in line


def test_a_busy_simulator_port_is_one_line_and_exit_1(tmp_path: Path, busy_port: int) -> None:
    config = simulator_config(f"http://127.0.0.1:{busy_port}/v1", busy_port)
    result = serve(tmp_path, config=config)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert f"127.0.0.1:{busy_port} for the simulated provider (simulator.port)" in line


def test_an_unreachable_local_upstream_is_one_line_and_exit_1(tmp_path: Path) -> None:
    upstream = f"http://127.0.0.1:{dead_port()}/v1"
    result = serve(tmp_path, upstream=upstream)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert line.startswith(f"promptproxy: upstream {upstream} is unreachable")
    assert "upstream.base_url" in line


def test_a_simulator_on_another_port_than_the_upstream_is_a_config_error(tmp_path: Path) -> None:
    sim_port, upstream_port = dead_port(), dead_port()
    config = simulator_config(f"http://localhost:{upstream_port}/v1", sim_port)
    result = serve(tmp_path, config=config)
    assert result.returncode == 2
    problems = [line for line in error_lines(result) if line.startswith("  - ")]
    assert len(problems) == 1
    assert f"simulator.port is {sim_port}" in problems[0]
    assert f"upstream.base_url (http://localhost:{upstream_port}/v1)" in problems[0]


def test_pair_files_with_a_shared_store_are_refused_before_anything_opens(
    tmp_path: Path, sim_url: str
) -> None:
    # Nothing listens on the Redis port: the refusal comes before any connection.
    store = f"redis://127.0.0.1:{dead_port()}/0"
    result = serve(
        tmp_path, upstream=sim_url, store=store, config="shadow:\n  sink:\n    kind: files\n"
    )
    assert result.returncode == 2
    problems = [line for line in error_lines(result) if line.startswith("  - ")]
    assert problems == [
        "  - shadow.sink.kind: `files` keeps each replica's pairs on its own disk (`shadow "
        f"tail|export|report` would see one replica's share), but registry.store is {store} "
        "(Redis), shared by replicas: use `auto` (pairs in Redis)"
    ]
