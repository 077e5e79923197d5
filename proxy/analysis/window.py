"""Per-arm statistics of a rollout, kept so they can be added up across replicas and time.

Everything is a count or a sum (never a mean or a percentile), so the pool can add what
every replica sends with plain ``HINCRBY``/``HINCRBYFLOAT`` and the analyser can merge any
set of one-second slots into one window. Latencies go into fixed log-spaced bins (10 %
wide) for the same reason: a p95 read off them is within 10 %, far finer than any ratio
threshold worth setting, and a Mann-Whitney test runs on the bins directly.

``WindowRecorder`` is the hot-path side: ``finished`` (an observer of every finished
exchange, primary or shadow) is a few dict lookups and increments, and ``drain`` hands the
accumulated counts to the flusher (see ``pool``).

Nothing here grows with the number of requests, only with the bins and names touched: one
arm of one second is about 1 KiB at typical traffic and at most about 20 KiB with every bin
filled (docs/operations.md, "Memory"). Memory follows time instead: slots per second,
drained every flush, and held by the in-memory pool for the longest window.

A request of a tenant with a tier is counted twice: under its arm, and under the *tier arm*
``ARM@TIER`` (``canary@enterprise``), so the analysis can judge each tier on its own. The
tiers are bounded by ``tenants.tiers`` (at most 32), so a slot holds at most (1 + tiers)
times the served and shadow arms; in practice only the tiers that sent requests that second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from proxy.exchange.outcome import Exchange
from proxy.prompt_key import PromptKey
from proxy.shadow.compare import Divergence, DivergenceCounts
from proxy.shadow.models import ShadowKind
from proxy.stats import quantile_from_histogram

#: Bin ``i`` holds latencies up to ``LATENCY_BOUNDS[i]`` seconds: 1 ms to ~10 min, 10 % steps.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.001 * 1.1**i for i in range(141))
_LOG_STEP = math.log(1.1)

#: Pool slots are one second long: windows of any interval are whole slots.
SLOT_SECONDS = 1


class WindowArm(StrEnum):
    """The arms a rollout's statistics are kept for (pinned requests are left out)."""

    STABLE = "stable"
    CANARY = "canary"
    #: Shadow calls to the candidate.
    SHADOW = "shadow"
    #: Shadow calls that re-ran the stable version (noise calibration).
    RERUN = "rerun"


#: The served arms a rollout's analysis compares, for requests and feedback alike (pinned
#: callers chose their version themselves; shadow calls count as shadow or rerun).
SERVED_ARMS = frozenset({WindowArm.STABLE.value, WindowArm.CANARY.value})

#: The arms also counted per tier: those a verdict compares. ``rerun`` feeds the shadow
#: noise calibration, whose divergence counts are kept for the whole rollout only.
TIER_ARMS = frozenset({WindowArm.STABLE.value, WindowArm.CANARY.value, WindowArm.SHADOW.value})
#: Between an arm and a tier in a tier arm's name. Neither holds it (a tier is letters,
#: digits and ``. _ -``), nor ``|``, which the Redis pool puts between arm and counter.
TIER_SEPARATOR = "@"

#: Pseudo-arms holding the shadow pairs' divergence counts, cumulative over the rollout.
DIVERGENCE_NOISE = "div_noise"
DIVERGENCE_CANDIDATE = "div_candidate"


def tier_arm(arm: str, tier: str) -> str:
    return f"{arm}{TIER_SEPARATOR}{tier}"


def split_tier_arm(name: str) -> tuple[str, str | None]:
    """``("canary", "enterprise")`` for ``canary@enterprise``, ``("canary", None)`` for
    ``canary``."""
    arm, sep, tier = name.partition(TIER_SEPARATOR)
    return (arm, tier) if sep else (name, None)


def latency_bin(seconds: float) -> int:
    if seconds <= LATENCY_BOUNDS[0]:
        return 0
    index = math.ceil(math.log(seconds / LATENCY_BOUNDS[0]) / _LOG_STEP - 1e-9)
    return min(index, len(LATENCY_BOUNDS) - 1)


@dataclass(slots=True)
class Moments:
    """Count, sum and sum of squares: enough for a mean and a Welch test."""

    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.squares += value * value

    def merge(self, other: Moments) -> None:
        self.n += other.n
        self.total += other.total
        self.squares += other.squares

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


@dataclass(slots=True)
class ArmStats:
    #: Finished requests (or shadow calls).
    requests: int = 0
    #: Of those, failed ones: any error class but the client going away.
    errors: int = 0
    #: Answers that carried a finish reason, and of those the ones cut by a token limit.
    finished: int = 0
    truncated: int = 0
    #: Successful requests' durations and streams' time to first token, by latency bin.
    latency: dict[int, int] = field(default_factory=dict)
    ttft: dict[int, int] = field(default_factory=dict)
    #: Output tokens per successful answer.
    answer_tokens: Moments = field(default_factory=Moments)
    #: Feedback values by outcome name.
    feedback: dict[str, Moments] = field(default_factory=dict)

    def add_call(
        self,
        *,
        failed: bool,
        duration: float | None,
        ttft: float | None,
        output_tokens: int | None,
        finish_reason: str | None,
    ) -> None:
        self.requests += 1
        if failed:
            self.errors += 1
            return
        if duration is not None:
            b = latency_bin(duration)
            self.latency[b] = self.latency.get(b, 0) + 1
        if ttft is not None:
            b = latency_bin(ttft)
            self.ttft[b] = self.ttft.get(b, 0) + 1
        if output_tokens is not None:
            self.answer_tokens.add(output_tokens)
        if finish_reason is not None:
            self.finished += 1
            if finish_reason in TRUNCATED:
                self.truncated += 1

    def add_feedback(self, name: str, value: float) -> None:
        moments = self.feedback.get(name)
        if moments is None:
            moments = self.feedback[name] = Moments()
        moments.add(value)

    def merge(self, other: ArmStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.finished += other.finished
        self.truncated += other.truncated
        for mine, theirs in ((self.latency, other.latency), (self.ttft, other.ttft)):
            for b, count in theirs.items():
                mine[b] = mine.get(b, 0) + count
        self.answer_tokens.merge(other.answer_tokens)
        for name, moments in other.feedback.items():
            self.feedback.setdefault(name, Moments()).merge(moments)

    # -- reading --------------------------------------------------------------------------

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def truncated_share(self) -> float | None:
        return self.truncated / self.finished if self.finished else None

    def latency_counts(self, which: str = "latency") -> list[int]:
        bins = self.latency if which == "latency" else self.ttft
        return [bins.get(i, 0) for i in range(len(LATENCY_BOUNDS))]

    def quantile(self, q: float, which: str = "latency") -> float | None:
        return quantile_from_histogram(LATENCY_BOUNDS, self.latency_counts(which), q)

    # -- the pool's flat form -------------------------------------------------------------

    def to_fields(self) -> dict[str, float]:
        """Non-zero counters only, as ``name -> increment``: what the pool adds up."""
        out: dict[str, float] = {}
        for name, value in (
            ("n", self.requests),
            ("err", self.errors),
            ("fin", self.finished),
            ("trunc", self.truncated),
        ):
            if value:
                out[name] = value
        for b, count in self.latency.items():
            out[f"lat:{b}"] = count
        for b, count in self.ttft.items():
            out[f"ttft:{b}"] = count
        _moments_fields(out, "tok", self.answer_tokens)
        for name, moments in self.feedback.items():
            _moments_fields(out, f"fb:{name}", moments)
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, float]) -> ArmStats:
        stats = cls()
        for key, raw in fields.items():
            value = float(raw)
            name, _, rest = key.partition(":")
            if name == "n":
                stats.requests = int(value)
            elif name == "err":
                stats.errors = int(value)
            elif name == "fin":
                stats.finished = int(value)
            elif name == "trunc":
                stats.truncated = int(value)
            elif name in ("lat", "ttft") and rest.isdigit():
                bins = stats.latency if name == "lat" else stats.ttft
                index = int(rest)
                if index < len(LATENCY_BOUNDS):
                    bins[index] = int(value)
            elif name == "tok":
                _set_moment(stats.answer_tokens, rest, value)
            elif name == "fb":
                fb_name, _, part = rest.rpartition(":")
                if fb_name:
                    _set_moment(stats.feedback.setdefault(fb_name, Moments()), part, value)
        return stats


#: Finish reasons that mean "cut by the token limit" (chat, and the Responses API's reason).
TRUNCATED = frozenset({"length", "max_output_tokens"})


def _moments_fields(out: dict[str, float], prefix: str, moments: Moments) -> None:
    if moments.n:
        out[f"{prefix}:n"] = moments.n
        out[f"{prefix}:s"] = moments.total
        out[f"{prefix}:s2"] = moments.squares


def _set_moment(moments: Moments, part: str, value: float) -> None:
    if part == "n":
        moments.n = value
    elif part == "s":
        moments.total = value
    elif part == "s2":
        moments.squares = value


@dataclass(slots=True)
class RolloutBatch:
    """What one replica adds to the pool for one rollout since its last flush."""

    #: slot -> arm -> counters
    slots: dict[int, dict[str, ArmStats]] = field(default_factory=dict)
    #: Divergence counts of shadow pairs, cumulative over the rollout.
    noise: DivergenceCounts = field(default_factory=DivergenceCounts)
    candidate: DivergenceCounts = field(default_factory=DivergenceCounts)

    def arm(self, slot: int, arm: str) -> ArmStats:
        arms = self.slots.get(slot)
        if arms is None:
            arms = self.slots[slot] = {}
        stats = arms.get(arm)
        if stats is None:
            stats = arms[arm] = ArmStats()
        return stats

    def merge(self, other: RolloutBatch) -> None:
        for slot, arms in other.slots.items():
            for arm, stats in arms.items():
                self.arm(slot, arm).merge(stats)
        self.noise.merge(other.noise)
        self.candidate.merge(other.candidate)

    @property
    def empty(self) -> bool:
        return not self.slots and not self.noise.to_fields() and not self.candidate.to_fields()


#: (prompt key, rollout id)
RolloutKey = tuple[PromptKey, str]
#: ``time.time`` in production; tests pass their own.
Clock = Callable[[], float]


class WindowRecorder:
    """Accumulates this replica's counts per rollout until the flusher drains them."""

    __slots__ = ("_clock", "_pending", "_tiers")

    def __init__(self, clock: Clock, tiers: Iterable[str] | None = None) -> None:
        """``tiers``: those counted on their own (``tenants.tiers``). A tier outside them,
        that of a tenant record older than the config, counts in the whole only, as the
        metrics fold it into ``other``: the pool's fields stay bounded by the config.
        None counts every tier."""
        self._clock = clock
        self._pending: dict[RolloutKey, RolloutBatch] = {}
        self._tiers = None if tiers is None else frozenset(tiers)

    def _batch(self, key: PromptKey, rollout_id: str) -> RolloutBatch:
        batch = self._pending.get((key, rollout_id))
        if batch is None:
            batch = self._pending[(key, rollout_id)] = RolloutBatch()
        return batch

    def finished(self, ex: Exchange) -> None:
        """Count a finished exchange under its rollout: a served arm (stable or canary), or
        a shadow call (``shadow``, or ``rerun`` for stable's noise copy), and under the tier
        arm as well when the caller's tenant has a tier. A caller hanging up or a shadow
        cancelled at shutdown says nothing about the prompt."""
        if ex.rollout_id is None or ex.key is None:
            return
        if ex.is_shadow:
            if ex.error_class == "cancelled":
                return
            noise = ex.shadow_kind == ShadowKind.STABLE.value
            arm = (WindowArm.RERUN if noise else WindowArm.SHADOW).value
        elif (
            ex.arm is not None and ex.arm in SERVED_ARMS and ex.error_class != "client_disconnected"
        ):
            arm = ex.arm
        else:
            return
        self.observe_call(
            ex.key,
            ex.rollout_id,
            arm,
            failed=ex.error_class is not None,
            duration=ex.duration,
            ttft=ex.ttfb if ex.stream else None,
            output_tokens=ex.output_tokens,
            finish_reason=ex.finish_reason,
            tier=self._counted_tier(ex.tier) if arm in TIER_ARMS else None,
        )

    def _counted_tier(self, tier: str | None) -> str | None:
        if not tier or (self._tiers is not None and tier not in self._tiers):
            return None
        return tier

    def observe_call(
        self,
        key: PromptKey,
        rollout_id: str,
        arm: str,
        *,
        failed: bool,
        duration: float | None,
        ttft: float | None,
        output_tokens: int | None,
        finish_reason: str | None,
        tier: str | None = None,
    ) -> None:
        """``tier``: count the call under the tier arm too (``finished`` checked it)."""
        slot = int(self._clock()) // SLOT_SECONDS
        batch = self._batch(key, rollout_id)
        for name in (arm,) if tier is None else (arm, tier_arm(arm, tier)):
            batch.arm(slot, name).add_call(
                failed=failed,
                duration=duration,
                ttft=ttft,
                output_tokens=output_tokens,
                finish_reason=finish_reason,
            )

    def observe_feedback(
        self, key: PromptKey, rollout_id: str, arm: str, name: str, value: float
    ) -> None:
        slot = int(self._clock()) // SLOT_SECONDS
        self._batch(key, rollout_id).arm(slot, arm).add_feedback(name, value)

    def observe_divergence(
        self, key: PromptKey, rollout_id: str, noise: bool, divergence: Divergence
    ) -> None:
        batch = self._batch(key, rollout_id)
        (batch.noise if noise else batch.candidate).add(divergence)

    def drain(self) -> dict[RolloutKey, RolloutBatch]:
        pending, self._pending = self._pending, {}
        return pending

    def restore(self, batches: Mapping[RolloutKey, RolloutBatch], oldest_slot: int) -> None:
        """Put back what a failed flush could not write, minus slots too old to matter."""
        for key, batch in batches.items():
            batch.slots = {s: arms for s, arms in batch.slots.items() if s >= oldest_slot}
            if batch.empty:
                continue
            self._batch(*key).merge(batch)


def merge_arms(parts: Iterable[Mapping[str, ArmStats]]) -> dict[str, ArmStats]:
    total: dict[str, ArmStats] = {}
    for arms in parts:
        for arm, stats in arms.items():
            total.setdefault(arm, ArmStats()).merge(stats)
    return total
