"""Fixtures of the component suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import Clients, admin_settings, proxy_clients


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    """The data and admin apps in-process on ``admin_settings`` (a module needing other
    settings defines its own ``clients``)."""
    async with proxy_clients(admin_settings(tmp_path)) as trio:
        yield trio
