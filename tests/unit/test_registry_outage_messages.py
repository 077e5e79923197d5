"""During a store outage a read must not answer that "changes cannot be saved"."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import pytest

from proxy.errors import ServiceUnavailable
from proxy.prompt_key import PromptKey
from proxy.registry.models import VersionDraft
from proxy.registry.service import RegistryService
from proxy.registry.store import StoreUnavailable


class DownStore:
    """Every store call fails as an unreachable Redis or a locked disk would."""

    def __getattr__(self, name: str) -> Callable[..., Awaitable[NoReturn]]:
        async def down(*args: Any, **kwargs: Any) -> NoReturn:
            raise StoreUnavailable("connection refused")

        return down


SERVICE = RegistryService(DownStore())  # type: ignore[arg-type]

READS: list[Callable[[], Awaitable[Any]]] = [
    SERVICE.list_prompts,
    lambda: SERVICE.get_prompt("p"),
    lambda: SERVICE.get_version("p", 1),
    lambda: SERVICE.diff("p", 1, 2),
    lambda: SERVICE.audit(PromptKey("p")),
    lambda: SERVICE.state_at("p", 0.0),
    lambda: SERVICE.latest_rollout("p"),
    SERVICE.list_rollouts,
    lambda: SERVICE.get_rollout("p"),
]
WRITES: list[Callable[[], Awaitable[Any]]] = [
    lambda: SERVICE.push(VersionDraft(key=PromptKey("p"), template="hi"), "t"),
    lambda: SERVICE.promote(PromptKey("p"), 1, "t", ""),
    lambda: SERVICE.rollback("p", "t", ""),
    lambda: SERVICE.abort_rollout("p", "t", ""),
]


@pytest.mark.parametrize("call", READS)
async def test_a_read_during_an_outage_says_it_cannot_read(
    call: Callable[[], Awaitable[Any]],
) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        await call()
    assert "cannot be saved" not in info.value.message
    assert "cannot be read" in info.value.message
    assert "connection refused" in info.value.message
    assert info.value.code == "registry_unavailable"


@pytest.mark.parametrize("call", WRITES)
async def test_a_write_during_an_outage_says_the_change_was_not_saved(
    call: Callable[[], Awaitable[Any]],
) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        await call()
    assert "changes cannot be saved" in info.value.message
