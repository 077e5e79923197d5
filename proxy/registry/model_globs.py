"""The model patterns of variants (``match: [claude-*]``): how specific one is, and whether
two can match the same model.

A request's model selects the variant whose patterns match it, the most specific variant
first (the literal characters of its most literal pattern), ties by variant name. Two
variants of one slug at the same specificity whose patterns share a model are therefore
decided by their names alone, which nobody reading the files would guess: ``prompts lint``
warns of them, naming such a model. Patterns are ``fnmatch`` globs, matched case-sensitively
(``*``, ``?``, ``[abc]``, ``[!abc]``).
"""

from __future__ import annotations

import fnmatch
import string
from functools import cache

from proxy.registry.models import pattern_specificity

#: Characters a model name is made of, as far as a negated class (``[!0-9]``) or ``?`` can
#: stand for one: printable ASCII without whitespace.
_ALPHABET = frozenset(string.ascii_letters + string.digits + string.punctuation)
#: ``*``; every other token is the set of characters it may match (None: any).
_STAR = "*"
_Token = str | frozenset[str] | None
#: What a witness shows for ``?``: a letter reads as a model name's.
_ANY_CHAR = "x"


#: The request path's order of variants: one formula for it and for the lint.
specificity = pattern_specificity


def common_model(a: str, b: str) -> str | None:
    """A model name both globs match, or None when no name can match both."""
    left, right = _tokens(a), _tokens(b)

    @cache
    def meet(i: int, j: int) -> str | None:
        # Each call consumes a token of one side or a character of both, so it ends.
        if i == len(left) and j == len(right):
            return ""
        if i < len(left) and left[i] == _STAR:
            found = meet(i + 1, j)  # the star matches nothing more
            if found is None and j < len(right):
                found = _eat(right[j], meet(i, j + 1))
            return found
        if j < len(right) and right[j] == _STAR:
            found = meet(i, j + 1)
            if found is None and i < len(left):
                found = _eat(left[i], meet(i + 1, j))
            return found
        if i == len(left) or j == len(right):
            return None
        shared = _both(left[i], right[j])
        if shared is not None and not shared:
            return None
        rest = meet(i + 1, j + 1)
        return None if rest is None else _char(shared) + rest

    return meet(0, 0)


def _eat(token: _Token, rest: str | None) -> str | None:
    """A star consumed ``token`` of the other side: the witness gets one of its characters
    (none for the other side's star, which then matches nothing more)."""
    if rest is None:
        return None
    return rest if token == _STAR else _char(token) + rest


def _both(a: _Token, b: _Token) -> frozenset[str] | None:
    if a is None:
        return None if b is None else frozenset(b)
    if b is None:
        return frozenset(a)
    return frozenset(a) & frozenset(b)


def _char(chars: _Token) -> str:
    if chars is None or chars == _STAR:
        return _ANY_CHAR
    return min(chars)


def _tokens(pattern: str) -> tuple[_Token, ...]:
    """``pattern`` cut as ``fnmatch.translate`` reads it: runs of ``*`` as one star, ``?`` as
    any character, a bracket class as its characters, an unclosed ``[`` as itself."""
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        i += 1
        if char == "*":
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
        elif char == "?":
            tokens.append(None)
        elif char == "[":
            end = i
            if end < len(pattern) and pattern[end] == "!":
                end += 1
            if end < len(pattern) and pattern[end] == "]":
                end += 1
            while end < len(pattern) and pattern[end] != "]":
                end += 1
            if end >= len(pattern):
                tokens.append(frozenset("["))
            else:
                bracket = pattern[i - 1 : end + 1]
                tokens.append(frozenset(c for c in _ALPHABET if fnmatch.fnmatchcase(c, bracket)))
                i = end + 1
        else:
            tokens.append(frozenset(char))
    return tuple(tokens)
