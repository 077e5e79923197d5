"""Ids of stored records (eval runs, captured calls): unique, and sorting by time."""

from __future__ import annotations

import secrets
import time


def new_record_id(now: float | None = None) -> str:
    """Milliseconds since the epoch (13 digits), then 8 random hex digits."""
    at = time.time() if now is None else now
    return f"{int(at * 1000):013d}-{secrets.token_hex(4)}"
