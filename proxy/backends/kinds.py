"""The backends `registry.store` can name, as data: which URL schemes pick each one, the
module that opens it, whether replicas share it, which pair sink it provides and which
settings only it reads.

Pure data with no imports from the rest of the proxy, so the configuration can validate a
store and refuse combinations with it (``proxy.config``) before anything is opened. Adding
a backend is one row in ``KINDS`` plus the module the row names.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class BackendKind:
    #: Short name, as in logs and ``shadow.sink.kind``-style messages.
    name: str
    #: How it is called in messages for operators.
    label: str
    #: `registry.store` values starting with one of these pick this backend.
    schemes: tuple[str, ...]
    #: What a store of this kind looks like, for messages.
    example: str
    #: The module with ``async def open_backend(config, context) -> Backend``.
    module: str
    #: Every replica pointed at the same store shares every part (else: one process).
    shared: bool
    #: The `shadow.sink.kind` this backend writes pairs with (`auto` picks it).
    pair_sink: str
    #: Settings (dotted paths) that only this backend reads; any other backend refuses them
    #: when they differ from their default.
    options: tuple[str, ...]


#: Settings every shared backend reads and the embedded one does not.
_SHARED_OPTIONS = ("analysis.lease_seconds", "shadow.sink.max_entries")

KINDS: tuple[BackendKind, ...] = (
    BackendKind(
        name="embedded",
        label="embedded",
        schemes=("embedded:",),
        example="embedded:PATH",
        module="proxy.backends.embedded",
        shared=False,
        pair_sink="files",
        options=(
            "shadow.sink.dir",
            "shadow.sink.max_file_bytes",
            "shadow.sink.max_files",
            "feedback.max_local_entries",
        ),
    ),
    BackendKind(
        name="redis",
        label="Redis",
        schemes=("redis://", "rediss://", "unix://"),
        example="redis://host:6379/0",
        module="proxy.backends.redis",
        shared=True,
        pair_sink="redis",
        options=("registry.redis_prefix", *_SHARED_OPTIONS),
    ),
    BackendKind(
        name="postgresql",
        label="PostgreSQL",
        schemes=("postgresql://", "postgres://"),
        example="postgresql://user@host:5432/db",
        module="proxy.backends.postgres",
        shared=True,
        pair_sink="postgresql",
        options=("registry.postgres_schema", *_SHARED_OPTIONS),
    ),
)

#: `shadow.sink.kind` values: `auto` (the backend's own) or one a backend provides.
SINK_KINDS: tuple[str, ...] = ("auto", *dict.fromkeys(kind.pair_sink for kind in KINDS))


def kind_of(store: str) -> BackendKind | None:
    """The backend a `registry.store` value names, or None when no scheme matches."""
    for kind in KINDS:
        for scheme in kind.schemes:
            # `embedded:` needs a path; a bare URL scheme is a valid URL (its defaults).
            if store.startswith(scheme) and (scheme.endswith("//") or len(store) > len(scheme)):
                return kind
    return None


def store_forms() -> str:
    """The accepted `registry.store` forms, for messages."""
    forms = [f"`{kind.example}`" for kind in KINDS]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


def describe_store(store: str) -> str:
    """The store for logs, /readyz and messages: kind and place, never credentials (the
    user info of a URL and its query string, where redis-py also takes a password)."""
    kind = kind_of(store)
    if kind is None or not kind.shared:
        return store
    parts = urlsplit(store)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
