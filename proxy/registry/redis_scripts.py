"""Key schema, stored formats (and their decoding) and Lua scripts of the Redis store.

Key schema (P = prefix, default ``promptproxy:``; ``{registry}`` is a hash tag, so a Redis
Cluster keeps every key in one slot and the scripts may touch them all):

=================================  ======  ===============================================
``P{registry}:revision``           string  change counter, INCR'd by every write
``P{registry}:changes``            channel every write PUBLISHes the new revision here
``P{registry}:slugs``              set     every slug that has at least one version
``P{registry}:versions:<slug>``    hash    version number -> JSON (immutable: written once,
                                           with ``version``; without ``status``)
``P{registry}:status:<slug>``      hash    version number -> status
``P{registry}:prod_stack:<slug>``  list    rollback history, top (right end) = current
                                           prod; see ``lifecycle.prod_stack``
``P{registry}:audit_seq``          string  last audit ``seq`` (INCR)
``P{registry}:audit``              stream  every audit entry, entry id ``<seq>-0``
``P{registry}:audit:<slug>``       stream  the same entries for one slug (for paging by slug)
=================================  ======  ===============================================

Versions are numbered 1..n without gaps, so ``HLEN versions:<slug>`` is the latest number.
Audit stream fields: at actor action slug version from_status to_status reason
previous_prod, with "" for None.

Each script checks everything before its first write: Redis runs a script atomically but
does not undo the writes it made before an error. Errors the caller must map to store
exceptions are returned as ``PROMPT_NOT_FOUND|VERSION_NOT_FOUND|INVALID_TRANSITION <msg>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from proxy.registry.lifecycle import SET_STATUS_MOVES
from proxy.registry.models import AuditEntry, PromptVersion, Status

PROMPT_NOT_FOUND = "PROMPT_NOT_FOUND"
VERSION_NOT_FOUND = "VERSION_NOT_FOUND"
INVALID_TRANSITION = "INVALID_TRANSITION"


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
    def channel(self) -> str:
        return self._key("changes")

    @property
    def slugs(self) -> str:
        return self._key("slugs")

    @property
    def audit_seq(self) -> str:
        return self._key("audit_seq")

    @property
    def audit(self) -> str:
        return self._key("audit")

    def slug_audit(self, slug: str) -> str:
        return self._key("audit", slug)

    def versions(self, slug: str) -> str:
        return self._key("versions", slug)

    def status(self, slug: str) -> str:
        return self._key("status", slug)

    def prod_stack(self, slug: str) -> str:
        return self._key("prod_stack", slug)

    def for_write(self, slug: str) -> list[str]:
        """KEYS of every write script, in the order the Lua prelude expects."""
        return [
            self.revision,
            self.audit_seq,
            self.audit,
            self.slug_audit(slug),
            self.versions(slug),
            self.status(slug),
            self.prod_stack(slug),
            self.slugs,
        ]


# KEYS: see RedisKeys.for_write. ARGV[1] channel, ARGV[2] slug, ARGV[3] actor, ARGV[4] reason,
# ARGV[5] at (a float's repr, kept as text so Lua's number formatting cannot round it).
_PRELUDE = f"""
local K_REV, K_SEQ, K_AUDIT, K_SLUG_AUDIT = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_VERSIONS, K_STATUS, K_STACK, K_SLUGS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local CHANNEL, SLUG, ACTOR, REASON, AT = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function fail(code, msg)
  return redis.error_reply(code .. ' ' .. msg)
end

-- Append one audit entry, bump and publish the revision; returns the entry's seq.
local function commit(action, version, from_status, to_status, previous_prod)
  local seq = redis.call('INCR', K_SEQ)
  local fields = {{'at', AT, 'actor', ACTOR, 'action', action, 'slug', SLUG,
    'version', version, 'from_status', from_status or '', 'to_status', to_status or '',
    'reason', REASON, 'previous_prod', previous_prod or ''}}
  local id = seq .. '-0'
  redis.call('XADD', K_AUDIT, id, unpack(fields))
  redis.call('XADD', K_SLUG_AUDIT, id, unpack(fields))
  local rev = redis.call('INCR', K_REV)
  redis.call('PUBLISH', CHANNEL, rev)
  return seq
end

local function require_version(version)
  if redis.call('EXISTS', K_VERSIONS) == 0 then
    return nil, fail('{PROMPT_NOT_FOUND}', 'no prompt ' .. SLUG)
  end
  local status = redis.call('HGET', K_STATUS, version)
  if not status then
    return nil, fail('{VERSION_NOT_FOUND}', SLUG .. ' has no version ' .. version)
  end
  return status
end
"""

# ARGV[6] sha256, ARGV[7] the version's JSON without "version" (a non-empty object).
# Returns {created (0|1), version, json, status}.
CREATE = (
    _PRELUDE
    + """
local n = redis.call('HLEN', K_VERSIONS)
if n > 0 then
  local latest = redis.call('HGET', K_VERSIONS, n)
  if cjson.decode(latest)['sha256'] == ARGV[6] then
    return {0, n, latest, redis.call('HGET', K_STATUS, n)}
  end
end
n = n + 1
local body = '{"version":' .. n .. ',' .. string.sub(ARGV[7], 2)
redis.call('HSET', K_VERSIONS, n, body)
redis.call('HSET', K_STATUS, n, 'draft')
redis.call('SADD', K_SLUGS, SLUG)
commit('create', n, nil, 'draft', nil)
return {1, n, body, 'draft'}
"""
)

# ARGV[6] version. Returns {seq, from_status, previous_prod or ""}.
PROMOTE = (
    _PRELUDE
    + f"""
local version = ARGV[6]
local status, err = require_version(version)
if err then return err end
if status == 'prod' then
  return fail('{INVALID_TRANSITION}', SLUG .. ' v' .. version .. ' is already prod')
end
local previous = redis.call('LINDEX', K_STACK, -1)
if previous then redis.call('HSET', K_STATUS, previous, 'deprecated') end
redis.call('HSET', K_STATUS, version, 'prod')
redis.call('LREM', K_STACK, 0, version)
redis.call('RPUSH', K_STACK, version)
local seq = commit('promote', version, status, 'prod', previous or nil)
return {{seq, status, previous or ''}}
"""
)

# Returns {seq, target, target's former status, former prod}.
ROLLBACK = (
    _PRELUDE
    + f"""
if redis.call('EXISTS', K_VERSIONS) == 0 then
  return fail('{PROMPT_NOT_FOUND}', 'no prompt ' .. SLUG)
end
local current = redis.call('LINDEX', K_STACK, -1)
if not current then
  return fail('{INVALID_TRANSITION}', SLUG .. ' has no prod version to roll back')
end
local target = redis.call('LINDEX', K_STACK, -2)
if not target then
  return fail('{INVALID_TRANSITION}',
    SLUG .. ' v' .. current .. ' is prod and there is no former prod')
end
local target_status = redis.call('HGET', K_STATUS, target)
redis.call('RPOP', K_STACK)
redis.call('HSET', K_STATUS, current, 'deprecated')
redis.call('HSET', K_STATUS, target, 'prod')
local seq = commit('rollback', target, target_status, 'prod', current)
return {{seq, target, target_status, current}}
"""
)


def _lua_moves() -> str:
    rows = [
        f"['{src.value}'] = {{" + ", ".join(f"['{dst.value}'] = true" for dst in dsts) + "}"
        for src, dsts in SET_STATUS_MOVES.items()
    ]
    return "{" + ", ".join(rows) + "}"


# ARGV[6] version, ARGV[7] target status. Mirrors lifecycle.check_set_status.
# Returns {seq, from_status}.
SET_STATUS = (
    _PRELUDE
    + f"""
local MOVES = {_lua_moves()}
local version, target = ARGV[6], ARGV[7]
local status, err = require_version(version)
if err then return err end
local where = SLUG .. ' v' .. version
if target == 'prod' then
  return fail('{INVALID_TRANSITION}', where .. ': use promote to make a version prod')
end
if status == 'prod' then
  return fail('{INVALID_TRANSITION}',
    where .. ' is prod: use promote (another version) or rollback to replace it')
end
if not MOVES[status][target] then
  return fail('{INVALID_TRANSITION}', where .. ': ' .. status .. ' -> ' .. target .. ' not allowed')
end
redis.call('HSET', K_STATUS, version, target)
local seq = commit('set_status', version, status, target, nil)
return {{seq, status}}
"""
)


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
        slug=fields["slug"],
        version=number("version"),
        from_status=status("from_status"),
        to_status=status("to_status"),
        reason=fields.get("reason", ""),
        previous_prod=number("previous_prod"),
    )
