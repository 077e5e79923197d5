"""Lua scripts for tenant records (``RedisStore.put_tenant`` and ``delete_tenant``).

Same conventions as ``redis_scripts``: the shared write core (the identity check, and
``commit``: the audit entry with its seq, the revision bump, the change notification), then
every check before the first write. A record is ``P{registry}:tenants`` [id] (its JSON, as
``Tenant.to_dict`` wrote it in Python: never re-encoded here, so ``updated_at`` keeps every
digit), and each of its API key hashes is ``P{registry}:tenant_keys`` [hash] = id: the check
that no other tenant holds a key and the writes are one script, so two replicas racing for
one key cannot both take it. The audit entry is filed under ``tenant_audit_key`` and the
tenant's id added to ``P{registry}:tenant_audits``, which names every such stream for a
restore. Both scripts return the audit seq and the detail JSON they audited (the detail is
``tenant_audit_detail``'s, written by hand: the contract tests compare the two).
"""

from __future__ import annotations

from proxy.registry.models import TENANT_DELETE_ACTION, TENANT_SET_ACTION
from proxy.registry.redis_scripts import TENANT_NOT_FOUND, WRITE_CORE

# KEYS: see RedisKeys.for_tenant_write.
_TENANT_PRELUDE = (
    """
local K_REV, K_SEQ, K_AUDIT, K_KEY_AUDIT = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_TENANTS, K_TENANT_KEYS, K_TENANT_AUDITS = KEYS[5], KEYS[6], KEYS[7]
local K_GENERATION = KEYS[8]
"""
    + WRITE_CORE
    + """
-- tenant_audit_detail as JSON: tiers (nil: none) and how many keys, never a key hash.
local function tenant_detail(tier, from_tier, api_keys)
  local function opt(value)
    if value then return cjson.encode(value) end
    return 'null'
  end
  return '{"tier":' .. opt(tier) .. ',"from_tier":' .. opt(from_tier)
    .. ',"api_keys":' .. api_keys .. '}'
end

-- Take the tenant's keys out of tenant_keys (those that still name it).
local function release_keys(id, record)
  for _, digest in ipairs(record['key_hashes'] or {}) do
    if redis.call('HGET', K_TENANT_KEYS, digest) == id then
      redis.call('HDEL', K_TENANT_KEYS, digest)
    end
  end
end
"""
)

# ARGV[6] tenant id, ARGV[7] tier, ARGV[8] the record's JSON (updated_at = at), then its key
# hashes, sorted. Returns {seq, detail}, or {0, the stored JSON} when the stored record
# already has this tier and these keys (nothing written).
PUT = (
    _TENANT_PRELUDE
    + f"""
local id, tier, body = ARGV[6], ARGV[7], ARGV[8]
local digests = {{}}
for i = 9, #ARGV - 2 do digests[#digests + 1] = ARGV[i] end
local old_body = redis.call('HGET', K_TENANTS, id)
local old = nil
if old_body then old = cjson.decode(old_body) end
if old and old['tier'] == tier then
  local held = {{}}
  for _, digest in ipairs(old['key_hashes'] or {{}}) do held[#held + 1] = digest end
  table.sort(held)
  local same = #held == #digests
  for i = 1, #held do
    if held[i] ~= digests[i] then same = false end
  end
  if same then return {{0, old_body}} end
end
for _, digest in ipairs(digests) do
  local holder = redis.call('HGET', K_TENANT_KEYS, digest)
  if holder and holder ~= id then
    return refuse("an API key given for tenant '" .. id .. "' already names tenant '"
      .. holder .. "'")
  end
end
if old then release_keys(id, old) end
for _, digest in ipairs(digests) do redis.call('HSET', K_TENANT_KEYS, digest, id) end
redis.call('HSET', K_TENANTS, id, body)
redis.call('SADD', K_TENANT_AUDITS, id)
local detail = tenant_detail(tier, old and old['tier'] or nil, #digests)
local seq = commit('{TENANT_SET_ACTION}', '', nil, nil, nil, detail)
return {{seq, detail}}
"""
)

# ARGV[6] tenant id. Returns {seq, detail}.
DELETE = (
    _TENANT_PRELUDE
    + f"""
local id = ARGV[6]
local old_body = redis.call('HGET', K_TENANTS, id)
if not old_body then return fail('{TENANT_NOT_FOUND}', "no tenant '" .. id .. "'") end
local old = cjson.decode(old_body)
release_keys(id, old)
redis.call('HDEL', K_TENANTS, id)
redis.call('SADD', K_TENANT_AUDITS, id)
local detail = tenant_detail(nil, old['tier'], 0)
local seq = commit('{TENANT_DELETE_ACTION}', '', nil, nil, nil, detail)
return {{seq, detail}}
"""
)
