"""What a worker process inherits from the supervisor, passed as one hidden `serve` option."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    #: 0-based, stable across restarts of the same slot (logs name it).
    index: int
    #: The data plane's listening socket, bound once by the supervisor and shared.
    data_fd: int
    #: The read end of a pipe the supervisor holds open: end of file means the supervisor
    #: is gone, and the worker drains and exits instead of serving on as an orphan.
    lifeline_fd: int
    #: The worker's private admin endpoint: a unix socket in the supervisor's runtime
    #: directory (mode 700).
    admin_path: str

    def encode(self) -> str:
        return f"{self.index},{self.data_fd},{self.lifeline_fd},{self.admin_path}"

    @classmethod
    def decode(cls, text: str) -> WorkerSpec:
        """Raises ``ValueError`` on anything ``encode`` did not make."""
        index, data_fd, lifeline_fd, admin_path = text.split(",", 3)
        if not admin_path:
            raise ValueError("no admin path")
        return cls(int(index), int(data_fd), int(lifeline_fd), admin_path)
