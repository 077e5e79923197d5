"""A private ``redis-server`` for tests: free 127.0.0.1 port, no persistence, always killed.

Tests never touch a Redis that happens to run on 6379. Use ``running_redis(tmp_dir)`` as a
context manager, or ``redis_server_fixture()`` to make a pytest fixture in any conftest:

    redis_server = redis_server_fixture()                  # module-scoped
    fresh_redis_server = redis_server_fixture("function")  # one per test (fault tests)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.processes import PORT_ATTEMPTS, free_port

START_TIMEOUT = 10.0


def _ping(port: int) -> bool:
    """A raw RESP PING, so the helper does not depend on the client under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.settimeout(0.2)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        """Start on ``self.port``. The first start may move to another port when the one
        free_port saw free was taken meanwhile; a restart keeps its port (clients reconnect
        to it), so a restart that cannot bind fails."""
        first = self._proc is None
        for _ in range(PORT_ATTEMPTS if first else 1):
            try:
                self._start_once()
                return
            except RuntimeError:
                if not first or not self._port_taken():
                    raise
                self.port = free_port()
        raise RuntimeError(f"redis-server found no free port in {PORT_ATTEMPTS} tries")

    def _port_taken(self) -> bool:
        return b"Address already in use" in self._log_path.read_bytes()

    @property
    def _log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def _start_once(self) -> None:
        assert self._proc is None or self._proc.poll() is not None, "already running"
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not on PATH")
        log = self._log_path.open("ab")
        with log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"redis-server on {self.port} not ready in {START_TIMEOUT}s")
            time.sleep(0.02)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: connections drop, nothing is saved (there is no persistence anyway)."""
        self._signal(signal.SIGKILL)  # works on a stopped process too
        if self._proc is not None:
            self._proc.wait(5)
        self._paused = False

    def stop(self) -> None:
        """Graceful SIGTERM shutdown (bounded; falls back to SIGKILL)."""
        if self._paused:
            self.resume()
        self._signal(signal.SIGTERM)
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Kill and start again on the same port: an empty server at the same address."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP connections but nothing answers."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._paused = False


@contextlib.contextmanager
def running_redis(workdir: Path | None = None) -> Iterator[RedisServer]:
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-")))
        server = RedisServer(workdir)
        try:
            server.start()
            yield server
        finally:
            server.kill()


def redis_server_fixture(
    scope: Literal["function", "module", "session"] = "module",
) -> Callable[..., Any]:
    """A pytest fixture yielding a running ``RedisServer``; assign it in a conftest."""

    @pytest.fixture(scope=scope)
    def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
        with running_redis(tmp_path_factory.mktemp("redis")) as server:
            yield server

    return _redis_server
