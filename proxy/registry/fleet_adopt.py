"""Before a new process binds a registry generation: the one the live replicas serve.

A process that has never read the store's generation cannot tell an emptied store from a
fresh one on its own (``identity``). The fleet board can: if live replicas serve a
non-empty registry of generation G and the store holds none or another, the store lost G,
and this process expects G too (``PromptStore.expect_generation``). It then reads the store
as lost like they do: writes refused (``registry_store_replaced``), its bootstrap waits, it
has no snapshot so it stays not ready, until a restore or an import brings G back.

The remaining window: a FLUSHALL empties the board too, so a process that starts before any
surviving replica has heartbeated again (within ``fleet.heartbeat_seconds``) finds nobody
and binds to what it finds.
"""

from __future__ import annotations

import logging
from collections import Counter

from proxy.log import APP_LOGGER
from proxy.registry.fleet import Fleet, FleetError
from proxy.registry.store import PromptStore

_log = logging.getLogger(APP_LOGGER)


async def adopt_fleet_generation(store: PromptStore, fleet: Fleet) -> str | None:
    """Expect the generation the live replicas serve if the store does not hold it; return
    it (None: nothing to adopt). ``StoreUnavailable`` if the store cannot be read (the
    caller tries again later); a board that cannot be read while the store answers adopts
    nothing rather than keep the process from starting."""
    try:
        views = await fleet.replicas()
    except FleetError as exc:
        await store.generation()  # raises if the store is down too: then try again later
        _log.warning("fleet board unreadable before binding the registry: %s", exc)
        return None
    serving = [
        v
        for v in views
        if v.live and v.replica != fleet.me and v.beat.generation is not None and v.beat.prompts
    ]
    if not serving:
        return None
    found = await store.generation()
    if any(v.beat.generation == found for v in serving):
        return None  # the store holds a registry the fleet serves: bind to it as usual
    # Several (a replica bound to a registry started by mistake): the most served, then the
    # one with the most prompts.
    count = Counter(v.beat.generation for v in serving)
    best = max(serving, key=lambda v: (count[v.beat.generation], v.beat.prompts, v.beat.revision))
    generation = best.beat.generation
    assert generation is not None
    store.expect_generation(generation)
    _log.error(
        "registry store lost: it holds %s, but %d live replica(s) serve generation %s "
        "(%d prompts, revision %d); this replica expects that registry and waits for an "
        "operator to restore it (docs/operations.md#registry-store-lost)",
        "no generation" if found is None else f"generation {found}",
        count[generation],
        generation,
        best.beat.prompts,
        best.beat.revision,
    )
    return generation
