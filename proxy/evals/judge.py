"""Judges: registry prompts (``judge.NAME``) that score an answer against a rubric.

A judge is a prompt like any other, with its versions, statuses and audit, so a judge
change is pushed, evaluated (on the judge's own labelled suite: ``label`` assertions) and
promoted like a prompt change. An eval run uses each judge's prod version at its start
and records it with every score. The judge's template gets the assertion's ``rubric`` as
the variable ``rubric``; the judged exchange comes as the user message (the conversation,
then a line ``Answer:`` and the answer), and the judge must answer ``SCORE_SHAPE``.

A judge must pin its model: a score is only comparable with another from the same model,
so a judge version is a fixed (prompt, model) pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.evals.assertions import Judge
from proxy.evals.suite import Suite
from proxy.prompt_key import InvalidPromptKey, PromptKey
from proxy.registry.models import RegistrySnapshot

#: The variable a judge's template gets the rubric in.
RUBRIC = "rubric"


@dataclass(frozen=True, slots=True)
class JudgeRef:
    """The judge version a run uses, and the model it pins."""

    slug: str
    version: int
    model: str


class Conversation(Protocol):
    """What was asked: a suite's case, or a served request's messages (online judging)."""

    @property
    def messages(self) -> Sequence[Mapping[str, Any]]: ...


def judges_for(
    suite: Suite, default: str | None, snapshot: RegistrySnapshot
) -> dict[str, JudgeRef] | str:
    """Each judge the suite's judge assertions name (``default`` where they name none) at
    its prod version now, or why the suite cannot be judged."""
    names: set[str] = set()
    for case in suite.cases:
        for assertion in case.assertions:
            if isinstance(assertion, Judge):
                name = assertion.judge or default
                if name is None:
                    return (
                        f"case {case.name!r} has a judge assertion naming no judge, and "
                        "evals.judge names no default judge"
                    )
                names.add(name)
    found: dict[str, JudgeRef] = {}
    for name in sorted(names):
        ref = judge_ref(name, snapshot)
        if isinstance(ref, str):
            return ref
        found[name] = ref
    return found


def judge_ref(name: str, snapshot: RegistrySnapshot) -> JudgeRef | str:
    """The judge ``name`` at its prod version now, or why it cannot judge."""
    try:
        key = PromptKey(name)
    except InvalidPromptKey:
        return f"{name!r} is not a prompt slug"
    prod = snapshot.prod.get(key)
    if prod is None:
        return f"the judge {name!r} has no prod version (push and promote one first)"
    version = snapshot.versions[key][prod]
    if not version.model:
        return (
            f"the judge {name!r} v{prod} pins no model: a judge's scores are comparable "
            "only from one model, so a judge version pins it"
        )
    if RUBRIC not in {v.name for v in version.variables}:
        return f"the judge {name!r} v{prod} declares no `{RUBRIC}` variable for the rubric"
    return JudgeRef(name, prod, version.model)


def judged_text(case: Conversation, answer: str) -> str:
    """What the judge reads: the caller's conversation, then the answer under ``Answer:``."""
    lines = [
        f"{message.get('role', 'user')}: {_content(message.get('content'))}"
        for message in case.messages
    ]
    return "Question:\n" + "\n".join(lines) + "\n\nAnswer:\n" + answer


def judge_body(ref: JudgeRef, rubric: str, case: Conversation, answer: str) -> dict[str, Any]:
    return {
        "model": ref.model,
        "messages": [{"role": "user", "content": judged_text(case, answer)}],
        "prompt_variables": {RUBRIC: rubric},
    }


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their text
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)
