"""A private PostgreSQL for tests: ``initdb`` into a temporary folder, free 127.0.0.1 port.

Tests never touch a PostgreSQL that happens to run on 5432: they start their own so they can
stop, kill and restart it. Needs ``initdb`` and ``postgres`` on PATH, as
Debian's ``postgresql`` package puts them under /usr/lib/postgresql/N/bin; a test that needs
PostgreSQL is skipped without them. PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` user (``runuser``).

    postgres_server = postgres_server_fixture()                  # module-scoped
    fresh_postgres_server = postgres_server_fixture("function")  # one per test (fault tests)

Isolation between tests that share one server: ``server.new_database()`` creates an empty
database and returns its URL (about 0.1 s each).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.processes import free_port

START_TIMEOUT = 20.0
_SUPERUSER = "promptproxy"


def _binaries() -> dict[str, str] | None:
    found = {name: shutil.which(name) for name in ("initdb", "postgres")}
    if any(path is None for path in found.values()):
        return None
    return {name: str(path) for name, path in found.items()}


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class PostgresServer:
    def __init__(self, workdir: Path) -> None:
        binaries = _binaries()
        if binaries is None:
            pytest.skip("initdb/postgres are not on PATH")
        self._bin = binaries
        self.workdir = workdir
        self.datadir = workdir / "pgdata"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]
            postgres = pwd.getpwnam("postgres")
            os.chown(workdir, postgres.pw_uid, postgres.pw_gid)
        self._initdb()

    @property
    def url(self) -> str:
        """The maintenance database: create test databases with ``new_database``."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{name}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _initdb(self) -> None:
        subprocess.run(
            [
                *self._as_user,
                self._bin["initdb"],
                "-D",
                str(self.datadir),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def start(self) -> None:
        assert self._proc is None or self._proc.poll() is not None, "already running"
        log = (self.workdir / f"postgres-{self.port}.log").open("ab")
        with log:
            # The postgres binary directly (not pg_ctl), so the Popen is the postmaster and
            # kill() can SIGKILL it like a crash.
            self._proc = subprocess.Popen(
                [
                    *self._as_user,
                    self._bin["postgres"],
                    "-D",
                    str(self.datadir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.workdir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"postgres on {self.port} not ready in {START_TIMEOUT}s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if not _accepts(self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def new_database(self) -> str:
        """An empty database on this server; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.create_database(name)
        return self.database_url(name)

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # The whole session: under runuser the postmaster is a child of runuser.
                os.killpg(self._proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends: connections drop as in a crash."""
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(10)
        self._remove_stale_pid()
        self._paused = False

    def _remove_stale_pid(self) -> None:
        # After SIGKILL the postmaster leaves its pid file and its socket lock; a start on
        # the same folder and port refuses while they exist.
        for stale in (
            self.datadir / "postmaster.pid",
            self.workdir / f".s.PGSQL.{self.port}.lock",
            self.workdir / f".s.PGSQL.{self.port}",
        ):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def stop(self) -> None:
        """Fast shutdown (SIGINT: backends end, the data stays); bounded, then SIGKILL."""
        if self._paused:
            self.resume()
        self._signal(signal.SIGINT)
        if self._proc is not None:
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Kill, then start an empty cluster on the same port: a server back empty."""
        self.kill()
        shutil.rmtree(self.datadir)
        self._initdb()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP connections but nothing answers. The backends
        too: each runs in a session of its own (PostgreSQL calls setsid), so stopping the
        postmaster's group alone leaves open connections answering."""
        self._signal(signal.SIGSTOP)  # first: no new backend is forked meanwhile
        for pid in self._backends():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        for pid in self._backends():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._signal(signal.SIGCONT)
        self._paused = False

    def _backends(self) -> list[int]:
        """Every process under the one this server started (the postmaster's children)."""
        if self._proc is None:
            return []
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # "pid (comm) state ppid ...": comm may hold spaces, so split after it.
                text = stat.read_text()
                ppid = int(text.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(text.split(" ", 1)[0]))
        found, todo = [], [self._proc.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def terminate_backends(self, database: str | None = None) -> int:
        """pg_terminate_backend on every other client connection: 'connections killed'."""
        import psycopg

        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        params: tuple[str, ...] = ()
        if database is not None:
            query += " AND datname = %s"
            params = (database,)
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        return int(row[0]) if row else 0


@contextlib.contextmanager
def running_postgres(workdir: Path | None = None) -> Iterator[PostgresServer]:
    with contextlib.ExitStack() as stack:
        if workdir is None:
            # Under root the server runs as `postgres`, which cannot enter root's private
            # temporary folders (pytest's among them): /tmp itself is open to every user.
            base = "/tmp" if os.geteuid() == 0 else None
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pg-", dir=base)))
        server = PostgresServer(workdir)
        try:
            server.start()
            yield server
        finally:
            server.kill()


def postgres_server_fixture(
    scope: Literal["function", "module", "session"] = "module",
) -> Callable[..., Any]:
    """A pytest fixture yielding a running ``PostgresServer``; assign it in a conftest."""

    @pytest.fixture(scope=scope)
    def _postgres_server() -> Iterator[PostgresServer]:
        # Its own folder under /tmp, not pytest's: the server runs as `postgres` under root,
        # and pytest's base folder is private to root.
        with running_postgres() as server:
            yield server

    return _postgres_server
