"""Run a suite's cases on two versions through this process's own data plane.

Each sample is a chat completion sent to ``/p/{slug}/v1/chat/completions`` on the listener
callers use, pinned to the version (``x-prompt-version``) and marked with this process's
eval key (``pipeline/evaluating.py``): guardrails, the tenant's overrides, variants,
provider routing and the Claude translation apply exactly as in production, while the call
stays out of the metrics, the analysis and the tenant's usage. Candidate and baseline
samples are interleaved, so a provider slowing down mid-run hits both alike; at most
``concurrency`` calls are in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from proxy.evals.assertions import (
    EvalAnswer,
    Judge,
    Label,
    Score,
    answer_from_chat_completion,
    check,
    read_score,
)
from proxy.evals.judge import JudgeRef, judge_body
from proxy.evals.report import CaseResult, Failure, JudgeScore, SampleResult
from proxy.evals.suite import Case, Suite
from proxy.pipeline.resolve import EVAL_HEADER, EVAL_TENANT_HEADER, VERSION_HEADER
from proxy.prompt_key import PromptKey

#: The answer text kept per sample in a stored run.
MAX_TEXT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Target:
    """Where this process's data plane listens, its eval key, and the key an eval call
    sends as a caller would (``evals.api_key_env``): where providers take the caller's
    key, an eval call needs one too."""

    base_url: str
    eval_key: str = field(repr=False)
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run: each side's name and version, the model each case's requests name."""

    key: PromptKey
    suite: Suite
    sides: tuple[tuple[str, int], ...]
    #: Case name -> the model its requests name.
    models: Mapping[str, str]
    concurrency: int
    #: The judges the suite's judge assertions use, by slug (the default one under None).
    judges: Mapping[str | None, JudgeRef] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(samples(self.suite, case) for case in self.suite.cases) * len(self.sides)


def samples(suite: Suite, case: Case) -> int:
    return case.samples if case.samples is not None else suite.samples


def request_body(case: Case, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {**case.params, "model": model, "messages": list(case.messages)}
    if case.variables:
        body["prompt_variables"] = dict(case.variables)
    body.pop("stream", None)  # one whole answer to check
    return body


def judge_sample(
    case: Case, answer: EvalAnswer, latency_ms: float, scores: Mapping[int, JudgeScore]
) -> SampleResult:
    """One answer checked: every assertion, judge assertions by their ``scores``."""
    failures: list[Failure] = []
    labels: list[tuple[bool, bool]] = []
    for index, assertion in enumerate(case.assertions):
        if isinstance(assertion, Judge):
            detail = _judge_failure(assertion, scores.get(index))
            if detail is not None:
                failures.append(Failure(index, assertion.kind, detail))
            continue
        verdict = check(assertion, answer)
        if not verdict.passed:
            failures.append(Failure(index, assertion.kind, verdict.detail))
        if isinstance(assertion, Label) and answer.error is None:
            score = read_score(answer.text)
            if isinstance(score, Score):
                labels.append((score.score >= assertion.threshold, assertion.expects_pass))
    return SampleResult(
        status=answer.status,
        passed=answer.error is None and not failures,
        failures=tuple(failures),
        pending=(),
        text=answer.text[:MAX_TEXT_CHARS],
        finish_reason=answer.finish_reason,
        latency_ms=round(latency_ms, 1),
        error=answer.error,
        scores=tuple(scores[i] for i in sorted(scores)),
        labels=tuple(labels),
        tool_calls=tuple(
            (call.name, call.arguments[:MAX_TEXT_CHARS]) for call in answer.tool_calls
        ),
        refused=answer.refused,
    )


def _judge_failure(assertion: Judge, score: JudgeScore | None) -> str | None:
    if score is None:
        return "not judged: the answer failed"
    if score.score is None:
        return f"{score.judge} v{score.version}: {score.error}"
    if score.score >= assertion.threshold:
        return None
    return f"{score.judge} v{score.version} scored {score.score:g} < {assertion.threshold:g}" + (
        f": {score.reason}" if score.reason else ""
    )


class EvalCaller:
    """One eval call: a chat completion to this process's own data plane, pinned to a
    version and marked with the eval key, so it is the ``eval`` arm (kept out of the
    metrics, the analysis, the usage, captures and online judging). Eval runs and the
    online judge send theirs through it."""

    __slots__ = ("_session", "_target", "_timeout")

    def __init__(self, session: aiohttp.ClientSession, target: Target, timeout: float) -> None:
        self._session = session
        self._target = target
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(
        self,
        slug: str,
        version: int,
        body: dict[str, Any],
        tenant: str | None = None,
        trace: Mapping[str, str] | None = None,
    ) -> EvalAnswer:
        """``trace``: the ``traceparent`` of the caller's span (an online judge's), which
        the call's own request span continues."""
        target = self._target
        headers = {
            **(trace or {}),
            EVAL_HEADER: target.eval_key,
            VERSION_HEADER: str(version),
            "content-type": "application/json",
        }
        if tenant:
            headers[EVAL_TENANT_HEADER] = tenant
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        url = f"{target.base_url}/p/{slug}/v1/chat/completions"
        try:
            async with self._session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=self._timeout
            ) as resp:
                status, raw = resp.status, await resp.read()
            try:
                decoded: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                decoded = {"error": {"message": raw[:200].decode("utf-8", "replace")}}
            return answer_from_chat_completion(status, decoded)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return EvalAnswer(0, "", None, (), f"the call failed: {type(exc).__name__}")


class Runner:
    """One run's calls. ``on_sample`` is called after each sample (the progress)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        plan: Plan,
        on_sample: Callable[[], None],
        timeout: float,
    ) -> None:
        self._plan = plan
        self._on_sample = on_sample
        self._call = EvalCaller(session, target, timeout).call

    async def run(self) -> list[CaseResult]:
        plan = self._plan
        gate = asyncio.Semaphore(plan.concurrency)
        jobs: list[tuple[Case, str, int, int]] = []
        for case in plan.suite.cases:
            for n in range(samples(plan.suite, case)):
                for side, version in plan.sides:  # interleaved: both see the same minute
                    jobs.append((case, side, version, n))

        async def one(case: Case, side: str, version: int) -> SampleResult:
            async with gate:
                result = await self._sample(case, version)
            self._on_sample()
            return result

        # A task group: should one sample raise after all, the others are cancelled rather
        # than left calling after the run has ended.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(c, side, v)) for c, side, v, _ in jobs]
        results = [task.result() for task in tasks]
        by_case: dict[str, dict[str, list[SampleResult]]] = {}
        for (case, side, _, _), result in zip(jobs, results, strict=True):
            by_case.setdefault(case.name, {}).setdefault(side, []).append(result)
        return [
            CaseResult(case.name, {s: tuple(r) for s, r in by_case.get(case.name, {}).items()})
            for case in plan.suite.cases
        ]

    async def _sample(self, case: Case, version: int) -> SampleResult:
        plan = self._plan
        tenant = case.tenant or plan.suite.tenant
        body = request_body(case, plan.models[case.name])
        started = time.perf_counter()
        answer = await self._call(plan.key.slug, version, body, tenant)
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            scores: dict[int, JudgeScore] = {}
            if answer.error is None:
                for index, assertion in enumerate(case.assertions):
                    if isinstance(assertion, Judge):
                        ref = plan.judges[assertion.judge]
                        scores[index] = await self._judge(ref, index, assertion, case, answer.text)
            return judge_sample(case, answer, latency_ms, scores)
        except (ValueError, RecursionError, TypeError) as exc:
            # An answer the checks cannot read (JSON nested past the parser's depth...)
            # fails its sample, not the run.
            broken = EvalAnswer(
                answer.status, "", answer.finish_reason, (), f"unreadable: {exc!r:.200}"
            )
            return judge_sample(case, broken, latency_ms, {})

    async def _judge(
        self, ref: JudgeRef, index: int, assertion: Judge, case: Case, text: str
    ) -> JudgeScore:
        """The judge's score of one answer: a call like any other, to the judge's prompt."""
        body = judge_body(ref, assertion.rubric, case, text)
        said = await self._call(ref.slug, ref.version, body)
        if said.error is not None:
            return JudgeScore(index, ref.slug, ref.version, None, "", f"no score: {said.error}")
        score = read_score(said.text)
        if isinstance(score, str):
            return JudgeScore(index, ref.slug, ref.version, None, "", score)
        return JudgeScore(index, ref.slug, ref.version, score.score, score.reason[:500])


def case_models(suite: Suite, versions: Sequence[tuple[int, str | None]]) -> dict[str, str] | str:
    """The model each case's requests name: the case's, the suite's, else the model the
    versions pin (each version's pin replaces the request's model as it does for a caller,
    so versions pinning different models, GPT against Claude, compare as they would
    serve). Or why there is none."""
    unpinned = [number for number, pin in versions if not pin]
    models: dict[str, str] = {}
    for case in suite.cases:
        model = case.params.get("model") or suite.model
        if not model:
            if unpinned:
                return (
                    f"case {case.name!r} names no model, nor does the suite, and version "
                    f"{unpinned[0]} pins none: add `model:` to the suite"
                )
            model = versions[0][1]
        models[case.name] = str(model)
    return models
