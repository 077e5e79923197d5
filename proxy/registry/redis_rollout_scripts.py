"""Lua scripts for rollouts (``RedisStore.start_rollout`` and friends).

Same conventions as ``redis_scripts``: the shared prelude (keys, ``commit``, the rollout
helpers), every check before the first write, refusals generated from ``lifecycle``. A
rollout lives in ``P{registry}:rollout:<key>``; every script here returns the audit seq,
and the detail JSON it audited, so the caller returns exactly what ``audit`` reads back.
"""

from __future__ import annotations

from functools import partial

from proxy.registry import lifecycle
from proxy.registry.redis_lua_rules import A_ID, B_ID, KEY, A, B, lua_refusal, lua_status_refusals
from proxy.registry.redis_scripts import PRELUDE

_ALREADY_RUNNING = lua_refusal(partial(lifecycle.check_no_rollout, KEY, B))
_NOT_A_CANDIDATE = lua_status_refusals(partial(lifecycle.check_rollout_candidate, KEY, A))
_NONE_RUNNING = lua_refusal(partial(lifecycle.check_rollout_running, KEY, None))
_OTHER_RUNNING = lua_refusal(partial(lifecycle.check_rollout_running, KEY, B_ID, A_ID))

# Shared by the scripts that need a running rollout: returns its candidate, or an error.
_REQUIRE_ROLLOUT = f"""
local NONE_RUNNING = {_NONE_RUNNING}
local function require_rollout()
  local err = require_key()
  if err then return nil, err end
  local candidate = running_candidate()
  if not candidate then return nil, refuse(NONE_RUNNING()) end
  return candidate
end
"""

# ARGV[6] rollout id, ARGV[7] candidate, ARGV[8] mode, ARGV[9] basis points, ARGV[10] sticky,
# ARGV[11] the analysis policy's JSON or "" for none, ARGV[12] the segment's JSON or "" for
# none (the JSON is stored as it came: cjson would turn an empty list into an object).
# Returns {seq, the candidate's former status, detail}.
START = (
    PRELUDE
    + f"""
local ALREADY_RUNNING = {_ALREADY_RUNNING}
local NOT_A_CANDIDATE = {_NOT_A_CANDIDATE}
local id, version, mode, basis_points, sticky = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local analysis, segment = ARGV[11], ARGV[12]
local status, err = require_version(version)
if err then return err end
local running = running_candidate()
if running then return refuse(ALREADY_RUNNING(version, running)) end
if NOT_A_CANDIDATE[status] then return refuse(NOT_A_CANDIDATE[status](version)) end
redis.call('HSET', K_ROLLOUT, 'id', id, 'candidate', version, 'mode', mode,
  'basis_points', basis_points, 'sticky', sticky, 'started_at', AT, 'updated_at', AT,
  'actor', ACTOR, 'restore_status', status)
if analysis ~= '' then redis.call('HSET', K_ROLLOUT, 'analysis', analysis) end
if segment ~= '' then redis.call('HSET', K_ROLLOUT, 'segment', segment) end
redis.call('HSET', K_STATUS, version, 'candidate')
local detail = rollout_detail('')
local seq = commit('{lifecycle.ROLLOUT_START_ACTION}', version, status, 'candidate', nil, detail)
return {{seq, status, detail}}
"""
)

# ARGV[6] rollout id, ARGV[7] new basis points.
# Returns {seq, detail, the rollout's hash as a flat field/value list}.
UPDATE = (
    PRELUDE
    + _REQUIRE_ROLLOUT
    + f"""
local OTHER_RUNNING = {_OTHER_RUNNING}
local id, basis_points = ARGV[6], ARGV[7]
local candidate, err = require_rollout()
if err then return err end
local running = redis.call('HGET', K_ROLLOUT, 'id')
if running ~= id then return refuse(OTHER_RUNNING(id, running)) end
local from = percent(redis.call('HGET', K_ROLLOUT, 'basis_points'))
redis.call('HSET', K_ROLLOUT, 'basis_points', basis_points, 'updated_at', AT)
local detail = rollout_detail(',"from_percent":' .. from)
local seq = commit('{lifecycle.ROLLOUT_UPDATE_ACTION}', candidate, nil, nil, nil, detail)
return {{seq, detail, redis.call('HGETALL', K_ROLLOUT)}}
"""
)

# Returns {seq, candidate, its status before, its status after, detail}.
ABORT = (
    PRELUDE
    + _REQUIRE_ROLLOUT
    + f"""
local candidate, err = require_rollout()
if err then return err end
local status = redis.call('HGET', K_STATUS, candidate)
local restored = status
if status == 'candidate' then
  restored = redis.call('HGET', K_ROLLOUT, 'restore_status')
  redis.call('HSET', K_STATUS, candidate, restored)
end
local detail = rollout_detail('')
redis.call('DEL', K_ROLLOUT)
local seq = commit('{lifecycle.ROLLOUT_ABORT_ACTION}', candidate, status, restored, nil, detail)
return {{seq, candidate, status, restored, detail}}
"""
)

# Returns {candidate, then what promote_version returns}.
PROMOTE = (
    PRELUDE
    + _REQUIRE_ROLLOUT
    + """
local candidate, err = require_rollout()
if err then return err end
local status = redis.call('HGET', K_STATUS, candidate)
if PROMOTE_REFUSED[status] then return refuse(PROMOTE_REFUSED[status](candidate)) end
local promoted = promote_version(candidate, status)
return {candidate, unpack(promoted)}
"""
)
