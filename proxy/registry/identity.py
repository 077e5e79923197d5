"""Which registry a store holds: its generation, and the check that it is still the one.

A generation is a random id written once, atomically, when a store is first initialised
(Redis: ``SET NX`` of the generation key; embedded: the ``identity`` row the schema
creates). A process binds to the first generation it reads or creates. From then on a store
that reads with no generation (FLUSHALL, a lost volume), another one (a wrong database, a
replaced file) or a revision lower than one already seen (an old backup put back) is not
"an empty registry" but a lost one: ``StoreReplaced``. The stores also pass the bound
generation into every write, checked in the same atomic step (Lua, the SQLite
transaction), so a push can never silently start a new registry in an emptied store.
Recovery is an operator's restore (``proxy.registry.backup``), which writes the bound
generation back, so every replica that served it recovers by itself.

A process started after the loss has never read the generation. Before it binds, it reads
the fleet board (``proxy.registry.fleet_adopt``): if live replicas serve a registry of a
generation the store does not hold, it ``expect``s that one, so the store reads as lost
for it too (instead of its bootstrap stamping a new registry at v1).
"""

from __future__ import annotations

import uuid

from proxy.registry.store import StoreReplaced


def new_generation() -> str:
    return uuid.uuid4().hex


def describe(generation: str | None) -> str:
    return "no generation (emptied)" if generation is None else f"generation {generation}"


class IdentityGuard:
    """A store's bound generation and the highest revision read under it."""

    __slots__ = ("generation", "lost", "revision")

    def __init__(self) -> None:
        self.generation: str | None = None
        self.revision = -1
        #: Why the store is not the bound registry (None while it is). Sticky across
        #: writes until a read finds the bound registry again (after a restore).
        self.lost: str | None = None

    def observe(self, generation: str | None, revision: int) -> None:
        """Check a read of the store; bind on the first generation seen."""
        if self.generation is None:
            self.generation = generation
        elif generation != self.generation:
            self._lose(
                f"the registry store holds {describe(generation)}, not the registry this "
                f"process served (generation {self.generation}): it was emptied or replaced"
            )
        elif revision < self.revision:
            self._lose(
                f"the registry store went back from revision {self.revision} to {revision} "
                f"(generation {generation}): an older copy was put back"
            )
        if generation is not None and generation == self.generation:
            self.revision = max(self.revision, revision)
        self.lost = None

    def expect(self, generation: str) -> None:
        """Bind to ``generation`` before reading the store: the registry the fleet serves
        (this process has served nothing yet, so whatever it bound at open is dropped)."""
        self.generation = generation
        self.revision = -1
        self.lost = None

    def bind(self, generation: str) -> None:
        """The generation a write found or created (first write into a fresh store)."""
        if self.generation is None:
            self.generation = generation

    def check_write(self, generation: str | None, revision: int) -> None:
        """Before a write: what the store holds now. Binds if unbound; else as ``observe``
        (so a write after a restore does not wait for the next snapshot read)."""
        if self.generation is None:
            if generation is not None:
                self.generation = generation
            return
        self.observe(generation, revision)

    def restored(self, generation: str, revision: int) -> None:
        """This process wrote ``generation`` back (an operator's restore)."""
        self.generation = generation
        self.revision = max(self.revision, revision)
        self.lost = None

    def _lose(self, message: str) -> None:
        self.lost = message
        raise StoreReplaced(message)
