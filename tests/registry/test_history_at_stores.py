"""`prompts history --at T` on both stores: prod at T, and what the rollout running at T
served (candidate, mode, percent, sticky key), replayed from the audit log alone."""

from __future__ import annotations

from proxy.registry.history import RolloutAt, StateAt
from proxy.registry.models import RolloutMode
from proxy.registry.service import RegistryService
from proxy.registry.store import PromptStore
from tests.registry.helpers import BY_HEADER, BY_USER, GREET, T0, push, start


async def test_state_at_names_prod_and_what_each_rollout_served(store: PromptStore) -> None:
    await push(store, "a", "b", "c")
    await store.promote(GREET, 1, "alice", "launch", T0 + 10)
    await start(store, 2, rollout_id="r-canary", basis_points=1000, at=T0 + 100)
    await store.update_rollout(GREET, "r-canary", 5000, "alice", "ramp", T0 + 200)
    await store.abort_rollout(GREET, "alice", "too slow", T0 + 300)
    await start(
        store,
        3,
        rollout_id="r-shadow",
        mode=RolloutMode.SHADOW,
        basis_points=2000,
        sticky=BY_HEADER,
        at=T0 + 400,
    )
    await store.promote_rollout(GREET, "alice", "good", T0 + 500)
    service = RegistryService(store)

    async def at(offset: float) -> StateAt:
        return await service.state_at(GREET, T0 + offset)

    assert await at(5) == StateAt(None, None)
    assert await at(50) == StateAt(1, None)
    ten_percent = RolloutAt("r-canary", 2, "canary", 10.0, str(BY_USER), T0 + 100, T0 + 100)
    assert await at(100) == StateAt(1, ten_percent)  # an entry at the instant counts
    assert await at(150) == StateAt(1, ten_percent)
    assert await at(250) == StateAt(
        1, RolloutAt("r-canary", 2, "canary", 50.0, str(BY_USER), T0 + 100, T0 + 200)
    )
    assert await at(350) == StateAt(1, None)  # aborted
    assert await at(450) == StateAt(
        1, RolloutAt("r-shadow", 3, "shadow", 20.0, "header:x-cohort", T0 + 400, T0 + 400)
    )
    assert await at(600) == StateAt(3, None)  # promoted: the rollout ended with it


async def test_latest_rollout_is_the_running_one_else_the_last_started(
    store: PromptStore,
) -> None:
    """What `shadow report` and `shadow export` read by default."""
    service = RegistryService(store)
    await push(store, "a", "b", "c")
    await store.promote(GREET, 1, "alice", "launch", T0 + 10)
    assert await service.latest_rollout(GREET) is None
    await start(store, 2, rollout_id="r-first", at=T0 + 100)
    assert await service.latest_rollout(GREET) == ("r-first", True)
    await store.abort_rollout(GREET, "alice", "", T0 + 200)
    assert await service.latest_rollout(GREET) == ("r-first", False)
    await start(store, 3, rollout_id="r-second", at=T0 + 300)
    await store.promote_rollout(GREET, "alice", "", T0 + 400)
    assert await service.latest_rollout(GREET) == ("r-second", False)
