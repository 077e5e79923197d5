"""Key schema, stored formats (and their decoding) and Lua scripts of the Redis store.

Key schema (P = prefix, default ``promptproxy:``; ``{registry}`` is a hash tag, so a Redis
Cluster keeps every key in one slot and the scripts may touch them all):

=================================  ======  ===============================================
``P{registry}:revision``           string  change counter, INCR'd by every write
``P{registry}:generation``         string  the registry's identity (``identity``): SET NX
                                           by the first write, or by the first read of
                                           a store written before generations existed
``P{registry}:changes``            channel every write PUBLISHes the new revision here
``P{registry}:schema``             string the key schema's version (``SCHEMA_VERSION``),
                                           SET by the first process that opens the store
``P{registry}:slugs``              set     every key that has at least one version
``P{registry}:versions:<key>``     hash    version number -> JSON (immutable: written once,
                                           with ``version``; without ``status``)
``P{registry}:status:<key>``       hash    version number -> status
``P{registry}:prod_stack:<key>``   list    rollback history, top (right end) = current
                                           prod; see ``lifecycle.prod_stack``
``P{registry}:rollout:<key>``      hash    the running rollout, absent when none: fields
                                           id candidate mode basis_points sticky
                                           started_at updated_at actor restore_status
                                           (``Rollout.from_dict`` reads them as is),
                                           analysis (the policy's JSON; absent: none) and
                                           segment (``RolloutSegment`` JSON; absent:
                                           everyone)
``P{registry}:audit_seq``          string  last audit ``seq`` (INCR)
``P{registry}:audit``              stream  every audit entry, entry id ``<seq>-0``
``P{registry}:audit:<key>``        stream  the same entries for one key (for paging by key)
``P{registry}:last_restore``       string  id of the last restore that was applied (read
                                           back when its answer was lost)
``P{registry}:tenants``            hash    tenant id -> ``Tenant.to_dict`` JSON (absent:
                                           no tenants)
``P{registry}:tenant_keys``        hash    API key hash -> the tenant id it names: one
                                           owner per key, checked by the same script that
                                           writes it
``P{registry}:tenant_audits``      set     tenant ids whose ``audit:tenant=<id>/_tenants``
                                           stream exists (kept after a delete, so a
                                           restore that drops the audit finds them all)
``P{registry}:staging:<id>:...``   any     a restore being written (see ``RESTORE_FLIP``):
                                           the keys above under ``staging:<id>:``, with a
                                           TTL, renamed into place by one script
=================================  ======  ===============================================

``<key>`` is a ``PromptKey``'s text: for a plain key the bare slug, so the names are those
of schema 1, when keys were slugs (the ``slugs`` set keeps its name), and schema 2 (this
one) only adds the ``schema`` key; the version JSON's ``slug`` and the audit's ``slug``
field hold the key's text too. The tenant keys came later without a new schema version:
absent, they mean no tenants, which is what a store written before them has; so did a
rollout's ``segment`` field: absent, it means everyone, as every rollout before it reached.

Versions are numbered 1..n without gaps, so ``HLEN versions:<key>`` is the latest number.
Audit stream fields: at actor action slug version from_status to_status reason
previous_prod detail (JSON object), with "" for None.

A rollout is a hash of text fields, not one JSON value, because ``update_rollout`` changes
two of them in Lua: re-encoding JSON there would round timestamps (cjson keeps 14 digits).

Each script checks everything before its first write: Redis runs a script atomically but
does not undo the writes it made before an error. Errors the caller must map to store
exceptions are returned as ``PROMPT_NOT_FOUND|VERSION_NOT_FOUND|TENANT_NOT_FOUND <msg>``,
``INVALID_TRANSITION <msg>``, or ``STORE_REPLACED <msg>``: every write script gets the
generation its caller is bound to as its last ARGV (and the highest revision it read
before that) and refuses before anything else when the store holds another generation (or
none), or a lower revision.
The refusals (which moves, and their messages) are generated from the ``lifecycle`` checks
(``redis_lua_rules``), so the Redis store cannot drift from the embedded one. Rollout
scripts are in ``redis_rollout_scripts``, tenant scripts in ``redis_tenant_scripts``; the
helpers they share with ``PROMOTE`` are here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from proxy.prompt_key import PromptKey
from proxy.registry import lifecycle
from proxy.registry.models import (
    AuditEntry,
    PromptVersion,
    Rollout,
    Status,
    Tenant,
    tenant_audit_key,
)
from proxy.registry.redis_lua_rules import (
    KEY,
    A,
    B,
    lua_move_refusals,
    lua_refusal,
    lua_status_refusals,
)

PROMPT_NOT_FOUND = "PROMPT_NOT_FOUND"
VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
INVALID_TRANSITION = "INVALID_TRANSITION"
STORE_REPLACED = "STORE_REPLACED"
TENANT_NOT_FOUND = "TENANT_NOT_FOUND"

#: The key schema's version (``P{registry}:schema``): 1 had no such key (keys were slugs),
#: 2 names the prompt key and records itself. A store at a higher version was written by a
#: newer promptproxy and is refused rather than misread.
SCHEMA_VERSION = 2


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str = "promptproxy:"

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix must not contain '{' or '}' (hash tag)")

    def _key(self, *parts: str) -> str:
        return self.prefix + "{registry}:" + ":".join(parts)

    @property
    def revision(self) -> str:
        return self._key("revision")

    @property
    def generation(self) -> str:
        return self._key("generation")

    @property
    def channel(self) -> str:
        return self._key("changes")

    @property
    def schema(self) -> str:
        return self._key("schema")

    @property
    def prompt_keys(self) -> str:
        """The set of every key's text (named ``slugs`` since schema 1)."""
        return self._key("slugs")

    @property
    def audit_seq(self) -> str:
        return self._key("audit_seq")

    @property
    def audit(self) -> str:
        return self._key("audit")

    @property
    def last_restore(self) -> str:
        return self._key("last_restore")

    def staged(self, restore_id: str, key: str) -> str:
        """Where restore ``restore_id`` writes ``key`` before putting it in place."""
        tag = self.prefix + "{registry}:"
        return tag + f"staging:{restore_id}:" + key[len(tag) :]

    @property
    def tenants(self) -> str:
        return self._key("tenants")

    @property
    def tenant_keys(self) -> str:
        return self._key("tenant_keys")

    @property
    def tenant_audits(self) -> str:
        return self._key("tenant_audits")

    def key_audit(self, key: PromptKey) -> str:
        return self._key("audit", key.text)

    def versions(self, key: PromptKey) -> str:
        return self._key("versions", key.text)

    def status(self, key: PromptKey) -> str:
        return self._key("status", key.text)

    def prod_stack(self, key: PromptKey) -> str:
        return self._key("prod_stack", key.text)

    def rollout(self, key: PromptKey) -> str:
        return self._key("rollout", key.text)

    def for_write(self, key: PromptKey) -> list[str]:
        """KEYS of every write script, in the order the Lua prelude expects."""
        return [
            self.revision,
            self.audit_seq,
            self.audit,
            self.key_audit(key),
            self.versions(key),
            self.status(key),
            self.prod_stack(key),
            self.prompt_keys,
            self.rollout(key),
            self.generation,
        ]

    def for_tenant_write(self, tenant_id: str) -> list[str]:
        """KEYS of the tenant scripts (``redis_tenant_scripts``), in their prelude's order."""
        return [
            self.revision,
            self.audit_seq,
            self.audit,
            self.key_audit(tenant_audit_key(tenant_id)),
            self.tenants,
            self.tenant_keys,
            self.tenant_audits,
            self.generation,
        ]


_PROMOTE_REFUSED = lua_status_refusals(partial(lifecycle.check_promote, KEY, A))
_PROMOTE_DURING_ROLLOUT = lua_refusal(partial(lifecycle.check_promote_during_rollout, KEY, A, B))
_NO_PROD = lua_refusal(partial(lifecycle.rollback_pair, KEY, []))
_NO_FORMER_PROD = lua_refusal(partial(lifecycle.rollback_pair, KEY, [A]))
_SET_STATUS_REFUSED = lua_move_refusals(partial(lifecycle.check_set_status, KEY, A))
_SET_STATUS_DURING_ROLLOUT = lua_refusal(
    partial(lifecycle.check_set_status_during_rollout, KEY, A, A)
)


# The start of every write script, once it has named its KEYS (K_REV, K_SEQ, K_AUDIT,
# K_KEY_AUDIT and K_GENERATION at least: ``PRELUDE``, ``redis_tenant_scripts``).
# ARGV[1] channel, ARGV[2] the key's text (the audit's), ARGV[3] actor, ARGV[4] reason,
# ARGV[5] at (a float's repr, kept as text so Lua's number formatting cannot round it),
# then the script's own arguments, then the highest revision the caller has read (-1:
# none), and last the generation the caller is bound to. A store holding another
# generation, or a lower revision (an older copy of this registry put back), refuses the
# write atomically. ``commit``'s version is text ('' for none), never nil.
WRITE_CORE = f"""
local CHANNEL, PKEY, ACTOR, REASON, AT = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function fail(code, msg)
  return redis.error_reply(code .. ' ' .. msg)
end

local found_generation = redis.call('GET', K_GENERATION)
if found_generation ~= ARGV[#ARGV] then
  return fail('{STORE_REPLACED}', 'the registry store holds '
    .. (found_generation and ('generation ' .. found_generation) or 'no generation (emptied)')
    .. ', not the registry this process served (generation ' .. ARGV[#ARGV]
    .. '): it was emptied or replaced')
end
local found_revision = tonumber(redis.call('GET', K_REV) or '0')
if found_revision < tonumber(ARGV[#ARGV - 1]) then
  return fail('{STORE_REPLACED}', 'the registry store went back from revision '
    .. ARGV[#ARGV - 1] .. ' to ' .. found_revision .. ' (generation ' .. ARGV[#ARGV]
    .. '): an older copy was put back')
end

local function refuse(msg)
  return fail('{INVALID_TRANSITION}', msg)
end

-- Append one audit entry, bump and publish the revision; returns the entry's seq.
local function commit(action, version, from_status, to_status, previous_prod, detail)
  local seq = redis.call('INCR', K_SEQ)
  local fields = {{'at', AT, 'actor', ACTOR, 'action', action, 'slug', PKEY,
    'version', version, 'from_status', from_status or '', 'to_status', to_status or '',
    'reason', REASON, 'previous_prod', previous_prod or '', 'detail', detail or ''}}
  local id = seq .. '-0'
  redis.call('XADD', K_AUDIT, id, unpack(fields))
  redis.call('XADD', K_KEY_AUDIT, id, unpack(fields))
  local rev = redis.call('INCR', K_REV)
  redis.call('PUBLISH', CHANNEL, rev)
  return seq
end
"""

# KEYS of the prompt scripts: see RedisKeys.for_write.
PRELUDE = (
    """
local K_REV, K_SEQ, K_AUDIT, K_KEY_AUDIT = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_VERSIONS, K_STATUS, K_STACK, K_KEYS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_ROLLOUT, K_GENERATION = KEYS[9], KEYS[10]
"""
    + WRITE_CORE
    + f"""
local function require_key()
  if redis.call('EXISTS', K_VERSIONS) == 0 then
    return fail('{PROMPT_NOT_FOUND}', 'no prompt ' .. PKEY)
  end
end

local function require_version(version)
  local err = require_key()
  if err then return nil, err end
  local status = redis.call('HGET', K_STATUS, version)
  if not status then
    return nil, fail('{VERSION_NOT_FOUND}', PKEY .. ' has no version ' .. version)
  end
  return status
end

-- The running rollout's candidate (a version number, as text) or nil.
local function running_candidate()
  return redis.call('HGET', K_ROLLOUT, 'candidate') or nil
end

-- Python's repr of basis_points / 100 (Rollout.percent): '25.0', '12.5', '0.01'.
local function percent(basis_points)
  local n = tonumber(basis_points)
  local text = string.format('%d.%02d', math.floor(n / 100), n % 100)
  return (string.gsub(text, '0$', ''))
end

-- Rollout.audit_detail() of the running rollout as JSON, plus ``extra`` (',"key":value').
-- Written by hand: the contract tests compare it with Rollout.audit_detail. The policy and
-- the segment are spliced in as the JSON text Python wrote, never decoded: cjson would round
-- the policy's floats and turn the segment's empty list into an object.
local function rollout_detail(extra)
  local r = redis.call('HMGET', K_ROLLOUT, 'id', 'mode', 'basis_points', 'sticky', 'analysis',
    'segment')
  local analysis, segment = '', ''
  if r[5] then analysis = ',"analysis":' .. r[5] end
  if r[6] then segment = ',"segment":' .. r[6] end
  return '{{"rollout_id":' .. cjson.encode(r[1]) .. ',"mode":' .. cjson.encode(r[2])
    .. ',"percent":' .. percent(r[3]) .. ',"sticky":' .. cjson.encode(r[4]) .. analysis
    .. segment .. extra .. '}}'
end

-- Make ``version`` (now ``status``) prod, the former prod deprecated; a rollout of this
-- version ends with it. Returns {{seq, status, former prod or "", detail or ""}}.
local function promote_version(version, status)
  local detail = nil
  if running_candidate() == version then
    detail = rollout_detail(',"{lifecycle.ROLLOUT_PROMOTED_DETAIL}":true')
    redis.call('DEL', K_ROLLOUT)
  end
  local previous = redis.call('LINDEX', K_STACK, -1)
  if previous then redis.call('HSET', K_STATUS, previous, 'deprecated') end
  redis.call('HSET', K_STATUS, version, 'prod')
  redis.call('LREM', K_STACK, 0, version)
  redis.call('RPUSH', K_STACK, version)
  local seq = commit('{lifecycle.PROMOTE_ACTION}', version, status, 'prod', previous or nil,
    detail)
  return {{seq, status, previous or '', detail or ''}}
end

local PROMOTE_REFUSED = {_PROMOTE_REFUSED}
"""
)

# KEYS[1] schema, ARGV[1] SCHEMA_VERSION. Records this build's schema on a store at an older
# one (schema 1 had no key, and its keys are schema 2's: nothing else to migrate) or at none
# (a new store); returns the version the store holds now, which the caller refuses if newer.
SCHEMA = """
local found = redis.call('GET', KEYS[1])
if not found or tonumber(found) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""

# KEYS[1] generation, ARGV[1] a new generation. Returns the generation the store has now.
INIT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# ARGV[6] sha256, ARGV[7] the version's JSON without "version" (a non-empty object).
# Returns {created (0|1), version, json, status}.
CREATE = (
    PRELUDE
    + f"""
local n = redis.call('HLEN', K_VERSIONS)
if n > 0 then
  local latest = redis.call('HGET', K_VERSIONS, n)
  if cjson.decode(latest)['sha256'] == ARGV[6] then
    return {{0, n, latest, redis.call('HGET', K_STATUS, n)}}
  end
end
n = n + 1
local body = '{{"version":' .. n .. ',' .. string.sub(ARGV[7], 2)
redis.call('HSET', K_VERSIONS, n, body)
redis.call('HSET', K_STATUS, n, 'draft')
redis.call('SADD', K_KEYS, PKEY)
commit('{lifecycle.CREATE_ACTION}', n, nil, 'draft', nil, nil)
return {{1, n, body, 'draft'}}
"""
)

# ARGV[6] version. Returns what promote_version does.
PROMOTE = (
    PRELUDE
    + f"""
local DURING_ROLLOUT = {_PROMOTE_DURING_ROLLOUT}
local version = ARGV[6]
local status, err = require_version(version)
if err then return err end
if PROMOTE_REFUSED[status] then return refuse(PROMOTE_REFUSED[status](version)) end
local running = running_candidate()
if running and running ~= version then return refuse(DURING_ROLLOUT(version, running)) end
return promote_version(version, status)
"""
)

# Returns {seq, target, target's former status, former prod}.
ROLLBACK = (
    PRELUDE
    + f"""
local NO_PROD, NO_FORMER = {_NO_PROD}, {_NO_FORMER_PROD}
local err = require_key()
if err then return err end
local current = redis.call('LINDEX', K_STACK, -1)
if not current then return refuse(NO_PROD()) end
local target = redis.call('LINDEX', K_STACK, -2)
if not target then return refuse(NO_FORMER(current)) end
local target_status = redis.call('HGET', K_STATUS, target)
redis.call('RPOP', K_STACK)
redis.call('HSET', K_STATUS, current, 'deprecated')
redis.call('HSET', K_STATUS, target, 'prod')
local seq = commit('{lifecycle.ROLLBACK_ACTION}', target, target_status, 'prod', current, nil)
return {{seq, target, target_status, current}}
"""
)

# ARGV[6] version, ARGV[7] target status. Returns {seq, from_status}.
SET_STATUS = (
    PRELUDE
    + f"""
local REFUSED = {_SET_STATUS_REFUSED}
local DURING_ROLLOUT = {_SET_STATUS_DURING_ROLLOUT}
local version, target = ARGV[6], ARGV[7]
local status, err = require_version(version)
if err then return err end
local refused = REFUSED[status][target]
if refused then return refuse(refused(version)) end
if running_candidate() == version then return refuse(DURING_ROLLOUT(version)) end
redis.call('HSET', K_STATUS, version, target)
local seq = commit('{lifecycle.SET_STATUS_ACTION}', version, status, target, nil, nil)
return {{seq, status}}
"""
)


# Put a staged restore in place, all or nothing. KEYS[1] generation, KEYS[2] revision,
# KEYS[3] audit_seq, KEYS[4] last_restore, then ARGV[8] keys to delete, ARGV[9] (staged, live)
# pairs to rename, ARGV[10] (staged, live) stream pairs whose entries are appended to the
# live stream (an audit log the restore keeps). ARGV[1] generation expected ('' for none),
# ARGV[2] revision expected (the store's when the restore read it: any write since bumps
# it), ARGV[3] the generation to write, ARGV[4] the new revision, ARGV[5] the last audit
# seq, ARGV[6] channel, ARGV[7] the restore's id.
# Every check (and every staged key's presence) comes before the first write.
RESTORE_FLIP = f"""
local found = redis.call('GET', KEYS[1]) or ''
local revision = redis.call('GET', KEYS[2]) or '0'
if found ~= ARGV[1] or tonumber(revision) ~= tonumber(ARGV[2]) then
  return redis.error_reply('{INVALID_TRANSITION} the store changed while restoring: '
    .. 'look again before restoring')
end
local n_delete, n_rename, n_append = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local first_rename = 5 + n_delete
local first_append = first_rename + 2 * n_rename
for i = first_rename, first_append + 2 * n_append - 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    return redis.error_reply('{INVALID_TRANSITION} the staged restore expired before it '
      .. 'was put in place: restore again')
  end
end
-- An XADD refused half-way would leave the rest undone: every appended entry must follow
-- the live stream's newest one.
local function seq_of(entry_id)
  return tonumber((string.gsub(entry_id, '-.*', '')))
end
for i = first_append, first_append + 2 * n_append - 1, 2 do
  local first = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)[1][1]
  local newest = redis.call('XREVRANGE', KEYS[i + 1], '+', '-', 'COUNT', 1)[1]
  if newest and seq_of(newest[1]) >= seq_of(first) then
    return redis.error_reply('{INVALID_TRANSITION} the store changed while restoring: '
      .. 'look again before restoring')
  end
end
for i = 5, first_rename - 1 do redis.call('DEL', KEYS[i]) end
for i = first_rename, first_append - 1, 2 do
  redis.call('RENAME', KEYS[i], KEYS[i + 1])
  redis.call('PERSIST', KEYS[i + 1])
end
for i = first_append, first_append + 2 * n_append - 1, 2 do
  for _, entry in ipairs(redis.call('XRANGE', KEYS[i], '-', '+')) do
    redis.call('XADD', KEYS[i + 1], entry[1], unpack(entry[2]))
  end
  redis.call('DEL', KEYS[i])
end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[6], ARGV[4])
return ARGV[4]
"""


# -- decoding what the keys hold ------------------------------------------------------------


def text(value: bytes | str) -> str:
    # The client decodes responses, but redis-py types every reply as bytes | str.
    return value.decode() if isinstance(value, bytes) else value


def decode_version(body: bytes | str, status: bytes | str) -> PromptVersion:
    data: dict[str, Any] = orjson.loads(body)
    data["status"] = text(status)
    return PromptVersion.from_dict(data)


def decode_versions(bodies: dict[Any, Any], statuses: dict[Any, Any]) -> dict[int, PromptVersion]:
    numbered = sorted((int(n), body, statuses[n]) for n, body in bodies.items())
    return {n: decode_version(body, status) for n, body, status in numbered}


def decode_rollout(key: PromptKey, fields: dict[Any, Any]) -> Rollout | None:
    """The ``rollout:<key>`` hash (HGETALL: empty when no rollout runs)."""
    if not fields:
        return None
    data: dict[str, Any] = {"slug": key.text, **{text(k): text(v) for k, v in fields.items()}}
    # Absent means none. ``segment`` came after schema 2 without a version bump: a hash
    # written before it lacks the field and was a rollout reaching everyone, as it reads.
    for name in ("analysis", "segment"):
        if name in data:
            data[name] = orjson.loads(data[name])
    return Rollout.from_dict(data)


def decode_tenants(bodies: dict[Any, Any]) -> dict[str, Tenant]:
    """The ``tenants`` hash (HGETALL: empty when there are none), by id."""
    records = (Tenant.from_dict(orjson.loads(body)) for body in bodies.values())
    return {tenant.id: tenant for tenant in sorted(records, key=lambda t: t.id)}


def decode_detail(raw: bytes | str | None) -> dict[str, Any] | None:
    return orjson.loads(raw) if raw else None


def encode_audit(entry: AuditEntry) -> dict[str, str]:
    """The stream fields of an entry, as the Lua ``commit`` writes them ("" for None)."""

    def opt(value: object) -> str:
        return "" if value is None else str(value)

    return {
        "at": repr(float(entry.at)),
        "actor": entry.actor,
        "action": entry.action,
        "slug": entry.key.text,
        "version": opt(entry.version),
        "from_status": "" if entry.from_status is None else entry.from_status.value,
        "to_status": "" if entry.to_status is None else entry.to_status.value,
        "reason": entry.reason,
        "previous_prod": opt(entry.previous_prod),
        "detail": "" if entry.detail is None else orjson.dumps(dict(entry.detail)).decode(),
    }


def decode_audit(entry_id: bytes | str, raw: dict[Any, Any]) -> AuditEntry:
    fields = {text(k): text(v) for k, v in raw.items()}

    def number(name: str) -> int | None:
        return int(fields[name]) if fields.get(name) else None

    def status(name: str) -> Status | None:
        return Status(fields[name]) if fields.get(name) else None

    return AuditEntry(
        seq=int(text(entry_id).split("-", 1)[0]),
        at=float(fields["at"]),
        actor=fields["actor"],
        action=fields["action"],
        key=PromptKey.parse(fields["slug"]),
        version=number("version"),
        from_status=status("from_status"),
        to_status=status("to_status"),
        reason=fields.get("reason", ""),
        previous_prod=number("previous_prod"),
        detail=decode_detail(fields.get("detail")),
    )
