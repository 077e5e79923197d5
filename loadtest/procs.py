"""Child processes for the benchmark: started pinned, waited for with a bound, always killed.

Every child gets its own process group, so stopping it also stops anything it spawned,
and its output goes to files (never a pipe nobody reads, which would block it).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]


class StartError(RuntimeError):
    """A child did not come up: it exited, or did not answer its probe in time."""


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (a child that loses the race fails loudly).

    All sockets stay open until every port is chosen, so the ports are distinct.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def http_ok(port: int, path: str) -> Callable[[], bool]:
    def probe() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    return probe


def listening(proc: ManagedProcess, port: int) -> Callable[[], bool]:
    """The process (or one it spawned) listens on ``port``: a bare connect could reach
    another program that already held the port while ours is failing to bind it."""

    def probe() -> bool:
        try:
            root = psutil.Process(proc.pid)
            for p in (root, *root.children(recursive=True)):
                for conn in p.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                        return True
        except psutil.Error:
            pass
        return False

    return probe


def pin_command(command: Sequence[str], cores: set[int] | None) -> list[str]:
    """Prefix ``taskset`` so the affinity is set before the interpreter starts any thread."""
    if not cores:
        return list(command)
    taskset = shutil.which("taskset")
    if taskset is None:
        raise StartError("taskset (util-linux) is needed to pin the target to a core")
    return [taskset, "-c", ",".join(map(str, sorted(cores))), *command]


class ManagedProcess:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_dir: Path,
        cores: set[int] | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
        cwd: Path | None = None,
        include_children: bool = False,
    ) -> None:
        """``wrapper`` goes before the pinning (a profiler that itself runs unpinned);
        ``cwd`` is where ``python -m proxy`` finds its code (a baseline checkout);
        ``include_children``: CPU, context switches, peak RSS and affinity are summed over
        the process and its descendants (nginx serves from a worker its master forks)."""
        self.name = name
        self.include_children = include_children
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        self.command = [*wrapper, *pin_command(command, cores)]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._popen = subprocess.Popen(
                self.command,
                cwd=cwd or REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                process_group=0,
            )
        self.pid = self._popen.pid
        self._ps = psutil.Process(self.pid)

    def alive(self) -> bool:
        return self._popen.poll() is None

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartError(
                    f"{self.name} exited with code {self._popen.returncode} before it was "
                    f"ready.\ncommand: {' '.join(self.command)}\nstderr:\n{self.stderr_tail()}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise StartError(
            f"{self.name} was not ready after {timeout_s:.0f} s.\n"
            f"command: {' '.join(self.command)}\nstderr:\n{self.stderr_tail()}"
        )

    def check_alive(self) -> None:
        if not self.alive():
            raise StartError(
                f"{self.name} died during the run (exit code {self._popen.returncode}).\n"
                f"stderr:\n{self.stderr_tail()}"
            )

    def _tree(self) -> list[psutil.Process]:
        if not self.include_children:
            return [self._ps]
        return [self._ps, *self._ps.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system time of all the process's threads (the log writer thread included)."""
        total = 0.0
        for proc in self._tree():
            times = proc.cpu_times()
            total += float(times.user + times.system)
        return total

    def context_switches(self) -> int:
        """Voluntary + involuntary switches summed over threads (a thread hand-off costs two)."""
        total = 0
        for proc in self._tree():
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    for line in (task / "status").read_text().splitlines():
                        if "ctxt_switches:" in line:
                            total += int(line.split()[1])
        return total

    def rss_mib(self) -> float:
        return sum(float(p.memory_info().rss) for p in self._tree()) / 2**20

    def peak_rss_mib(self) -> float:
        """``VmHWM``; with ``include_children`` the sum over the processes (an upper bound)."""
        total = 0.0
        for proc in self._tree():
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
                    break
            else:
                raise RuntimeError("no VmHWM in /proc status")
        return total

    def thread_affinities(self) -> list[list[int]]:
        """Distinct CPU sets over all threads: proves every thread is really pinned."""
        sets = set()
        for proc in self._tree():
            for task in Path(f"/proc/{proc.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    sets.add(tuple(sorted(os.sched_getaffinity(int(task.name)))))
        return [list(s) for s in sorted(sets)]

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after ``timeout_s``."""
        try:
            return self._popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it if it has not exited in time."""
        if self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self._popen.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(5)


class Fleet:
    """Owns every child started in a ``with`` block and stops them all on the way out."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[ManagedProcess] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        cores: set[int] | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
        cwd: Path | None = None,
        include_children: bool = False,
    ) -> ManagedProcess:
        proc = ManagedProcess(
            name, command, self.log_dir, cores, env, wrapper, cwd, include_children
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: ManagedProcess) -> None:
        proc.stop()
        self._procs.remove(proc)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Newest first: proxies go before the provider they talk to.
        while self._procs:
            self._procs.pop().stop()
