"""SQLite side of the embedded store: schema, migration, row <-> model, statements.

Runs only on the store's worker thread (sqlite3 connections are bound to their thread).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from proxy.prompt_key import PromptKey
from proxy.registry.models import AuditEntry, PromptVersion, Rollout, Status, Tenant
from proxy.registry.store import PromptNotFound, StoreUnavailable, VersionNotFound

# Each step is frozen once released: a file at version N gets steps N+1.. applied, and a fresh
# file gets them all, so fresh and upgraded files cannot differ. Change the schema by adding a
# step, never by editing one.
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

_SCHEMA_V2: tuple[str, ...] = (
    # Structured facts of a change (a rollout's id, mode, percent...), JSON. Adding a column
    # fires no trigger, and the append-only triggers cover the new column as they are
    # table-wide.
    "ALTER TABLE audit ADD COLUMN detail TEXT",
    """CREATE TABLE rollouts (
        slug TEXT PRIMARY KEY,
        id TEXT NOT NULL CHECK (id <> ''),
        candidate INTEGER NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('canary', 'shadow')),
        basis_points INTEGER NOT NULL CHECK (basis_points BETWEEN 0 AND 10000),
        sticky TEXT NOT NULL,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        actor TEXT NOT NULL,
        restore_status TEXT NOT NULL CHECK (restore_status IN ('draft', 'candidate'))
    ) WITHOUT ROWID""",
    # As with immutability, the file itself keeps the rollout rules a bug could break: the
    # candidate exists and stays 'candidate' while the rollout runs (so ending it must
    # delete the row first), and only the percentage of a running rollout changes.
    """CREATE TRIGGER rollouts_candidate_exists BEFORE INSERT ON rollouts
        WHEN (SELECT status FROM versions WHERE slug = NEW.slug AND version = NEW.candidate)
            IS NOT 'candidate'
        BEGIN SELECT RAISE(ABORT, 'a rollout candidate must be a candidate version'); END""",
    """CREATE TRIGGER rollouts_fixed
        BEFORE UPDATE OF slug, id, candidate, mode, sticky, started_at, actor, restore_status
        ON rollouts
        BEGIN SELECT RAISE(ABORT, 'a running rollout only changes its percentage'); END""",
    """CREATE TRIGGER versions_rollout_candidate BEFORE UPDATE OF status ON versions
        WHEN NEW.status <> 'candidate' AND EXISTS (
            SELECT 1 FROM rollouts WHERE slug = OLD.slug AND candidate = OLD.version)
        BEGIN SELECT RAISE(ABORT, 'the candidate of a running rollout stays candidate'); END""",
)

_SCHEMA_V3: tuple[str, ...] = (
    # The rollout's automated-analysis policy (``AnalysisPolicy.to_dict`` as JSON), NULL for
    # none: rows of older files read as rollouts without one.
    "ALTER TABLE rollouts ADD COLUMN analysis TEXT "
    "CHECK (analysis IS NULL OR json_valid(analysis))",
    # The policy is as fixed as the candidate while the rollout runs: a trigger cannot be
    # altered, so it is replaced by one that also covers the new column.
    "DROP TRIGGER rollouts_fixed",
    """CREATE TRIGGER rollouts_fixed
        BEFORE UPDATE OF slug, id, candidate, mode, sticky, started_at, actor, restore_status,
            analysis
        ON rollouts
        BEGIN SELECT RAISE(ABORT, 'a running rollout only changes its percentage'); END""",
)

_SCHEMA_V4: tuple[str, ...] = (
    # The registry's identity (``proxy.registry.identity``): one random generation, written
    # in the same transaction that creates (or upgrades) the file, never changed after.
    """CREATE TABLE identity (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        generation TEXT NOT NULL CHECK (generation <> '')
    )""",
    "INSERT INTO identity (singleton, generation) VALUES (1, lower(hex(randomblob(16))))",
)

_SCHEMA_V5: tuple[str, ...] = (
    # A version line is named by a prompt key (``proxy.prompt_key``), not a bare slug. The
    # column holds the key's text, and a plain key's text is its slug, so every row written
    # before reads as its own key: only the name changes. RENAME COLUMN rewrites the
    # primary keys, indexes and triggers that name the column, so the file keeps every
    # rule it had (one prod per key, immutability, the rollout rules).
    "ALTER TABLE versions RENAME COLUMN slug TO prompt_key",
    "ALTER TABLE audit RENAME COLUMN slug TO prompt_key",
    "ALTER TABLE rollouts RENAME COLUMN slug TO prompt_key",
    # An index cannot be renamed; this one's name said what it indexed.
    "DROP INDEX audit_by_slug",
    "CREATE INDEX audit_by_key ON audit (prompt_key, seq)",
)

_SCHEMA_V6: tuple[str, ...] = (
    # Tenant records (``Tenant.to_dict`` as JSON) and the API key hashes that name them:
    # the primary key makes the file itself refuse one key for two tenants. (No foreign
    # key: SQLite enforces none unless every connection asks; the store deletes a tenant's
    # keys with it, in one transaction.)
    """CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL CHECK (json_valid(body))
    ) WITHOUT ROWID""",
    """CREATE TABLE tenant_keys (
        key_sha256 TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX tenant_keys_by_tenant ON tenant_keys (tenant_id)",
)

_SCHEMA_V7: tuple[str, ...] = (
    # The tiers and tenants a base rollout reaches (``RolloutSegment.to_dict`` as JSON),
    # NULL for everyone: rows of older files read as rollouts without one.
    "ALTER TABLE rollouts ADD COLUMN segment TEXT CHECK (segment IS NULL OR json_valid(segment))",
    # Fixed for the rollout's life like its policy (its verdicts are about those callers),
    # so the trigger is replaced by one that also covers the new column.
    "DROP TRIGGER rollouts_fixed",
    """CREATE TRIGGER rollouts_fixed
        BEFORE UPDATE OF prompt_key, id, candidate, mode, sticky, started_at, actor,
            restore_status, analysis, segment
        ON rollouts
        BEGIN SELECT RAISE(ABORT, 'a running rollout only changes its percentage'); END""",
)

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _SCHEMA_V1,
    _SCHEMA_V2,
    _SCHEMA_V3,
    _SCHEMA_V4,
    _SCHEMA_V5,
    _SCHEMA_V6,
    _SCHEMA_V7,
)
#: ``PRAGMA user_version`` holds the file's version: how many ``_MIGRATIONS`` it has had.
SCHEMA_VERSION = len(_MIGRATIONS)  # 7

AUDIT_COLUMNS = (
    "seq, at, actor, action, prompt_key, version, from_status, to_status, reason, "
    "previous_prod, detail"
)
ROLLOUT_COLUMNS = (
    "prompt_key, id, candidate, mode, basis_points, sticky, started_at, updated_at, actor, "
    "restore_status, analysis, segment"
)


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves; the sqlite3 module's
    # implicit transactions would start deferred ones, which can fail with SQLITE_BUSY on
    # upgrade to a write without ever waiting on the busy timeout.
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        mode = enable_wal(conn, busy_timeout)
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


def enable_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
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
        if found < SCHEMA_VERSION:
            for step in _MIGRATIONS[found:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def all_tenants(conn: sqlite3.Connection) -> dict[str, Tenant]:
    return {
        tenant.id: tenant
        for tenant in (
            Tenant.from_dict(orjson.loads(body))
            for (body,) in conn.execute("SELECT body FROM tenants ORDER BY id")
        )
    }


def put_tenant_row(conn: sqlite3.Connection, tenant: Tenant) -> None:
    """Write ``tenant`` and exactly its key hashes (``IntegrityError`` if another tenant
    holds one: the caller checks first and reports it)."""
    conn.execute(
        "INSERT INTO tenants (id, body) VALUES (?, ?) "
        "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        (tenant.id, orjson.dumps(tenant.to_dict()).decode()),
    )
    conn.execute("DELETE FROM tenant_keys WHERE tenant_id = ?", (tenant.id,))
    conn.executemany(
        "INSERT INTO tenant_keys (key_sha256, tenant_id) VALUES (?, ?)",
        [(digest, tenant.id) for digest in tenant.key_hashes],
    )


def version_body(version: PromptVersion) -> str:
    """The immutable part of a version; status lives in its own column."""
    data = version.to_dict()
    del data["status"]
    return orjson.dumps(data).decode()


def row_to_version(body: str, status: str) -> PromptVersion:
    """A version from its body (whose ``slug`` field holds the key's text) and status."""
    data: dict[str, Any] = orjson.loads(body)
    data["status"] = status
    return PromptVersion.from_dict(data)


def _row_dict(columns: str, row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the JSON object ``from_dict`` reads: the key's text is its ``slug``."""
    data = dict(zip(columns.split(", "), row, strict=True))
    data["slug"] = data.pop("prompt_key")
    return data


def row_to_audit(row: tuple[Any, ...]) -> AuditEntry:
    """An ``audit`` row, columns in ``AUDIT_COLUMNS`` order."""
    data = _row_dict(AUDIT_COLUMNS, row)
    if data["detail"] is not None:
        data["detail"] = orjson.loads(data["detail"])
    return AuditEntry.from_dict(data)


def row_to_rollout(row: tuple[Any, ...]) -> Rollout:
    """A ``rollouts`` row, columns in ``ROLLOUT_COLUMNS`` order."""
    data = _row_dict(ROLLOUT_COLUMNS, row)
    for column in ("analysis", "segment"):
        if data[column] is not None:
            data[column] = orjson.loads(data[column])
    return Rollout.from_dict(data)


# -- statements run on the worker thread, inside the caller's transaction -------------------


def revision(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])


def generation(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT generation FROM identity WHERE singleton = 1").fetchone()
    return None if row is None else str(row[0])


def require_key(conn: sqlite3.Connection, key: PromptKey) -> None:
    found = conn.execute("SELECT 1 FROM versions WHERE prompt_key = ? LIMIT 1", (key.text,))
    if found.fetchone() is None:
        raise PromptNotFound(f"no prompt {key.text!r}")


def status_of(conn: sqlite3.Connection, key: PromptKey, version: int) -> Status:
    row = conn.execute(
        "SELECT status FROM versions WHERE prompt_key = ? AND version = ?", (key.text, version)
    ).fetchone()
    if row is None:
        require_key(conn, key)
        raise VersionNotFound(f"{key} has no version {version}")
    return Status(row[0])


def current_prod(conn: sqlite3.Connection, key: PromptKey) -> int | None:
    row = conn.execute(
        "SELECT version FROM versions WHERE prompt_key = ? AND status = 'prod'", (key.text,)
    ).fetchone()
    return None if row is None else int(row[0])


def running_rollout(conn: sqlite3.Connection, key: PromptKey) -> Rollout | None:
    row = conn.execute(
        f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE prompt_key = ?", (key.text,)
    ).fetchone()
    return None if row is None else row_to_rollout(row)


def all_rollouts(conn: sqlite3.Connection) -> dict[PromptKey, Rollout]:
    rows = conn.execute(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts")
    return {rollout.key: rollout for rollout in map(row_to_rollout, rows)}


def insert_rollout(conn: sqlite3.Connection, rollout: Rollout) -> None:
    conn.execute(
        f"INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rollout.key.text,
            rollout.id,
            rollout.candidate,
            rollout.mode.value,
            rollout.basis_points,
            str(rollout.sticky),
            rollout.started_at,
            rollout.updated_at,
            rollout.actor,
            rollout.restore_status.value,
            None if rollout.analysis is None else orjson.dumps(rollout.analysis.to_dict()).decode(),
            None if rollout.segment is None else orjson.dumps(rollout.segment.to_dict()).decode(),
        ),
    )


def put_rollout_percentage(conn: sqlite3.Connection, rollout: Rollout) -> None:
    conn.execute(
        "UPDATE rollouts SET basis_points = ?, updated_at = ? WHERE prompt_key = ?",
        (rollout.basis_points, rollout.updated_at, rollout.key.text),
    )


def delete_rollout(conn: sqlite3.Connection, key: PromptKey) -> None:
    conn.execute("DELETE FROM rollouts WHERE prompt_key = ?", (key.text,))


def put_status(conn: sqlite3.Connection, key: PromptKey, version: int, status: Status) -> None:
    conn.execute(
        "UPDATE versions SET status = ? WHERE prompt_key = ? AND version = ?",
        (status.value, key.text, version),
    )


def insert_audit(conn: sqlite3.Connection, entry: AuditEntry) -> None:
    """An entry with its seq as it is (a restore); does not bump the revision."""
    conn.execute(
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.seq,
            entry.at,
            entry.actor,
            entry.action,
            entry.key.text,
            entry.version,
            None if entry.from_status is None else entry.from_status.value,
            None if entry.to_status is None else entry.to_status.value,
            entry.reason,
            entry.previous_prod,
            None if entry.detail is None else orjson.dumps(dict(entry.detail)).decode(),
        ),
    )


def append_audit(
    conn: sqlite3.Connection,
    *,
    at: float,
    actor: str,
    action: str,
    key: PromptKey,
    version: int | None,
    from_status: Status | None,
    to_status: Status | None,
    reason: str,
    previous_prod: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one audit entry and bump the revision: every write goes through here."""
    cursor = conn.execute(
        "INSERT INTO audit (at, actor, action, prompt_key, version, from_status, to_status, "
        "reason, previous_prod, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            at,
            actor,
            action,
            key.text,
            version,
            None if from_status is None else from_status.value,
            None if to_status is None else to_status.value,
            reason,
            previous_prod,
            None if detail is None else orjson.dumps(detail).decode(),
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
        key=key,
        version=version,
        from_status=from_status,
        to_status=to_status,
        reason=reason,
        previous_prod=previous_prod,
        detail=detail,
    )
