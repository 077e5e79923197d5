"""Prompt keys: the text stores and logs hold parses back, and old slugs stay themselves."""

from __future__ import annotations

import copy

import pytest

from proxy.prompt_key import InvalidPromptKey, Layer, PromptKey


def test_a_bare_slug_is_the_plain_key_and_its_own_text() -> None:
    key = PromptKey.parse("support-reply")
    assert key == PromptKey("support-reply")
    assert key.is_plain
    assert key.text == str(key) == "support-reply"


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (PromptKey("faq", variant="claude"), "faq@claude"),
        (PromptKey("faq", Layer("tier", "enterprise")), "tier=enterprise/faq"),
        (PromptKey("faq", Layer("tenant", "acme.eu"), "gpt-4o"), "tenant=acme.eu/faq@gpt-4o"),
        (PromptKey("_guardrails"), "_guardrails"),
    ],
)
def test_every_key_round_trips_through_its_text(key: PromptKey, text: str) -> None:
    assert key.text == text
    assert PromptKey.parse(text) == key
    assert hash(PromptKey.parse(text)) == hash(key)
    assert not key.is_plain or key.slug == text


@pytest.mark.parametrize(
    "text",
    ["", "a b", "x" * 65, "vip=acme/faq", "tenant=/faq", "faq@", "tenant=a/b/c", "a@b@c", "/faq"],
)
def test_malformed_texts_are_refused(text: str) -> None:
    with pytest.raises(InvalidPromptKey):
        PromptKey.parse(text)


def test_parts_outside_the_alphabet_are_refused() -> None:
    with pytest.raises(InvalidPromptKey, match="slug"):
        PromptKey("a/b")
    with pytest.raises(InvalidPromptKey, match="variant"):
        PromptKey("faq", variant="x@y")
    with pytest.raises(InvalidPromptKey, match="tenant name"):
        Layer("tenant", "a=b")


def test_keys_sort_by_slug_then_base_first() -> None:
    keys = [
        PromptKey("b"),
        PromptKey("a", Layer("tier", "pro")),
        PromptKey("a", variant="claude"),
        PromptKey("a"),
    ]
    assert [k.text for k in sorted(keys)] == ["a", "a@claude", "tier=pro/a", "b"]


def test_keys_are_equal_and_hash_alike_by_value_only() -> None:
    keys = [
        PromptKey("support"),
        PromptKey("support", variant="claude"),
        PromptKey("support", Layer("tier", "pro")),
        PromptKey("support", Layer("tenant", "pro")),
        PromptKey("billing"),
    ]
    twins = [PromptKey.parse(key.text) for key in keys]
    for key, twin in zip(keys, twins, strict=True):
        assert key is not twin
        assert key == twin
        assert hash(key) == hash(twin)
    assert len(set(keys) | set(twins)) == len(keys)
    assert {key: key.text for key in keys}[
        PromptKey.parse("tier=pro/support")
    ] == "tier=pro/support"
    assert PromptKey("support") != "support"
    assert copy.deepcopy(keys) == keys
