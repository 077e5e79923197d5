"""The rollout analyser: every replica runs one; for each rollout, only the lease holder acts.

Each replica:

- flushes its ``WindowRecorder`` into the pool every ``analysis.flush_seconds``;
- every tick, for each running rollout with an analysis policy, takes or renews its prompt
  key's lease. The holder, when a verdict is due, reads the pooled window (all replicas'
  counts), judges the candidate arm against stable, as a whole and per tier, stores the
  verdict, and acts:

  - ``fail``: the failure count goes up; past ``failure_limit`` the rollout is aborted (all
    traffic back to stable), audited with the numbers that failed;
  - ``pass`` with steps: ramp to the next step above the current percentage, or promote
    when none is left;
  - ``inconclusive`` (too few samples, or a check without data): hold.

The registry is changed through ``RegistryService`` like an operator would, so the change
reaches every replica through the usual snapshot path and lands in the audit log with the
actor ``analyser:<replica>``. Nothing here runs on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from proxy.analysis.judge import Judgement, judge_tiers, without_stable
from proxy.analysis.lease import Lease
from proxy.analysis.pool import StatsPool
from proxy.analysis.series import SERIES_SECONDS
from proxy.analysis.state import AnalysisState, StateStore
from proxy.analysis.window import WindowArm, WindowRecorder
from proxy.config import AnalysisConfig
from proxy.errors import ProxyError
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.prompt_key import PromptKey
from proxy.registry.analysis_policy import AnalysisPolicy
from proxy.registry.models import RegistrySnapshot, Rollout, RolloutMode
from proxy.registry.percent import BASIS_POINTS
from proxy.registry.service import RegistryService
from proxy.tasks import BackgroundTasks

_log = logging.getLogger(APP_LOGGER)

#: How often leases are renewed and due verdicts looked for.
TICK_SECONDS = 0.5
#: With no rollout carrying a policy, a failed flush keeps a minute for the next try.
_DEFAULT_VERDICT_SECONDS = 60.0
#: Store errors tolerated in a row before the analyser logs at error level (it keeps going).
_QUIET_ERRORS = 3


def replica_id() -> str:
    """Unique per process: host, pid and a random suffix (pids repeat across containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _candidate_arm(rollout: Rollout) -> str:
    # Plain str, never the enum: orjson refuses str subclasses as dict keys.
    return WindowArm.SHADOW.value if rollout.mode is RolloutMode.SHADOW else WindowArm.CANARY.value


class Analyser:
    def __init__(
        self,
        *,
        config: AnalysisConfig,
        snapshot: Callable[[], RegistrySnapshot],
        registry: RegistryService,
        recorder: WindowRecorder,
        pool: StatsPool,
        lease: Lease,
        state: StateStore,
        metrics: ProxyMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._snapshot = snapshot
        self._registry = registry
        self.recorder = recorder
        self._pool = pool
        self._lease = lease
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._leading: set[PromptKey] = set()
        #: The state of the rollouts this replica analyses, as it last saved it: only the
        #: lease holder writes it, so while the lease is held, a tick needs no read.
        self._states: dict[PromptKey, AnalysisState] = {}
        self._errors = 0
        self._tasks = BackgroundTasks()

    def start(self) -> None:
        self._tasks.spawn(self.run(), name="rollout-analyser")
        self._tasks.spawn(self.run_flusher(), name="analysis-flusher")

    @property
    def actor(self) -> str:
        return f"analyser:{self._lease.replica}"

    # -- background loops -----------------------------------------------------------------

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self._config.flush_seconds)
            await self.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                await self.tick()
            except Exception:
                # A store hiccup or a bug must not end analysis for good on this replica.
                _log.exception("rollout analysis tick failed")

    async def flush(self) -> None:
        batches = self.recorder.drain()
        if not batches:
            return
        keep = self._keep_seconds()
        try:
            await self._pool.add(batches, keep)
        except Exception as exc:
            self._metrics.redis_errors.labels("stats_flush").inc()
            _log.warning("analysis statistics not flushed (kept for the next try): %s", exc)
            # Only what a verdict still needs waits for the store: the charts' older
            # seconds are not worth holding this replica's memory through an outage.
            oldest = int(self._clock() - self._verdict_seconds())
            self.recorder.restore(batches, oldest)

    def _verdict_seconds(self) -> float:
        intervals = [
            r.analysis.interval
            for r in self._snapshot().rollouts.values()
            if r.analysis is not None
        ]
        return max(intervals, default=_DEFAULT_VERDICT_SECONDS)

    def _keep_seconds(self) -> float:
        """How long the pool keeps the slots: for the longest verdict window, and for the
        console's charts (the series route), which read the last 15 minutes of every
        rollout, with a policy or without."""
        return max(float(SERIES_SECONDS), self._verdict_seconds())

    async def close(self) -> None:
        """Stop the loops, flush a last time, then give the leases up so another replica
        takes over at once."""
        await self._tasks.close()
        await self.flush()
        for key in list(self._leading):
            with contextlib.suppress(Exception):
                await self._lease.release(key)
            self._metrics.analysis_leader.labels(key.slug).set(0)
        self._leading.clear()

    def _publish_leading(self, slug: str, running: bool) -> None:
        """The leader gauge of ``slug``: how many of its analysed rollouts this replica
        leads (a slug's base, variants and overrides each have their own lease); gone once
        none of them runs, so `sum by (slug)` of it is 0 only while nobody leads one."""
        led = sum(1 for key in self._leading if key.slug == slug)
        if led or running:
            self._metrics.analysis_leader.labels(slug).set(led)
        else:
            with contextlib.suppress(KeyError):
                self._metrics.analysis_leader.remove(slug)

    # -- one tick -------------------------------------------------------------------------

    async def tick(self) -> None:
        rollouts = {
            key: r for key, r in self._snapshot().rollouts.items() if r.analysis is not None
        }
        running = {key.slug for key in rollouts}
        for key in list(self._leading - rollouts.keys()):
            self._leading.discard(key)
            # The rollout ended: its series goes with the slug's last, so `sum by (slug)` of
            # it means "running".
            self._publish_leading(key.slug, key.slug in running)
            with contextlib.suppress(Exception):
                await self._lease.release(key)
        self._pool.forget({(key, r.id) for key, r in self._snapshot().rollouts.items()})
        errors_before = self._errors
        for key, rollout in rollouts.items():
            try:
                held = await self._lease.hold(key)
            except Exception as exc:
                self._store_error("lease", exc)
                held = False
            self._set_leading(key, held)
            if held:
                try:
                    await self._analyse(rollout)
                except ProxyError as exc:
                    # The rollout changed under us (an operator aborted or promoted it).
                    _log.info("analysis of %s skipped: %s", key, exc)
                except Exception as exc:
                    # What was not saved must not be acted on later: read it back next time.
                    self._states.pop(key, None)
                    self._store_error("analysis_state", exc)
        if self._errors == errors_before:
            self._errors = 0  # a clean tick ends a run of errors

    def _set_leading(self, key: PromptKey, held: bool) -> None:
        if held and key not in self._leading:
            self._leading.add(key)
            _log.info("analysing rollouts of %s (lease taken by %s)", key, self._lease.replica)
        elif not held:
            self._leading.discard(key)
            self._states.pop(key, None)  # another replica may change it now
        self._publish_leading(key.slug, running=True)

    def _store_error(self, op: str, exc: Exception) -> None:
        self._metrics.redis_errors.labels(op).inc()
        self._errors += 1
        level = logging.ERROR if self._errors > _QUIET_ERRORS else logging.WARNING
        _log.log(level, "rollout analysis: %s failed: %s", op, exc)

    def _settle(self) -> float:
        """Counts of the last seconds may still sit in other replicas' recorders."""
        return self._config.flush_seconds + 1.0

    async def _analyse(self, rollout: Rollout) -> None:
        policy = rollout.analysis
        assert policy is not None
        now = self._clock()
        state = self._states.get(rollout.key)
        if state is None or state.rollout_id != rollout.id:
            state, _ = await self._state.load(rollout.key)
        if state is None or state.rollout_id != rollout.id:
            state = AnalysisState(
                rollout_id=rollout.id,
                failures=0,
                step_started_at=rollout.updated_at,
                next_at=rollout.updated_at + policy.interval + self._settle(),
            )
            await self._state.save(rollout.key, state)
        self._states[rollout.key] = state
        if rollout.updated_at > state.step_started_at:
            # The percentage changed (an operator, or our own ramp): judge the new share on
            # its own traffic.
            state.step_started_at = rollout.updated_at
            state.next_at = max(state.next_at, rollout.updated_at + policy.interval)
            await self._state.save(rollout.key, state)
        if now < state.next_at:
            return
        end = now - self._settle()
        start = max(end - policy.interval, state.step_started_at)
        window = await self._pool.read(rollout.key, rollout.id, start, end)
        divergence = (
            (window.noise, window.candidate) if rollout.mode is RolloutMode.SHADOW else None
        )
        if rollout.mode is RolloutMode.CANARY and rollout.basis_points >= BASIS_POINTS:
            stable = window.arm(WindowArm.STABLE.value)
            judgement = without_stable(stable, window.arm(_candidate_arm(rollout)))
        else:
            judgement = judge_tiers(policy, window.arms, _candidate_arm(rollout), divergence)
        self._metrics.analysis_verdicts.labels(rollout.key.slug, judgement.verdict).inc()
        if judgement.verdict == "fail":
            state.failures += 1
        action = _next_action(rollout, policy, judgement, state)
        record = _verdict_record(rollout, judgement, start, end, now, action, self.actor)
        # A ramp is seen on a later tick like an operator's (``rollout.updated_at``): one
        # mechanism starts the next window at the new percentage, whoever changed it.
        state.next_at = now + policy.interval
        # The verdict is stored before acting, so even a failed action leaves its evidence.
        await self._state.save(rollout.key, state, record)
        _log.info(
            "rollout %s of %s: %s%s",
            rollout.id,
            rollout.key,
            judgement.verdict,
            f" -> {action}" if action else "",
        )
        if action is not None:
            await self._act(rollout, policy, judgement, action)

    async def _act(
        self, rollout: Rollout, policy: AnalysisPolicy, judgement: Judgement, action: str
    ) -> None:
        # A replica that lost its lease mid-verdict (a long pause) must not act.
        if not await self._lease.hold(rollout.key):
            return
        key = rollout.key
        if action == "abort":
            reason = f"analysis failed: {judgement.summary()}"
            await self._registry.abort_rollout(key, self.actor, reason)
        elif action == "promote":
            reason = f"analysis passed every step up to {rollout.percent:g} %"
            await self._registry.promote_rollout(key, self.actor, reason)
        else:
            target = _next_step(rollout, policy)
            assert target is not None
            reason = f"analysis passed at {rollout.percent:g} %"
            await self._registry.set_rollout(
                key,
                rollout.candidate,
                rollout.mode,
                target / 100,
                None,
                self.actor,
                reason,
            )
        self._metrics.analysis_actions.labels(key.slug, action).inc()

    # -- admin view -----------------------------------------------------------------------

    async def last(self, key: PromptKey) -> dict[str, Any] | None:
        """The key's latest analysed rollout, running or ended: its id, failure count and
        verdicts. After an abort, this is where the failed checks are read."""
        state, verdicts = await self._state.load(key)
        if state is None:
            return None
        return {
            "slug": key.slug,
            "rollout_id": state.rollout_id,
            "failures": state.failures,
            "verdicts": verdicts,
        }

    async def status(self, rollout: Rollout) -> dict[str, Any] | None:
        """The rollout's analysis state for the admin API; None when it has no policy."""
        policy = rollout.analysis
        if policy is None:
            return None
        state, verdicts = await self._state.load(rollout.key)
        holder = await self._lease.holder(rollout.key)
        if state is None or state.rollout_id != rollout.id:
            return {
                "step": _step_index(rollout, policy),
                "failures": 0,
                "next_at": self._first_verdict_at(rollout, policy),
                "holder": holder,
                "verdicts": [],
            }
        return {
            "step": _step_index(rollout, policy),
            "failures": state.failures,
            "next_at": state.next_at,
            "holder": holder,
            "verdicts": verdicts,
        }

    async def summary(self, rollout: Rollout) -> dict[str, Any] | None:
        """The rollout's last verdict at a glance, for the list of running rollouts; None
        when it has no policy. One state read and no lease: the list shows no holder, and
        it reads this for every running rollout at once."""
        policy = rollout.analysis
        if policy is None:
            return None
        state, verdicts = await self._state.load(rollout.key)
        if state is None or state.rollout_id != rollout.id:
            # Not analysed yet (or the state is a previous rollout's): as ``status`` says.
            return {
                "last_verdict": None,
                "last_at": None,
                "failures": 0,
                "next_at": self._first_verdict_at(rollout, policy),
            }
        # The memory store keeps no other rollout's verdicts, Redis filters them: the check
        # is for a store that would not.
        last = next((v for v in verdicts if v.get("rollout_id") == rollout.id), None)
        return {
            "last_verdict": None if last is None else last.get("verdict"),
            "last_at": None if last is None else last.get("at"),
            "failures": state.failures,
            "next_at": state.next_at,
        }

    def _first_verdict_at(self, rollout: Rollout, policy: AnalysisPolicy) -> float:
        return rollout.updated_at + policy.interval + self._settle()


def _next_step(rollout: Rollout, policy: AnalysisPolicy) -> int | None:
    return next((s for s in policy.steps if s > rollout.basis_points), None)


def _step_index(rollout: Rollout, policy: AnalysisPolicy) -> int | None:
    reached = [i for i, s in enumerate(policy.steps) if s <= rollout.basis_points]
    return reached[-1] if reached else None


def _next_action(
    rollout: Rollout, policy: AnalysisPolicy, judgement: Judgement, state: AnalysisState
) -> str | None:
    if judgement.verdict == "fail":
        return "abort" if state.failures > policy.failure_limit else None
    if judgement.verdict != "pass" or not policy.steps:
        return None
    if _next_step(rollout, policy) is not None:
        return "ramp"
    # Every step passed. A shadow rollout has served nobody, so it is never promoted by
    # itself; its last step passing is the evidence an operator needs.
    if rollout.mode is RolloutMode.SHADOW:
        return None
    return "promote"


def _verdict_record(
    rollout: Rollout,
    judgement: Judgement,
    start: float,
    end: float,
    now: float,
    action: str | None,
    actor: str,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "at": round(now, 3),
        "rollout_id": rollout.id,
        "verdict": judgement.verdict,
        "percent": rollout.percent,
        "window": {"start": round(start, 3), "end": round(end, 3)},
        "samples": _samples(rollout, judgement),
        "checks": [c.to_dict() for c in judgement.checks],
        "action": action,
        "actor": actor,
    }
    if judgement.tiers:
        # Only tiers that sent traffic to both arms: at most ``tenants.tiers`` of them.
        record["tiers"] = {
            tier: {
                "verdict": j.verdict,
                "samples": _samples(rollout, j),
                "checks": [c.to_dict() for c in j.checks],
            }
            for tier, j in judgement.tiers.items()
        }
    return record


def _samples(rollout: Rollout, judgement: Judgement) -> dict[str, int]:
    return {
        "stable": judgement.samples["stable"],
        _candidate_arm(rollout): judgement.samples["candidate"],
    }
