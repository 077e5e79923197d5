"""Real processes on 127.0.0.1 for integration and end-to-end tests, always bounded in time."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

START_TIMEOUT = 15.0
#: The admin token the tests start replicas with, and the header that carries it.
ADMIN_TOKEN = "integration-admin-token"
ADMIN_ENV = {"PROMPTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The header the tests' rollouts take their sticky key from.
STICKY_HEADER = "x-user-id"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log_path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {proc.returncode} before it was ready; its log:\n"
                + _log_tail(log)
            )
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s; its log:\n{_log_tail(log)}")


def _announced_url(log_path: Path, pattern: re.Pattern[str]) -> str | None:
    """The URL a process announced once it listens. It was started on port 0, so the system
    chose a free port: no window in which another socket can take it."""
    match = pattern.search(log_path.read_text(errors="replace"))
    return match.group(1) if match else None


_SIM_LISTENING = re.compile(r"simulated provider listening on (http://\S+/v1)")
#: What `serve` says when a port it was given is taken (``preflight.listen_error``).
_PORT_TAKEN = "the port is already in use"
PORT_ATTEMPTS = 5


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return bool(resp.status == 200)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_lines(self) -> list[dict[str, object]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                lines.append(orjson.loads(raw))
        return lines

    def access_lines(self) -> list[dict[str, object]]:
        return [line for line in self.log_lines() if line.get("event") == "request"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def _unique(tmp: Path, stem: str, suffix: str) -> Path:
    """A file name no other process of this test uses."""
    return tmp / f"{stem}-{secrets.token_hex(4)}{suffix}"


def _spawn(
    args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


@contextlib.contextmanager
def simulator(tmp: Path, *extra: str) -> Iterator[tuple[str, Proc]]:
    """A simulated provider process; yields its base URL (with /v1)."""
    log_path = _unique(tmp, "sim", ".log")
    proc = Proc(_spawn(["simulate", "--port", "0", *extra], log_path), log_path)
    try:
        found: list[str] = []

        def listening() -> bool:
            url = _announced_url(log_path, _SIM_LISTENING)
            if url is None:
                return False
            found.append(url)
            return _port_open(urlsplit(url).port or 0)

        _wait_until(listening, START_TIMEOUT, "simulator", proc.popen, log_path)
        yield found[-1], proc
    finally:
        proc.stop(signal.SIGKILL)


@dataclass
class ProxyProc(Proc):
    url: str  # data plane base URL, with /v1
    admin_url: str


@contextlib.contextmanager
def proxy(
    tmp: Path,
    upstream: str | None,
    config_text: str | None = None,
    *,
    store: str | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Iterator[ProxyProc]:
    """A `promptproxy serve` process in front of ``upstream``; yields once /readyz is 200
    (once /healthz is, with ``ready=False``: a process that cannot be ready yet).

    Without ``store`` it gets its own embedded registry file under ``tmp``; without
    ``upstream`` the config's `providers` say where requests go."""
    args = ["serve", "--host", "127.0.0.1"]
    if upstream is not None:
        args += ["--upstream", upstream]
    args += ["--store", store or f"embedded:{_unique(tmp, 'registry', '.db')}"]
    if config_text is not None:
        config = _unique(tmp, "proxy", ".yaml")
        config.write_text(config_text)
        args += ["--config", str(config)]
    # Its own temporary folder, removed after the SIGKILL below: a `--workers` supervisor
    # killed so leaves its private socket folder behind. Short, under /tmp, because a unix
    # socket's path holds 107 bytes and pytest's folders are long.
    scratch = Path(tempfile.mkdtemp(prefix="pp-"))
    env = {"TMPDIR": str(scratch), **(env or {})}
    try:
        yield from _proxy_attempts(args, tmp, env, ready)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _proxy_attempts(
    args: list[str], tmp: Path, env: dict[str, str], ready: bool
) -> Iterator[ProxyProc]:
    for attempt in range(PORT_ATTEMPTS):
        # A port free_port saw free can be taken before the proxy binds it (often as the
        # source port of some other test's outgoing connection): the proxy then exits with
        # its one-line "already in use", and a fresh pair of ports is the honest retry.
        port, admin_port = free_port(), free_port()
        log_path = _unique(tmp, f"proxy-{port}", ".log")
        popen = _spawn([*args, "--port", str(port), "--admin-port", str(admin_port)], log_path, env)
        proc = ProxyProc(
            popen, log_path, f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{admin_port}"
        )
        try:
            probe = f"{proc.admin_url}/{'readyz' if ready else 'healthz'}"
            try:
                _wait_until(partial(_http_ok, probe), START_TIMEOUT, "proxy", popen, log_path)
            except RuntimeError:
                if attempt + 1 < PORT_ATTEMPTS and _PORT_TAKEN in log_path.read_text():
                    continue
                raise
            yield proc
            return
        finally:
            proc.stop(signal.SIGKILL)


def proxy_with_token(
    tmp: Path, upstream: str, config_text: str | None = None, *, store: str | None = None
) -> contextlib.AbstractContextManager[ProxyProc]:
    """A proxy that takes ``ADMIN_TOKEN`` on its admin port (see ``proxy``)."""
    return proxy(tmp, upstream, config_text, store=store, env=ADMIN_ENV)


async def admin(replica: ProxyProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One admin API call with ``ADMIN_TOKEN``: (status, JSON body)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{replica.admin_url}/admin/v1{path}", json=body, headers=ADMIN_HEADERS
        ) as resp,
    ):
        return resp.status, await resp.json()


async def arm_of(
    session: aiohttp.ClientSession, replica: ProxyProc, slug: str, sticky_key: str
) -> str:
    """``arm:version`` that served one chat call for ``sticky_key`` (in ``STICKY_HEADER``), or
    ``status:N`` when it was not a 200."""
    async with session.post(
        f"{replica.url.removesuffix('/v1')}/p/{slug}/v1/chat/completions",
        json=CHAT,
        headers={STICKY_HEADER: sticky_key},
    ) as resp:
        await resp.read()
        if resp.status != 200:
            # A replica that has not caught up yet (404 unknown slug, 409 no prod version):
            # never equal to an expected arm, so the polling callers wait for it.
            return f"status:{resp.status}"
        return f"{resp.headers['x-prompt-arm']}:{resp.headers['x-prompt-version']}"
