"""``EvalService``: start an eval run, follow its progress, store and read back its result.

The one place that decides what a run is (the admin API and, through it, the CLI only
validate and print). A run is checked before anything is sent (the versions exist, every
case has a model that selects the prompt line run), then runs as a tracked background task
of this process: the caller following it may go away, the run still finishes and is
stored with the candidate's version, where ``prompts history`` and the gates read it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.capture.records import Capture
from proxy.config import EvalsConfig
from proxy.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from proxy.evals.drift import DriftPolicy, drift
from proxy.evals.judge import JudgeRef, judges_for
from proxy.evals.online import OnlineJudge
from proxy.evals.replay import compare, replay_set
from proxy.evals.report import (
    BASELINE,
    CANDIDATE,
    CaseResult,
    Criteria,
    JudgeScore,
    case_rows,
    summarize,
)
from proxy.evals.runner import Plan, Runner, Target, case_models
from proxy.evals.runs import EvalRun, EvalRunError, EvalRunStore, EvalRunTooLarge, new_run_id
from proxy.evals.suite import Suite
from proxy.log import APP_LOGGER
from proxy.pipeline.resolve import PromptRef, for_model
from proxy.prompt_key import PromptKey
from proxy.registry.models import RegistrySnapshot
from proxy.registry.store import StoreUnavailable
from proxy.tasks import BackgroundTasks

_log = logging.getLogger(APP_LOGGER)
#: Finished runs kept in memory for their followers.
_KEEP_FINISHED = 5
#: Captured calls a replay reads before keeping the newest of its baseline version.
_CAPTURES_READ = 2000
#: Answer characters a run too large to store keeps.
_SHORT_TEXT = 200
#: What ``baseline`` may say instead of a number: the version prod is at the start.
PROD = "prod"


@dataclass(slots=True)
class Progress:
    """A run of this process, while it runs and a while after."""

    id: str
    key: PromptKey
    total: int
    done: int = 0
    state: str = "running"  # running | done | failed
    run: EvalRun | None = None
    error: str | None = None
    #: Set (and replaced) on every change, for whoever follows the run.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def tick(self) -> None:
        self.done += 1
        self._changed()

    def finish(self, run: EvalRun | None, error: str | None = None) -> None:
        self.state = "done" if run is not None else "failed"
        self.run, self.error = run, error
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "slug": str(self.key),
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class EvalRequest:
    key: PromptKey
    suite: Suite
    candidate: int
    #: A version number, ``prod``, or None (the candidate alone).
    baseline: int | str | None
    criteria: Criteria
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    key: PromptKey
    candidate: int
    #: A version number or ``prod``: the version whose captured calls are replayed.
    baseline: int | str
    #: Unix seconds: captures from then on.
    since: float
    limit: int = 200
    concurrency: int | None = None


#: Reads a slug's captured calls: (slug, since, limit) -> oldest first.
ReadCaptures = Callable[[str, float, int], Awaitable[Sequence[Capture]]]


class EvalService:
    def __init__(
        self,
        config: EvalsConfig,
        runs: EvalRunStore,
        snapshot: Callable[[], RegistrySnapshot],
        clock: Callable[[], float] = time.time,
        captures: ReadCaptures | None = None,
        online: OnlineJudge | None = None,
    ) -> None:
        """``online``: the online judge, whose calls go where eval calls go and stop
        when they do."""
        self._config = config
        self._online = online
        self._captures = captures
        self._drift = DriftPolicy(config.drift_alpha, config.drift_margin, config.drift_min_pairs)
        self._runs = runs
        self._snapshot = snapshot
        self._clock = clock
        self._tasks = BackgroundTasks()
        self._running: dict[str, Progress] = {}
        self._target: Target | None = None
        self._session: aiohttp.ClientSession | None = None

    def listening(self, base_url: str, eval_key: str, api_key: str | None = None) -> None:
        """Where this process's data plane took its port (once it has): eval calls go there,
        with ``api_key`` as a caller's key when there is one (``evals.api_key_env``)."""
        self._target = Target(base_url.rstrip("/"), eval_key, api_key)
        if self._online is not None:
            self._online.listening(self._target)

    async def start(self, request: EvalRequest, actor: str) -> Progress:
        plan = self._plan(request)  # what is wrong with the request first
        target = self._ready()

        def finish(cases: list[CaseResult], run_id: str, started: float) -> EvalRun:
            baseline = dict(plan.sides).get(BASELINE)
            seed = int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)
            passed, summary = summarize(cases, request.candidate, baseline, request.criteria, seed)
            summary["tenant"] = plan.suite.tenant
            summary["case_tenants"] = sorted({c.tenant for c in plan.suite.cases if c.tenant})
            if baseline is not None:
                summary["drift"] = drift(cases, plan.suite.cases, self._drift)
            return self._record(
                run_id,
                plan,
                "eval",
                request.candidate,
                baseline,
                actor,
                started,
                passed,
                summary,
                cases,
            )

        return self._launch(target, plan, finish)

    async def replay(self, request: ReplayRequest, actor: str) -> Progress:
        """Captured calls of the baseline since ``request.since`` sent again to the
        candidate and to the baseline (``evals/replay.py``), compared as a shadow report."""
        snapshot = self._snapshot()
        key = request.key
        baseline = self._version(snapshot, key, request.baseline, "baseline")
        self._version(snapshot, key, request.candidate, "candidate")
        assert baseline is not None
        if self._captures is None:
            raise ServiceUnavailable("This process keeps no captured calls.", code="no_captures")
        try:
            # Read wide, then keep the newest of the baseline's: the window may start with
            # another version's calls.
            captured = await self._captures(str(key), request.since, _CAPTURES_READ)
        except StoreUnavailable as exc:
            raise ServiceUnavailable(
                f"The captured calls cannot be read now ({exc}).", code="store_unavailable"
            ) from None
        replayed = replay_set(
            captured, key.slug, key.variant, baseline, set(snapshot.tenants), request.limit
        )
        if not replayed.suite.cases:
            others = ", ".join(f"{n} {why}" for why, n in sorted(replayed.skipped.items()))
            raise Conflict(
                f"No captured call of '{key}' v{baseline} to replay in that window"
                + (f" (left out: {others})" if others else "")
                + ": capture.slugs decides what is captured.",
                param="since",
                code="nothing_to_replay",
            )
        target = self._ready()
        concurrency = min(
            request.concurrency or self._config.concurrency, self._config.max_concurrency
        )
        plan = Plan(
            key,
            replayed.suite,
            ((CANDIDATE, request.candidate), (BASELINE, baseline)),
            replayed.models,
            concurrency,
        )

        def finish(cases: list[CaseResult], run_id: str, started: float) -> EvalRun:
            verdict = compare(
                cases,
                replayed,
                alpha=self._drift.alpha,
                margin=self._drift.margin,
                min_pairs=self._drift.min_pairs,
            )
            summary = {
                "candidate": {"version": request.candidate},
                "baseline": {"version": baseline},
                "replay": verdict,
                "since": request.since,
            }
            passed = verdict["result"] == "pass"
            return self._record(
                run_id,
                plan,
                "replay",
                request.candidate,
                baseline,
                actor,
                started,
                passed,
                summary,
                cases,
            )

        return self._launch(target, plan, finish)

    @staticmethod
    def _version(
        snapshot: RegistrySnapshot, key: PromptKey, number: int | str | None, name: str
    ) -> int | None:
        """``number`` (``prod``: the prod version now) checked to exist, or None for none."""
        versions = snapshot.versions.get(key)
        if not versions:
            raise NotFound(f"No prompt '{key}'.", param="slug", code="prompt_not_found")
        if number is None:
            return None
        if number == PROD:
            prod = snapshot.prod.get(key)
            if prod is None:
                raise Conflict(
                    f"'{key}' has no prod version to compare with: name a {name} version.",
                    param=name,
                    code="no_prod_version",
                )
            return prod
        if not isinstance(number, int) or number not in versions:
            raise NotFound(
                f"'{key}' has no version {number} (the {name}).",
                param=name,
                code="version_not_found",
            )
        return number

    def _ready(self) -> Target:
        if self._target is None:
            raise ServiceUnavailable(
                "This process's data plane is not listening (yet, or any more): no eval can run.",
                code="evals_unavailable",
            )
        active = sum(1 for p in self._running.values() if p.state == "running")
        if active >= self._config.max_running:
            raise Conflict(
                f"{active} eval runs are running here (evals.max_running): try again when "
                "one has finished.",
                code="evals_busy",
            )
        return self._target

    def _launch(
        self,
        target: Target,
        plan: Plan,
        finish: Callable[[list[CaseResult], str, float], EvalRun],
    ) -> Progress:
        progress = Progress(new_run_id(self._clock()), plan.key, plan.total)
        self._running[progress.id] = progress
        self._forget_finished()
        self._tasks.spawn(
            self._run(progress, target, plan, finish), name=f"eval-{plan.key}-{progress.id}"
        )
        return progress

    def _record(
        self,
        run_id: str,
        plan: Plan,
        kind: str,
        candidate: int,
        baseline: int | None,
        actor: str,
        started: float,
        passed: bool,
        summary: dict[str, Any],
        cases: list[CaseResult],
    ) -> EvalRun:
        return EvalRun(
            id=run_id,
            slug=str(plan.key),
            candidate=candidate,
            baseline=baseline,
            kind=kind,
            actor=actor,
            started_at=started,
            finished_at=self._clock(),
            suite_name=plan.suite.source,
            suite_sha256=plan.suite.sha256,
            judges=tuple(sorted({(s.judge, s.version) for c in cases for s in _all_scores(c)})),
            passed=passed,
            summary=summary,
            detail={
                "cases": [case.to_dict() for case in cases],
                "rows": case_rows(cases, baseline is not None),
            },
        )

    def progress(self, run_id: str) -> Progress | None:
        return self._running.get(run_id)

    async def get(self, run_id: str) -> EvalRun:
        progress = self._running.get(run_id)
        if progress is not None and progress.run is not None:
            return progress.run
        try:
            run = await self._runs.get(run_id)
        except StoreUnavailable as exc:
            raise _store_unavailable(exc) from None
        if run is None:
            raise NotFound(f"No eval run {run_id!r}.", param="run_id", code="eval_not_found")
        return run

    async def history(
        self, key: PromptKey, candidate: int | None = None, limit: int = 50
    ) -> list[EvalRun]:
        try:
            return list(await self._runs.list(str(key), candidate=candidate, limit=limit))
        except StoreUnavailable as exc:
            raise _store_unavailable(exc) from None

    async def close(self) -> None:
        """Cancel the runs in progress (they are not stored), stop the online judge and
        close the client. Twice is once: the server calls it before its data plane closes,
        the services at exit."""
        self._target = None  # no run starts any more
        if self._online is not None:
            await self._online.close()
        await self._tasks.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- internals ----------------------------------------------------------------------------

    def _plan(self, request: EvalRequest) -> Plan:
        snapshot = self._snapshot()
        key, suite = request.key, request.suite
        versions = snapshot.versions.get(key)
        if not versions:
            raise NotFound(f"No prompt '{key}'.", param="slug", code="prompt_not_found")
        baseline = self._version(snapshot, key, request.baseline, "baseline")
        sides: list[tuple[str, int]] = [
            (CANDIDATE, self._version(snapshot, key, request.candidate, "candidate") or 0)
        ]
        if baseline is not None:
            sides.append((BASELINE, baseline))
        stray = [c.name for c in suite.cases if c.variant not in (None, key.variant)]
        if stray:
            raise InvalidRequest(
                f"Case {stray[0]!r} names another variant than the line run ('{key}'): a run "
                "is of one prompt line; put that case in the variant's suite.",
                param="suite",
                code="invalid_suite",
            )
        models = case_models(suite, [(n, versions[n].model) for _, n in sides])
        if isinstance(models, str):
            raise InvalidRequest(f"The suite cannot run: {models}.", param="suite")
        plain = PromptKey(key.slug)
        for case_name, model in models.items():
            # The model selects the variant, as for a caller: it must select this line.
            if for_model(snapshot, PromptRef(plain), model).key != key:
                raise InvalidRequest(
                    f"Case {case_name!r} names model {model!r}, which does not select the "
                    f"prompt line '{key}' (variants are selected by the request's model).",
                    param="suite",
                    code="model_not_for_variant",
                )
        judges = judges_for(suite, self._config.judge, snapshot)
        if isinstance(judges, str):
            raise InvalidRequest(f"The suite cannot be judged: {judges}.", param="suite")
        by_name: dict[str | None, JudgeRef] = {name: ref for name, ref in judges.items()}
        if self._config.judge in judges:
            by_name[None] = judges[self._config.judge]
        named = {case.tenant or suite.tenant for case in suite.cases}
        unknown = sorted(t for t in named if t is not None and t not in snapshot.tenants)
        if unknown:
            raise InvalidRequest(
                f"The suite runs as tenant {unknown[0]!r}, which the registry does not know.",
                param="tenant",
                code="tenant_not_found",
            )
        concurrency = min(
            request.concurrency or self._config.concurrency, self._config.max_concurrency
        )
        return Plan(key, suite, tuple(sides), models, concurrency, by_name)

    async def _run(
        self,
        progress: Progress,
        target: Target,
        plan: Plan,
        finish: Callable[[list[CaseResult], str, float], EvalRun],
    ) -> None:
        started = self._clock()
        try:
            cases = await Runner(
                self._client(), target, plan, progress.tick, self._config.request_timeout
            ).run()
            run = finish(cases, progress.id, started)
            warning = await self._store(run)
        except asyncio.CancelledError:
            progress.finish(None, "the process stopped before the run finished; not stored")
            raise
        except Exception as exc:
            _log.exception("eval run %s of %s failed", progress.id, plan.key)
            progress.finish(None, f"the run failed: {type(exc).__name__}: {exc}")
            return
        finally:
            self._forget_finished()
        progress.finish(run, warning)

    async def _store(self, run: EvalRun) -> str | None:
        """Store a finished run; what went wrong if it could not be (its follower still
        gets it whole, with that warning). A run too large keeps shorter answer texts."""
        try:
            try:
                await self._runs.add(run)
            except EvalRunTooLarge:
                await self._runs.add(_with_short_texts(run))
                return f"the run was stored with answers cut to {_SHORT_TEXT} characters"
        except EvalRunTooLarge as exc:
            return f"the run was not stored: {exc}"
        except (StoreUnavailable, EvalRunError) as exc:
            _log.warning("eval run %s could not be stored: %s", run.id, exc)
            return f"the run was not stored ({exc})"
        return None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Its own pool: an eval's calls never take a caller's connections to a provider
            # (they reach the data plane, which uses its own).
            # Room for every run at its most: a call's timeout must not count a wait for a
            # connection another run holds.
            limit = self._config.max_concurrency * self._config.max_running
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
        return self._session

    def _forget_finished(self) -> None:
        """Keep the last few finished runs in memory (a follower reading the end), not all:
        a run with every answer can be megabytes."""
        finished = [i for i, p in self._running.items() if p.state != "running"]
        for run_id in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._running[run_id]


def _with_short_texts(run: EvalRun) -> EvalRun:
    cases = run.detail.get("cases", [])
    short = [
        {
            **case,
            "sides": {
                side: [{**s, "text": str(s.get("text", ""))[:_SHORT_TEXT]} for s in samples]
                for side, samples in case.get("sides", {}).items()
            },
        }
        for case in cases
    ]
    return dataclasses.replace(run, detail={**run.detail, "cases": short, "texts_cut": _SHORT_TEXT})


def _all_scores(case: CaseResult) -> list[JudgeScore]:
    return [score for samples in case.sides.values() for s in samples for score in s.scores]


def _store_unavailable(exc: StoreUnavailable) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The eval runs cannot be read from the store now ({exc}).",
        code="store_unavailable",
    )
