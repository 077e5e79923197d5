"""The automated-analysis policy a rollout can carry: how often to judge, on how many
samples, which checks with which limits, and the percentages to ramp through.

Pure values, no I/O. ``AnalysisPolicy.from_dict`` reads the JSON shape of the admin API
(``analysis`` of ``PUT /admin/v1/prompts/{slug}/rollout``) and refuses anything it does not
understand with a ``PolicyError`` naming the offending field, e.g.
``analysis.thresholds.p95_latency_ratio`` or ``analysis.steps[2]``. The dataclasses check
their own ranges too, so a policy built in code cannot hold what the API would refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.registry.percent import BASIS_POINTS, to_basis_points

_ROOT = "analysis"
_THRESHOLDS = f"{_ROOT}.thresholds"
_FEEDBACK = f"{_THRESHOLDS}.feedback_drop"
_JUDGE = f"{_THRESHOLDS}.judge_drop"
#: Pool slots are one second long and live two intervals: an hour keeps that small.
MAX_INTERVAL = 3_600.0
MAX_ALPHA = 0.5
# Feedback names become a metric label value and a Redis key part: keep them plain.
_FEEDBACK_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class PolicyError(ValueError):
    """An analysis policy the proxy refuses; ``param`` is the JSON path of the culprit."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The checks of a verdict and their limits; ``None`` (or ``False``) turns a check off."""

    #: Canary error share minus stable's, absolute (0.02 = 2 points).
    error_rate_increase: float | None = 0.02
    #: Canary p95 request duration / stable p95.
    p95_latency_ratio: float | None = 1.5
    #: Canary p95 time to first token / stable p95 (streams only).
    p95_ttft_ratio: float | None = 1.5
    #: Share of answers cut by ``finish_reason: length``, canary minus stable.
    length_finish_increase: float | None = 0.05
    #: ``|canary mean output tokens / stable mean - 1|``.
    answer_length_drift: float | None = 0.3
    #: Use the noise-calibrated shadow divergence verdict (shadow mode only).
    shadow_divergence: bool = True
    #: Feedback score to compare (``feedback_drop.name``), and the largest tolerated drop
    #: of its mean, stable minus canary. Both set or both None.
    feedback_name: str | None = None
    feedback_max_drop: float | None = None
    #: The largest tolerated drop of the online judge's mean score (``judge_drop``,
    #: ``evals.online``), stable minus canary; None: no judge check.
    judge_max_drop: float | None = None

    def __post_init__(self) -> None:
        _check_share(self.error_rate_increase, f"{_THRESHOLDS}.error_rate_increase")
        _check_ratio(self.p95_latency_ratio, f"{_THRESHOLDS}.p95_latency_ratio")
        _check_ratio(self.p95_ttft_ratio, f"{_THRESHOLDS}.p95_ttft_ratio")
        _check_share(self.length_finish_increase, f"{_THRESHOLDS}.length_finish_increase")
        drift = self.answer_length_drift
        if drift is not None and not (math.isfinite(drift) and drift > 0):
            raise PolicyError(
                f"answer_length_drift must be a number above 0, got {drift}",
                f"{_THRESHOLDS}.answer_length_drift",
            )
        if (self.feedback_name is None) != (self.feedback_max_drop is None):
            raise PolicyError(
                "feedback_drop needs both a name and a max_drop", f"{_FEEDBACK}.max_drop"
            )
        if self.feedback_name is not None and not _FEEDBACK_NAME.match(self.feedback_name):
            raise PolicyError(
                "feedback_drop.name must be 1 to 64 letters, digits or . _ : -, "
                f"got {self.feedback_name!r}",
                f"{_FEEDBACK}.name",
            )
        drop = self.feedback_max_drop
        if drop is not None and not (math.isfinite(drop) and drop >= 0):
            raise PolicyError(
                f"feedback_drop.max_drop must be a number of at least 0, got {drop}",
                f"{_FEEDBACK}.max_drop",
            )
        judge = self.judge_max_drop
        if judge is not None and not (math.isfinite(judge) and 0 <= judge <= 1):
            raise PolicyError(
                f"judge_drop.max_drop must be a number from 0 to 1 (scores are), got {judge}",
                f"{_JUDGE}.max_drop",
            )

    @classmethod
    def from_dict(cls, data: Any) -> Thresholds:
        fields = _object(data, _THRESHOLDS, _THRESHOLD_KEYS)
        values: dict[str, Any] = {}
        for name in _NUMBER_THRESHOLDS:
            if name in fields:
                value = fields[name]
                values[name] = None if value is None else _number(value, f"{_THRESHOLDS}.{name}")
        if "shadow_divergence" in fields:
            flag = fields["shadow_divergence"]
            if flag is not None and not isinstance(flag, bool):
                raise PolicyError(
                    f"shadow_divergence must be true, false or null, got {flag!r}",
                    f"{_THRESHOLDS}.shadow_divergence",
                )
            values["shadow_divergence"] = bool(flag)
        feedback = fields.get("feedback_drop")
        if feedback is not None:
            drop = _object(feedback, _FEEDBACK, frozenset({"name", "max_drop"}))
            for key in ("name", "max_drop"):
                if key not in drop:
                    raise PolicyError(f"feedback_drop needs {key!r}", f"{_FEEDBACK}.{key}")
            name = drop["name"]
            if not isinstance(name, str):
                raise PolicyError(
                    f"feedback_drop.name must be a string, got {name!r}", f"{_FEEDBACK}.name"
                )
            values["feedback_name"] = name
            values["feedback_max_drop"] = _number(drop["max_drop"], f"{_FEEDBACK}.max_drop")
        judge = fields.get("judge_drop")
        if judge is not None:
            drop = _object(judge, _JUDGE, frozenset({"max_drop"}))
            if "max_drop" not in drop:
                raise PolicyError("judge_drop needs 'max_drop'", f"{_JUDGE}.max_drop")
            values["judge_max_drop"] = _number(drop["max_drop"], f"{_JUDGE}.max_drop")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        feedback = (
            None
            if self.feedback_name is None
            else {"name": self.feedback_name, "max_drop": self.feedback_max_drop}
        )
        found: dict[str, Any] = {
            "error_rate_increase": self.error_rate_increase,
            "p95_latency_ratio": self.p95_latency_ratio,
            "p95_ttft_ratio": self.p95_ttft_ratio,
            "length_finish_increase": self.length_finish_increase,
            "answer_length_drift": self.answer_length_drift,
            "shadow_divergence": self.shadow_divergence,
            "feedback_drop": feedback,
        }
        if self.judge_max_drop is not None:
            # Written only when set: a replica of the release before refuses the key, and
            # must keep reading every stored policy that does not use the check.
            found["judge_drop"] = {"max_drop": self.judge_max_drop}
        return found


_NUMBER_THRESHOLDS = (
    "error_rate_increase",
    "p95_latency_ratio",
    "p95_ttft_ratio",
    "length_finish_increase",
    "answer_length_drift",
)
_THRESHOLD_KEYS = frozenset(
    {*_NUMBER_THRESHOLDS, "shadow_divergence", "feedback_drop", "judge_drop"}
)


@dataclass(frozen=True, slots=True)
class AnalysisPolicy:
    #: Seconds between verdicts.
    interval: float = 60.0
    #: Requests each arm needs in a window before a verdict can be pass or fail.
    min_samples: int = 100
    #: Failed verdicts tolerated; the next one aborts the rollout.
    failure_limit: int = 0
    #: Percentages to ramp through, in basis points (like ``Rollout.basis_points``),
    #: strictly ascending, each below 100 %: a passed last step promotes. Empty: the
    #: analyser never ramps or promotes by itself.
    steps: tuple[int, ...] = ()
    #: Significance level of every statistical test.
    alpha: float = 0.01
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval) and 1 <= self.interval <= MAX_INTERVAL):
            raise PolicyError(
                f"interval must be 1 to {MAX_INTERVAL:g} seconds, got {self.interval}",
                f"{_ROOT}.interval",
            )
        if _not_int(self.min_samples) or self.min_samples < 1:
            raise PolicyError(
                f"min_samples must be an integer of at least 1, got {self.min_samples!r}",
                f"{_ROOT}.min_samples",
            )
        if _not_int(self.failure_limit) or self.failure_limit < 0:
            raise PolicyError(
                f"failure_limit must be an integer of at least 0, got {self.failure_limit!r}",
                f"{_ROOT}.failure_limit",
            )
        previous = 0
        for i, points in enumerate(self.steps):
            where = f"{_ROOT}.steps[{i}]"
            if _not_int(points) or not 0 < points < BASIS_POINTS:
                raise PolicyError(
                    f"a step must be above 0 and below 100 percent, got {points!r} basis points",
                    where,
                )
            if points <= previous:
                raise PolicyError(
                    f"steps must be strictly ascending: {points / 100:g}% comes after "
                    f"{previous / 100:g}%",
                    where,
                )
            previous = points
        if not (math.isfinite(self.alpha) and 0 < self.alpha <= MAX_ALPHA):
            raise PolicyError(
                f"alpha must be above 0 and at most {MAX_ALPHA}, got {self.alpha}",
                f"{_ROOT}.alpha",
            )

    @property
    def step_percents(self) -> tuple[float, ...]:
        return tuple(points / 100 for points in self.steps)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> AnalysisPolicy:
        """A policy a rollout was stored with. Rollouts started before steps of 100 %
        were refused may end their steps with one: it is dropped, since promotion follows
        the last step, which is what that step led to (after a verdict on leftovers)."""
        steps = data.get("steps")
        if isinstance(steps, list) and steps and steps[-1] == 100:
            data = {**data, "steps": steps[:-1]}
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisPolicy:
        """The policy ``data`` (the JSON shape) describes; omitted fields take their
        defaults. ``PolicyError`` for anything else, naming the field."""
        fields = _object(data, _ROOT, _POLICY_KEYS)
        values: dict[str, Any] = {}
        if "interval" in fields:
            values["interval"] = _number(fields["interval"], f"{_ROOT}.interval")
        for name in ("min_samples", "failure_limit"):
            if name in fields:
                values[name] = _integer(fields[name], f"{_ROOT}.{name}")
        if "steps" in fields:
            values["steps"] = _steps(fields["steps"])
        if "alpha" in fields:
            values["alpha"] = _number(fields["alpha"], f"{_ROOT}.alpha")
        if "thresholds" in fields:
            values["thresholds"] = Thresholds.from_dict(fields["thresholds"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape, steps as percents: ``from_dict(p.to_dict()) == p``."""
        return {
            "interval": self.interval,
            "min_samples": self.min_samples,
            "failure_limit": self.failure_limit,
            "steps": list(self.step_percents),
            "alpha": self.alpha,
            "thresholds": self.thresholds.to_dict(),
        }


_POLICY_KEYS = frozenset(
    {"interval", "min_samples", "failure_limit", "steps", "alpha", "thresholds"}
)


# -- field readers ---------------------------------------------------------------------------


def _object(data: Any, where: str, known: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise PolicyError(f"{where} must be an object, got {_kind(data)}", where)
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise PolicyError(
            f"unknown field {unknown[0]!r} in {where} (known: {', '.join(sorted(known))})",
            f"{where}.{unknown[0]}",
        )
    return data


def _number(value: Any, where: str) -> float:
    # bool is an int subclass: `true` must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{_leaf(where)} must be a number, got {_kind(value)}", where)
    if not math.isfinite(value):
        raise PolicyError(f"{_leaf(where)} must be a finite number, got {value}", where)
    return float(value)


def _integer(value: Any, where: str) -> int:
    if _not_int(value):
        raise PolicyError(f"{_leaf(where)} must be an integer, got {_kind(value)}", where)
    return int(value)


def _steps(value: Any) -> tuple[int, ...]:
    where = f"{_ROOT}.steps"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise PolicyError(f"steps must be a list of percents, got {_kind(value)}", where)
    points: list[int] = []
    for i, step in enumerate(value):
        at = f"{where}[{i}]"
        percent = _number(step, at)
        try:
            bp = to_basis_points(percent)
        except ValueError as exc:
            raise PolicyError(f"a step {exc}", at) from None
        if bp == 0:
            raise PolicyError("a step must be above 0 percent", at)
        if bp == BASIS_POINTS:
            # At 100 % stable serves nobody, so a verdict there could only compare the
            # candidate with stable requests left over from the step before.
            raise PolicyError(
                "a step must be below 100 percent: the candidate is promoted when the "
                "last step passes, and at 100 % stable has no traffic to judge it against",
                at,
            )
        points.append(bp)
    return tuple(points)


def _check_share(value: float | None, where: str) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
        raise PolicyError(f"{_leaf(where)} must be between 0 and 1, got {value}", where)


def _check_ratio(value: float | None, where: str) -> None:
    # Under 1 would demand a candidate faster than stable: an equal one would fail.
    if value is not None and not (math.isfinite(value) and value >= 1):
        raise PolicyError(f"{_leaf(where)} must be a ratio of at least 1, got {value}", where)


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _leaf(where: str) -> str:
    return where.rsplit(".", 1)[-1]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__
