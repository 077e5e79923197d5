"""What the analyser remembers about a rollout between verdicts, shared by the replicas.

The state (failures so far, when the current percentage began, when the next verdict is
due) and the last verdicts, per prompt key, live in Redis next to the lease (their names
hold the key's text), so a replica taking over the lease carries on where the previous
holder stopped: the failure count is not reset by a crash, and ``rollout status`` shows the
same verdicts on every replica.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from proxy.prompt_key import PromptKey

if TYPE_CHECKING:  # redis is imported only when a Redis store is configured
    from redis.asyncio import Redis

#: Verdicts kept per rollout, newest first.
MAX_VERDICTS = 20
#: State outlives its rollout for a week, so a late look still finds the verdicts.
_TTL_SECONDS = 7 * 86_400


@dataclass(slots=True)
class AnalysisState:
    rollout_id: str
    #: Failed verdicts so far in this rollout.
    failures: int
    #: When the current percentage began: windows never reach back before it.
    step_started_at: float
    #: When the next verdict is due (unix seconds).
    next_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisState:
        return cls(
            rollout_id=str(data["rollout_id"]),
            failures=int(data["failures"]),
            step_started_at=float(data["step_started_at"]),
            next_at=float(data["next_at"]),
        )


class StateStore(Protocol):
    async def load(self, key: PromptKey) -> tuple[AnalysisState | None, list[dict[str, Any]]]:
        """The key's state and its last verdicts (newest first)."""
        ...

    async def save(
        self, key: PromptKey, state: AnalysisState, verdict: dict[str, Any] | None = None
    ) -> None:
        """Store the state and, in the same step, prepend a verdict. A state for another
        rollout than the stored one starts a fresh verdict list."""
        ...


class MemoryStateStore:
    def __init__(self) -> None:
        self._states: dict[PromptKey, AnalysisState] = {}
        self._verdicts: dict[PromptKey, list[dict[str, Any]]] = {}

    async def load(self, key: PromptKey) -> tuple[AnalysisState | None, list[dict[str, Any]]]:
        state = self._states.get(key)
        return state, list(self._verdicts.get(key, ()))

    async def save(
        self, key: PromptKey, state: AnalysisState, verdict: dict[str, Any] | None = None
    ) -> None:
        old = self._states.get(key)
        if old is None or old.rollout_id != state.rollout_id:
            self._verdicts[key] = []
        self._states[key] = state
        if verdict is not None:
            self._verdicts[key] = [verdict, *self._verdicts[key]][:MAX_VERDICTS]


class RedisStateStore:
    def __init__(self, client: Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix + "{analysis}:"

    def _keys(self, key: PromptKey) -> tuple[str, str]:
        return f"{self._prefix}state:{key.text}", f"{self._prefix}verdicts:{key.text}"

    async def load(self, key: PromptKey) -> tuple[AnalysisState | None, list[dict[str, Any]]]:
        state_key, verdicts_key = self._keys(key)
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(state_key)
        pipe.lrange(verdicts_key, 0, MAX_VERDICTS - 1)
        raw_state, raw_verdicts = await pipe.execute()
        state = None if raw_state is None else AnalysisState.from_dict(orjson.loads(raw_state))
        verdicts = [orjson.loads(v) for v in raw_verdicts]
        if state is not None:
            verdicts = [v for v in verdicts if v.get("rollout_id") == state.rollout_id]
        return state, verdicts

    async def save(
        self, key: PromptKey, state: AnalysisState, verdict: dict[str, Any] | None = None
    ) -> None:
        state_key, verdicts_key = self._keys(key)
        old = await self._redis.get(state_key)
        fresh = old is None or orjson.loads(old).get("rollout_id") != state.rollout_id
        pipe = self._redis.pipeline(transaction=True)
        if fresh:
            pipe.delete(verdicts_key)
        pipe.set(state_key, orjson.dumps(state.to_dict()), ex=_TTL_SECONDS)
        if verdict is not None:
            pipe.lpush(verdicts_key, orjson.dumps(verdict))
            pipe.ltrim(verdicts_key, 0, MAX_VERDICTS - 1)
            pipe.expire(verdicts_key, _TTL_SECONDS)
        await pipe.execute()
