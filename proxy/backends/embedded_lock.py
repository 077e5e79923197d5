"""One serving process per embedded store: an exclusive advisory lock beside its files.

The embedded backend keeps the analysis lease, pool and state and the feedback index in the
process's memory, and writes its SQLite files as if no one else did. A second `serve` on the
same files (a second terminal, or a second pod on a shared volume) would be a second writer
with its own lease: two analysers acting on one rollout. `serve` therefore takes
``flock(LOCK_EX | LOCK_NB)`` on ``<registry>.lock`` before it opens the store, and a second
one fails at start naming the holder's pid. The kernel drops the lock when the holder exits,
however it exits, so a crash leaves nothing to clean up.

Only `serve` takes it: tools and tests that open the store directly are not serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from proxy.backends.embedded import database_path
from proxy.preflight import StartupError


def lock_path(registry_db: Path) -> Path:
    return registry_db.with_name(f"{registry_db.name}.lock")


@contextlib.contextmanager
def serving_lock(store: str) -> Iterator[Path]:
    """Hold the lock of the embedded store ``store`` (``embedded:PATH``) while in the block;
    ``StartupError`` (one line) when another process holds it, or the file cannot be made."""
    path = lock_path(database_path(store))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        # Said as the store's own open failure says it (backends/embedded.py): the usual
        # cause is the same, a folder this user cannot write.
        raise StartupError(
            f"cannot open the registry at {database_path(store).absolute()} (registry.store, "
            f"as uid {os.getuid()}): cannot create its lock file {path}: {exc.strerror or exc}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise StartupError(
                f"the embedded store {database_path(store)} is in use by another promptproxy "
                f"({holder}): it serves one process only; stop that one, or point "
                "registry.store at redis://... or postgresql://... to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        # Closing the descriptor releases the lock; the file stays (removing it would race
        # with a process that just opened it and is about to lock it).
        os.close(fd)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f"pid {pid}"
    return "pid unknown"
