"""Whether two variants' model patterns can match the same model, and how specific they are:
what ``prompts lint`` warns of."""

from __future__ import annotations

import fnmatch
import itertools
import random

import pytest

from proxy.registry.model_globs import common_model, specificity


@pytest.mark.parametrize(
    ("a", "b", "model"),
    [
        ("claude-*", "*-3-opus", "claude-3-opus"),
        ("gpt-4o*", "gpt-4?-mini", "gpt-4o-mini"),
        ("claude-[34]*", "claude-[!3]-x", "claude-4-x"),
        ("claude-*", "gpt-*", None),
        ("claude-3", "claude-3*", "claude-3"),
        ("o1-[ab]", "o1-[!ab]", None),
        ("x[", "x[", "x["),  # an unclosed bracket is a character, as fnmatch reads it
    ],
)
def test_a_model_both_patterns_match(a: str, b: str, model: str | None) -> None:
    assert common_model(a, b) == model
    assert (common_model(b, a) is None) == (model is None)


def test_agrees_with_fnmatch_on_small_patterns() -> None:
    """Every witness matches both; no pair with a short common model is called apart."""
    atoms = ["a", "b", "-", "*", "?", "[ab]", "[!a]", "["]
    words = [""] + ["".join(w) for n in range(1, 6) for w in itertools.product("ab-x[", repeat=n)]
    rng = random.Random(7)
    for _ in range(500):
        a, b = ("".join(rng.choices(atoms, k=rng.randint(0, 4))) for _ in range(2))
        found = common_model(a, b)
        if found is not None:
            assert fnmatch.fnmatchcase(found, a), (a, b)
            assert fnmatch.fnmatchcase(found, b), (a, b)
        else:
            both = (w for w in words if fnmatch.fnmatchcase(w, a) and fnmatch.fnmatchcase(w, b))
            assert next(both, None) is None, (a, b)


def test_specificity_is_the_most_literal_patterns_literal_characters() -> None:
    assert specificity(["claude-*"]) == 7
    assert specificity(["*", "claude-3-5-sonnet*"]) == 17
    assert specificity(["gpt-4?-[ab]"]) == 8  # a class's members count, as on the request path
    assert specificity([]) == 0
