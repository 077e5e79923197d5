"""SQLite side of the embedded store: schema, migration, row <-> model, statements.

Runs only on the store's worker thread (sqlite3 connections are bound to their thread).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from proxy.registry.models import AuditEntry, PromptVersion, Status
from proxy.registry.store import PromptNotFound, StoreUnavailable, VersionNotFound

#: Bumped whenever the DDL below changes; ``PRAGMA user_version`` holds the file's version.
SCHEMA_VERSION = 1

_SCHEMA_V1: tuple[str, ...] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO meta (key, value) VALUES ('revision', 0)",
    """CREATE TABLE versions (
        slug TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        body TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('draft', 'candidate', 'prod', 'deprecated')),
        PRIMARY KEY (slug, version)
    ) WITHOUT ROWID""",
    # The database itself refuses a second prod, whatever a future code path does.
    "CREATE UNIQUE INDEX versions_one_prod ON versions (slug) WHERE status = 'prod'",
    """CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        slug TEXT NOT NULL,
        version INTEGER,
        from_status TEXT,
        to_status TEXT,
        reason TEXT NOT NULL,
        previous_prod INTEGER
    )""",
    "CREATE INDEX audit_by_slug ON audit (slug, seq)",
    # Immutability is enforced by the file, not only by this module's discipline.
    """CREATE TRIGGER versions_immutable
        BEFORE UPDATE OF slug, version, sha256, created_at, body ON versions
        BEGIN SELECT RAISE(ABORT, 'prompt versions are immutable'); END""",
    """CREATE TRIGGER versions_no_delete BEFORE DELETE ON versions
        BEGIN SELECT RAISE(ABORT, 'prompt versions are never deleted'); END""",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)

AUDIT_COLUMNS = (
    "seq, at, actor, action, slug, version, from_status, to_status, reason, previous_prod"
)


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves; the sqlite3 module's
    # implicit transactions would start deferred ones, which can fail with SQLITE_BUSY on
    # upgrade to a write without ever waiting on the busy timeout.
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        mode = _enable_wal(conn, busy_timeout)
        if mode.lower() != "wal":
            raise StoreUnavailable(f"{path}: cannot enable WAL mode (got {mode!r})")
        # Registry writes are rare and human-paced; an acknowledged promote must survive a
        # power cut, so pay the fsync per commit.
        conn.execute("PRAGMA synchronous=FULL")
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    # Switching a fresh file to WAL can report "database is locked" at once, without the
    # busy handler, when several processes open it together (proxy workers starting up).
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    # IMMEDIATE: two processes opening a fresh file must not both create the schema.
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{path} has registry schema v{found}; this promptproxy understands up to "
                f"v{SCHEMA_VERSION} (upgrade promptproxy)"
            )
        if found == 0:
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def version_body(version: PromptVersion) -> str:
    """The immutable part of a version; status lives in its own column."""
    data = version.to_dict()
    del data["status"]
    return orjson.dumps(data).decode()


def row_to_version(body: str, status: str) -> PromptVersion:
    data: dict[str, Any] = orjson.loads(body)
    data["status"] = status
    return PromptVersion.from_dict(data)


def row_to_audit(row: tuple[Any, ...]) -> AuditEntry:
    seq, at, actor, action, slug, version, from_status, to_status, reason, previous_prod = row
    return AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        slug=slug,
        version=version,
        from_status=None if from_status is None else Status(from_status),
        to_status=None if to_status is None else Status(to_status),
        reason=reason,
        previous_prod=previous_prod,
    )


# -- statements run on the worker thread, inside the caller's transaction -------------------


def revision(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])


def require_slug(conn: sqlite3.Connection, slug: str) -> None:
    if conn.execute("SELECT 1 FROM versions WHERE slug = ? LIMIT 1", (slug,)).fetchone() is None:
        raise PromptNotFound(f"no prompt {slug!r}")


def status_of(conn: sqlite3.Connection, slug: str, version: int) -> Status:
    row = conn.execute(
        "SELECT status FROM versions WHERE slug = ? AND version = ?", (slug, version)
    ).fetchone()
    if row is None:
        require_slug(conn, slug)
        raise VersionNotFound(f"{slug} has no version {version}")
    return Status(row[0])


def current_prod(conn: sqlite3.Connection, slug: str) -> int | None:
    row = conn.execute(
        "SELECT version FROM versions WHERE slug = ? AND status = 'prod'", (slug,)
    ).fetchone()
    return None if row is None else int(row[0])


def put_status(conn: sqlite3.Connection, slug: str, version: int, status: Status) -> None:
    conn.execute(
        "UPDATE versions SET status = ? WHERE slug = ? AND version = ?",
        (status.value, slug, version),
    )


def append_audit(
    conn: sqlite3.Connection,
    *,
    at: float,
    actor: str,
    action: str,
    slug: str,
    version: int | None,
    from_status: Status | None,
    to_status: Status | None,
    reason: str,
    previous_prod: int | None = None,
) -> AuditEntry:
    """Append one audit entry and bump the revision: every write goes through here."""
    cursor = conn.execute(
        "INSERT INTO audit (at, actor, action, slug, version, from_status, to_status, reason, "
        "previous_prod) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            at,
            actor,
            action,
            slug,
            version,
            None if from_status is None else from_status.value,
            None if to_status is None else to_status.value,
            reason,
            previous_prod,
        ),
    )
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
    seq = cursor.lastrowid
    assert seq is not None
    return AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        slug=slug,
        version=version,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        previous_prod=previous_prod,
    )
