"""Keys and tokens in prompt text: the shapes of the log redaction (``proxy/log.py``) plus
the providers' and platforms' well-known key formats.

Not the redaction's own patterns: those err towards redacting (any word after ``Bearer``,
any ``sk-`` with six characters), which is right for a log line and wrong for refusing a
push, where prose such as "explain bearer tokens" or a placeholder ``sk-...`` must pass.
Here each shape needs the length (and, for the generic forms, a digit) of a real key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

#: The rule every secret finding names.
SECRET_RULE = "secret_in_template"

# A generic token: long, from a token alphabet, with at least one digit (prose has none).
_TOKEN = r"(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,}"


@dataclass(frozen=True, slots=True)
class SecretShape:
    #: What the finding calls it: "an Anthropic API key".
    what: str
    pattern: re.Pattern[str]


#: First match wins at a position: the specific shapes come before the generic ones.
SECRET_SHAPES: tuple[SecretShape, ...] = (
    SecretShape("an Anthropic API key (sk-ant-...)", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{16,}")),
    SecretShape("an OpenAI-style API key (sk-...)", re.compile(r"\bsk-(?!ant-)[A-Za-z0-9_-]{20,}")),
    SecretShape("an AWS access key id (AKIA...)", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    SecretShape("a GitHub token (ghp_...)", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}")),
    SecretShape(
        "a GitHub fine-grained token (github_pat_...)",
        re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
    ),
    SecretShape("a Google API key (AIza...)", re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    SecretShape("a Slack token (xoxb-/xoxp-...)", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    SecretShape(
        "a private key (PEM)", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----")
    ),
    SecretShape("a bearer token", re.compile(rf"(?i)\bbearer\s+{_TOKEN}")),
    SecretShape(
        "a key in a URL (?key=...)",
        re.compile(r"(?i)[?&](?:api[-_]?key|key|token|access_token)=[^&\s\"'{}<>]{8,}"),
    ),
    SecretShape(
        "a credential header (Authorization / api-key)",
        re.compile(
            r"(?i)\b(?:authorization|x-api-key|api-key)[\"']?\s*[:=]\s*[\"']?"
            rf"(?:(?:bearer|basic|token)\s+)?{_TOKEN}"
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class SecretHit:
    what: str
    start: int
    end: int


def find_secrets(text: str) -> Iterator[SecretHit]:
    """Every key-shaped span of ``text``, in order; spans that overlap (``Authorization:
    Bearer sk-...`` is three shapes) are one hit, named by the shape that starts first
    (the earlier listed at the same place)."""
    spans = sorted(
        (match.start(), rank, match.end(), shape.what)
        for rank, shape in enumerate(SECRET_SHAPES)
        for match in shape.pattern.finditer(text)
    )
    reached = -1
    for start, _, end, what in spans:
        if start >= reached:
            yield SecretHit(what, start, end)
        reached = max(reached, end)
