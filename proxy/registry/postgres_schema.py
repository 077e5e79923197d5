"""PostgreSQL side of the registry store: its tables (component ``registry``), row <-> model.

Tables, in the deployment's schema (``proxy.pg.connect``), prefixed ``registry_`` because
the other parts of the PostgreSQL backend share that schema:

========================  ====================================================================
``registry_state``        one row: ``revision`` (bumped by every write), ``generation``
                          (``identity``; NULL until the first write stamps it, like Redis),
                          ``audit_seq`` (the last audit seq handed out). Every write locks
                          this row first (``SELECT ... FOR UPDATE``): writes are serialized,
                          so numbering, seqs and revisions follow commit order.
``registry_versions``     one row per version: content columns written once (a trigger
                          refuses changing them), ``status`` the only column that moves, the
                          version as JSON (``body``, without its status), at most one prod
                          per key (a unique partial index)
``registry_rollouts``     the running rollout of a key (absent: none), its policy and its
                          segment as JSON (NULL: none, everyone)
``registry_audit``        every change, ``seq`` increasing; append-only (a trigger)
``registry_tenants``      one row per tenant record (``Tenant``): its tier, when it changed
``registry_tenant_keys``  the API key hashes (SHA-256, hex) that name a tenant, one row each:
                          the hash is the primary key, so the database itself refuses one key
                          for two tenants; the tenant's keys go with it (a foreign key)
========================  ====================================================================

A version line is named by its ``prompt_key``: a ``PromptKey``'s text (a plain key's is its
slug; the version JSON's ``slug`` field holds the same text).

Numbers are ``bigint`` (the API takes version numbers up to 2^63-1, as the other stores
hold). JSON is kept as ``text`` written by orjson, as the other stores keep it: ``jsonb`` would
reorder keys and normalise numbers, and ``text`` reads back exactly what was written.
Deleting versions or audit entries is refused except inside a restore, which says so with
``SET LOCAL promptproxy.restoring = 'on'``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from proxy.pg.migrate import Migration
from proxy.pg.session import Part
from proxy.registry.models import AuditEntry, PromptVersion, Rollout, Tenant

COMPONENT = "registry"

_V1 = Migration(
    1,
    "registry: state, versions, rollouts, audit",
    (
        """CREATE TABLE registry_state (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            revision bigint NOT NULL DEFAULT 0 CHECK (revision >= 0),
            generation text CHECK (generation <> ''),
            audit_seq bigint NOT NULL DEFAULT 0 CHECK (audit_seq >= 0)
        )""",
        "INSERT INTO registry_state DEFAULT VALUES",
        """CREATE TABLE registry_versions (
            prompt_key text NOT NULL,
            version bigint NOT NULL CHECK (version >= 1),
            sha256 text NOT NULL,
            created_at double precision NOT NULL,
            status text NOT NULL
                CHECK (status IN ('draft', 'candidate', 'prod', 'deprecated')),
            body text NOT NULL,
            PRIMARY KEY (prompt_key, version)
        )""",
        # The database itself refuses a second prod, whatever a future code path does.
        "CREATE UNIQUE INDEX registry_versions_one_prod ON registry_versions (prompt_key) "
        "WHERE status = 'prod'",
        """CREATE TABLE registry_rollouts (
            prompt_key text PRIMARY KEY,
            id text NOT NULL CHECK (id <> ''),
            candidate bigint NOT NULL,
            mode text NOT NULL CHECK (mode IN ('canary', 'shadow')),
            basis_points integer NOT NULL CHECK (basis_points BETWEEN 0 AND 10000),
            sticky text NOT NULL,
            started_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            actor text NOT NULL,
            restore_status text NOT NULL CHECK (restore_status IN ('draft', 'candidate')),
            analysis text,
            FOREIGN KEY (prompt_key, candidate) REFERENCES registry_versions (prompt_key, version)
        )""",
        """CREATE TABLE registry_audit (
            seq bigint PRIMARY KEY CHECK (seq >= 1),
            at double precision NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            prompt_key text NOT NULL,
            version bigint,
            from_status text,
            to_status text,
            reason text NOT NULL,
            previous_prod bigint,
            detail text
        )""",
        "CREATE INDEX registry_audit_by_key ON registry_audit (prompt_key, seq)",
        # Immutability and the append-only log are kept by the database, not only by this
        # module's discipline; a restore (which replaces the registry) is the one exception.
        """CREATE FUNCTION registry_restoring() RETURNS boolean LANGUAGE sql STABLE AS $$
            SELECT coalesce(current_setting('promptproxy.restoring', true), '') = 'on'
        $$""",
        """CREATE FUNCTION registry_versions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                IF NOT registry_restoring() THEN
                    RAISE EXCEPTION 'prompt versions are never deleted'
                        USING ERRCODE = 'integrity_constraint_violation';
                END IF;
                RETURN OLD;
            END IF;
            IF (NEW.prompt_key, NEW.version, NEW.sha256, NEW.created_at, NEW.body)
                IS DISTINCT FROM (OLD.prompt_key, OLD.version, OLD.sha256, OLD.created_at, OLD.body)
            THEN
                RAISE EXCEPTION 'prompt versions are immutable'
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            RETURN NEW;
        END $$""",
        "CREATE TRIGGER registry_versions_guard BEFORE UPDATE OR DELETE ON registry_versions "
        "FOR EACH ROW EXECUTE FUNCTION registry_versions_guard()",
        """CREATE FUNCTION registry_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND registry_restoring() THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'the audit log is append-only'
                USING ERRCODE = 'integrity_constraint_violation';
        END $$""",
        "CREATE TRIGGER registry_audit_guard BEFORE UPDATE OR DELETE ON registry_audit "
        "FOR EACH ROW EXECUTE FUNCTION registry_audit_guard()",
    ),
)

_V2 = Migration(
    2,
    "registry: tenant records and the API key hashes that name them",
    (
        # A tenant's key hashes live only in registry_tenant_keys (no copy in a JSON body
        # to drift from them); the columns are what ``Tenant`` holds.
        """CREATE TABLE registry_tenants (
            id text PRIMARY KEY CHECK (id <> ''),
            tier text NOT NULL CHECK (tier <> ''),
            updated_at double precision NOT NULL
        )""",
        # The primary key: one API key names one tenant at most, whatever a future code
        # path (or a hand-written query) does.
        """CREATE TABLE registry_tenant_keys (
            key_sha256 text PRIMARY KEY,
            tenant_id text NOT NULL REFERENCES registry_tenants (id) ON DELETE CASCADE
        )""",
        "CREATE INDEX registry_tenant_keys_by_tenant ON registry_tenant_keys (tenant_id)",
    ),
)

_V3 = Migration(
    3,
    "registry: the segment a rollout reaches",
    (
        # ``RolloutSegment.to_dict`` as JSON text, like the policy; NULL (every row written
        # before) reads as a rollout that reaches everyone, which is what those were.
        "ALTER TABLE registry_rollouts ADD COLUMN segment text",
    ),
)

#: Frozen once released: change the schema by adding a step, never by editing one.
MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3)
PART = Part(COMPONENT, MIGRATIONS, "the prompt registry")

AUDIT_COLUMNS = (
    "seq, at, actor, action, prompt_key, version, from_status, to_status, reason, "
    "previous_prod, detail"
)
ROLLOUT_COLUMNS = (
    "prompt_key, id, candidate, mode, basis_points, sticky, started_at, updated_at, actor, "
    "restore_status, analysis, segment"
)
VERSION_COLUMNS = "prompt_key, version, sha256, created_at, status, body"
TENANT_COLUMNS = "id, tier, updated_at"
#: Every tenant with its key hashes, by id (a tenant without keys has an empty array).
SELECT_TENANTS = (
    "SELECT t.id, t.tier, t.updated_at, "
    "coalesce(array_agg(k.key_sha256) FILTER (WHERE k.key_sha256 IS NOT NULL), '{}') "
    "FROM registry_tenants t LEFT JOIN registry_tenant_keys k ON k.tenant_id = t.id"
)
#: PostgreSQL identifiers, channel names among them, are at most 63 bytes.
_MAX_CHANNEL = 63


def change_channel(schema: str) -> str:
    """The NOTIFY channel of the registry in ``schema``. Channels are database-wide, so the
    schema is part of the name: deployments sharing a database do not wake each other."""
    name = f"{schema}.registry"
    if len(name) <= _MAX_CHANNEL:
        return name
    # A long schema name: its start plus a digest of the whole, so two long names that
    # share a start still get their own channels.
    digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
    return f"{schema[: _MAX_CHANNEL - 26]}.{digest}.registry"


def version_body(version: PromptVersion) -> str:
    """The immutable part of a version; status lives in its own column."""
    data = version.to_dict()
    del data["status"]
    return orjson.dumps(data).decode()


def version_row(version: PromptVersion) -> tuple[Any, ...]:
    """A ``registry_versions`` row, columns in ``VERSION_COLUMNS`` order."""
    return (
        version.key.text,
        version.version,
        version.sha256,
        version.created_at,
        version.status.value,
        version_body(version),
    )


def row_to_version(body: str, status: str) -> PromptVersion:
    data: dict[str, Any] = orjson.loads(body)
    data["status"] = status
    return PromptVersion.from_dict(data)


def _row_dict(columns: str, row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as the JSON object ``from_dict`` reads: the key's text is its ``slug``."""
    data = dict(zip(columns.split(", "), row, strict=True))
    data["slug"] = data.pop("prompt_key")
    return data


def audit_row(entry: AuditEntry) -> tuple[Any, ...]:
    """A ``registry_audit`` row, columns in ``AUDIT_COLUMNS`` order."""
    return (
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
    )


def row_to_audit(row: tuple[Any, ...]) -> AuditEntry:
    """A ``registry_audit`` row, columns in ``AUDIT_COLUMNS`` order."""
    data = _row_dict(AUDIT_COLUMNS, row)
    if data["detail"] is not None:
        data["detail"] = orjson.loads(data["detail"])
    return AuditEntry.from_dict(data)


def rollout_row(rollout: Rollout) -> tuple[Any, ...]:
    """A ``registry_rollouts`` row, columns in ``ROLLOUT_COLUMNS`` order."""
    return (
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
    )


def tenant_row(tenant: Tenant) -> tuple[Any, ...]:
    """A ``registry_tenants`` row, columns in ``TENANT_COLUMNS`` order."""
    return (tenant.id, tenant.tier, tenant.updated_at)


def row_to_tenant(row: tuple[Any, ...]) -> Tenant:
    """A row of ``SELECT_TENANTS``: the record, its key hashes sorted (as ``from_dict``)."""
    tenant_id, tier, updated_at, key_hashes = row
    return Tenant.from_dict(
        {"id": tenant_id, "tier": tier, "key_hashes": key_hashes, "updated_at": updated_at}
    )


def row_to_rollout(row: tuple[Any, ...]) -> Rollout:
    """A ``registry_rollouts`` row, columns in ``ROLLOUT_COLUMNS`` order."""
    data = _row_dict(ROLLOUT_COLUMNS, row)
    for column in ("analysis", "segment"):
        if data[column] is not None:
            data[column] = orjson.loads(data[column])
    return Rollout.from_dict(data)
