"""Online judging (``evals.online``): a share of the answers production serves, per slug,
judged off the request path.

``OnlineJudge.finished`` is an observer of finished exchanges (``pipeline/record.py``):
for an answer the pipeline sampled (``Exchange.judged``, set only for served chat
completions), it appends what the judge needs to a bounded queue and returns; a full
queue drops the answer and counts it. It never awaits, so a request never waits on a
judge. ``online_max_in_flight`` workers take the answers and send each to the judge's
prod version through this process's own data plane as an eval call (``EvalCaller``: the
``eval`` arm, so a judge call is in no metric, analysis, usage or capture, and is never
judged itself), on a connection pool of their own, the shadow runner's isolation.

A score is observed as ``promptproxy_judge_score`` per slug, version, arm and variant,
and, for an answer under a rollout, added to the rollout's window as the outcome
``judge_score`` (``analysis/judge.py``), so the analysis pools it across replicas as it
does feedback and judges it with the ``judge_score`` check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from proxy.analysis.judge import JUDGE_SCORE
from proxy.analysis.window import SERVED_ARMS, WindowRecorder
from proxy.config import EvalsConfig
from proxy.evals.assertions import EvalAnswer, read_score
from proxy.evals.judge import JudgeRef, judge_body, judge_ref
from proxy.evals.runner import EvalCaller, Target
from proxy.exchange.outcome import Exchange
from proxy.log import APP_LOGGER
from proxy.metrics import ProxyMetrics
from proxy.prompt_key import PromptKey
from proxy.registry.models import RegistrySnapshot
from proxy.tasks import BackgroundTasks
from proxy.tracing.attributes import ARM, ROLLOUT, SLUG, VERSION, Attributes

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from proxy.tracing.otel import JudgeTrace, Tracing

_log = logging.getLogger(APP_LOGGER)


@dataclass(frozen=True, slots=True)
class Judged:
    """A served answer waiting for its judge, as the request path hands it over."""

    key: PromptKey
    version: str
    arm: str
    rollout_id: str | None
    #: The client's body as received: its ``messages`` are the judged conversation.
    body: bytes
    text: str
    #: The judged request's span when tracing is on: the judge's span links to it.
    link: SpanContext | None = None


@dataclass(frozen=True, slots=True)
class _Conversation:
    messages: Sequence[Mapping[str, Any]]


class OnlineJudge:
    def __init__(
        self,
        config: EvalsConfig,
        snapshot: Callable[[], RegistrySnapshot],
        metrics: ProxyMetrics,
        window: WindowRecorder | None,
        tracing: Tracing | None = None,
    ) -> None:
        """``tracing`` (when on) gives each judge call a span linked to the judged
        request's."""
        self._config = config
        self._tracing = tracing
        self._snapshot = snapshot
        self._metrics = metrics
        self._window = window
        self._queue: asyncio.Queue[Judged] = asyncio.Queue(config.online_queue_size)
        self._tasks = BackgroundTasks()
        self._session: aiohttp.ClientSession | None = None
        self._caller: EvalCaller | None = None
        #: Problems already logged (one warning each, not one per answer).
        self._warned: set[str] = set()
        result = metrics.online_judge.labels
        self._queue_full = result("queue_full")
        self._scored = result("scored")
        self._failed = result("judge_failed")
        self._no_judge = result("no_judge")
        self._not_judgeable = result("not_judgeable")
        self._shutdown = result("shutdown")

    @property
    def pending(self) -> int:
        """Answers waiting for a judge."""
        return self._queue.qsize()

    def finished(self, ex: Exchange) -> None:
        """The observer: queue a sampled answer that was served whole, or count its drop."""
        body, answer, key, version = ex.judged, ex.answer, ex.key, ex.version
        if body is None or answer is None or key is None or version is None or ex.arm is None:
            return
        if ex.error_class is not None or not 200 <= ex.status < 300:
            return  # no answer to judge
        if answer.truncated or not answer.text:
            # Cut at the capture budget, or tool calls only: a judge would score something
            # the caller did not get.
            self._not_judgeable.inc()
            return
        try:
            self._queue.put_nowait(
                Judged(key, version, ex.arm, ex.rollout_id, body, answer.text, ex.span)
            )
        except asyncio.QueueFull:
            self._queue_full.inc()

    def listening(self, target: Target) -> None:
        """Where this process's data plane took its port: the workers start sending there."""
        if self._caller is not None or not self._config.online:
            return
        # Its own pool, the size of the workers: judge calls never wait on, nor take, the
        # connections of eval runs (the data plane calls the provider on its own pool).
        limit = self._config.online_max_in_flight
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
        self._caller = EvalCaller(self._session, target, self._config.request_timeout)
        for n in range(limit):
            self._tasks.spawn(self._work(self._caller), name=f"online-judge-{n}")

    async def close(self) -> None:
        """Stop the workers (answers still queued are not judged) and close the client.
        Twice is once: called when the server starts draining, and at exit."""
        left = self._queue.qsize()
        if left and self._tasks:
            self._shutdown.inc(left)  # lost, and said so
        await self._tasks.close()
        self._caller = None
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def drain(self) -> None:
        """Wait until every queued answer was judged (tests and benchmarks)."""
        await self._queue.join()

    async def _work(self, caller: EvalCaller) -> None:
        while True:
            judged = await self._queue.get()
            try:
                await self.judge(caller, judged)
            except Exception:
                # A bug must not stop the worker: count it, say it once.
                self._failed.inc()
                if self._warn_once("error"):
                    _log.exception("online judging of %s failed", judged.key)
            finally:
                self._queue.task_done()

    async def judge(self, caller: EvalCaller, judged: Judged) -> float | None:
        """Score one answer and record it; the score, or None when there is none."""
        slug = judged.key.slug
        rule = self._config.online_rule(slug)
        if rule is None:  # cannot happen: only a rule's share samples
            return None
        name = self._config.online_judge(rule)
        ref = judge_ref(name, self._snapshot())
        if isinstance(ref, str):
            self._no_judge.inc()
            if self._warn_once(f"judge:{ref}"):
                _log.warning("online judging of %s: %s; its answers are not judged", slug, ref)
            return None
        body = _judge_body(ref, rule.rubric, judged)
        if body is None:
            self._failed.inc()
            if self._warn_once(f"body:{slug}"):
                _log.warning("online judging of %s: a request without messages to judge", slug)
            return None
        trace = None if self._tracing is None else self._trace(judged, ref)
        if trace is None:
            said = await caller.call(ref.slug, ref.version, body)
        else:
            said = await _traced_call(caller, ref, body, trace)
        score = read_score(said.text) if said.error is None else f"no score: {said.error}"
        if trace is not None:
            trace.end(
                None if isinstance(score, str) else score.score, _judge_error(said.error, score)
            )
        if isinstance(score, str):
            self._failed.inc()
            if self._warn_once(f"score:{ref.slug}:{ref.version}"):
                _log.warning(
                    "online judging of %s: %s v%d gave no score (%s)",
                    slug,
                    ref.slug,
                    ref.version,
                    score[:200],
                )
            return None
        self._record(judged, score.score)
        return score.score

    def _record(self, judged: Judged, score: float) -> None:
        m = self._metrics
        slug, version, variant = m.prompt_labels(judged.key, judged.version)
        m.judge_score.labels(slug, version, judged.arm, variant).observe(score)
        self._scored.inc()
        if self._window is not None and judged.rollout_id is not None and judged.arm in SERVED_ARMS:
            self._window.observe_feedback(
                judged.key, judged.rollout_id, judged.arm, JUDGE_SCORE, score
            )

    def _trace(self, judged: Judged, ref: JudgeRef) -> JudgeTrace:
        """The judge call's span, linked to the judged request's."""
        assert self._tracing is not None
        attributes: Attributes = {
            SLUG: judged.key.slug,
            VERSION: judged.version,
            ARM: judged.arm,
        }
        if judged.rollout_id is not None:
            attributes[ROLLOUT] = judged.rollout_id
        return self._tracing.judge(judged.link, attributes, ref.slug, ref.version)

    def _warn_once(self, problem: str) -> bool:
        if problem in self._warned:
            return False
        if len(self._warned) < 1000:  # bounded: problems name slugs and versions
            self._warned.add(problem)
        return True


def _judge_body(ref: JudgeRef, rubric: str, judged: Judged) -> dict[str, Any] | None:
    """The judge's request: the client's messages and the answer, or None without any."""
    try:
        request = orjson.loads(judged.body)
    except orjson.JSONDecodeError:
        return None
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    conversation = _Conversation([m for m in messages if isinstance(m, Mapping)])
    return judge_body(ref, rubric, conversation, judged.text)


async def _traced_call(
    caller: EvalCaller, ref: JudgeRef, body: dict[str, Any], trace: JudgeTrace
) -> EvalAnswer:
    """The judge's call under its span: its request continues the judge's trace."""
    try:
        return await caller.call(ref.slug, ref.version, body, trace=trace.headers)
    except BaseException as exc:  # cancelled at shutdown, or a bug: the span still ends
        trace.end(None, "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal")
        raise


def _judge_error(error: str | None, score: object) -> str | None:
    """``error.type`` of a judge call: its call failed, or its answer held no score."""
    if error is not None:
        return "judge_call_failed"
    return "no_score" if isinstance(score, str) else None
