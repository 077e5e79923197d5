from __future__ import annotations

from typing import Any

import pytest

from proxy.registry.models import VariableSpec
from proxy.registry.templates import (
    MissingVariable,
    PromptRenderer,
    RenderFailed,
    TemplateProblem,
    UndeclaredVariable,
    VariableTypeError,
    check_template,
    template_problems,
)

X = (VariableSpec("x"), VariableSpec("items", "list"), VariableSpec("user", "object"))


def problem(template: str, variables: tuple[VariableSpec, ...] = X) -> TemplateProblem:
    with pytest.raises(TemplateProblem) as info:
        check_template(template, variables)
    return info.value


SSTI = [
    "{{ ''.__class__.__mro__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ lipsum }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner() }}",
    "{% set ns = namespace(a=1) %}{{ ns.a }}",
    "{{ range(10**9) }}",
    "{{ dict(a=1) }}",
    "{{ self._TemplateReference__context }}",
    "{{ self }}",
    "{% include 'x' %}",
    "{% import 'x' as y %}",
    "{% from 'x' import y %}",
    "{% extends 'base' %}",
    "{% block b %}{{ super() }}{% endblock %}",
    "{{ x.__dict__ }}",
    "{{ x._private }}",
    "{{ x['__globals__'] }}",
    "{{ x['_private'] }}",
    "{{ x|attr('__class__') }}",
    "{{ x|attr('upper') }}",
    "{{ items|map('attr', '__class__')|list }}",
    "{{ items|map(x)|list }}",
    "{{ items|map(attribute='__class__')|list }}",
    "{{ items|map(attribute='a._b')|list }}",
    "{{ items|map(attribute=x)|list }}",
    "{{ items|selectattr('_a')|list }}",
    "{{ items|groupby('__class__') }}",
    "{{ items|sort(attribute='_a') }}",
    "{{ '{0.__class__}'.format(x) }}",
    "{{ items.append(1) }}",
    "{{ user.update({'a': 1}) }}",
    "{{ 'a' * 1000000 }}",
    "{{ 9 ** 99999 }}",
    "{% for i in items %}{% endfor %}{{ loop.index }}",
]


@pytest.mark.parametrize("template", SSTI)
def test_ssti_corpus_is_refused_at_creation(template: str) -> None:
    found = problem(template)
    assert found.line == 1
    assert found.message


def test_problem_names_the_construct() -> None:
    assert "'__class__'" in problem("{{ ''.__class__ }}").message
    assert "attr" in problem("{{ x|attr('y') }}").message
    assert "include" in problem("{% include 'x' %}").message
    assert "'lipsum'" in problem("{{ lipsum }}").message
    assert "'self'" in problem("{{ self }}").message
    assert "sandbox" in problem("{{ items.append(1) }}").message


def test_every_refusal_is_reported_with_its_line() -> None:
    found = template_problems("ok\n{{ x.__class__ }}\n\n{% include 'a' %}\n{{ nope }}", X)
    assert [(p.line, p.message.split(" ")[0]) for p in found] == [
        (2, "attribute"),
        (4, "{%"),
        (5, "variables"),
    ]


def test_syntax_error_has_its_line() -> None:
    found = problem("line one\nline two\n{% if x %}\nno end")
    assert found.line == 4
    assert found.message.startswith("syntax error")
    assert problem("a\n\n{{ x | nosuchfilter }}").line == 3
    assert "nosuchfilter" in problem("{{ x | nosuchfilter }}").message


def test_undeclared_variables_are_all_named_with_first_use() -> None:
    found = problem("Hello\n{{ name }} {{ x }}\n{{ place }} {{ name }}")
    assert found.line == 2
    assert "'name'" in found.message
    assert "'place'" in found.message
    assert "'x'" not in found.message


def test_loop_set_macro_and_with_names_are_local() -> None:
    check_template(
        "{% set greeting = 'hi' %}{{ greeting }}"
        "{% for item in items %}{{ loop.index }}{{ item }}{% endfor %}"
        "{% macro m(a) %}[{{ a }}]{% endmacro %}{{ m(x) }}"
        "{% with b = 1 %}{{ b }}{% endwith %}",
        X,
    )
    assert "'item'" in problem("{% for item in items %}{% endfor %}{{ item }}").message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (VariableSpec("1a"), "invalid variable name"),
        (VariableSpec("customer-name"), "invalid variable name"),
        (VariableSpec("class"), "invalid variable name"),
        (VariableSpec("loop"), "reserved"),
        (VariableSpec("a", "str"), "unknown type 'str'"),
        (VariableSpec("a", "string", 3, True), "not of type string"),
        (VariableSpec("a", "integer", True, True), "not of type integer"),
        (VariableSpec("a", "integer", 1.5, True), "not of type integer"),
        (VariableSpec("a", "number", False, True), "not of type number"),
        (VariableSpec("a", "boolean", "yes", True), "not of type boolean"),
        (VariableSpec("a", "list", {}, True), "not of type list"),
    ],
)
def test_bad_declarations(spec: VariableSpec, fragment: str) -> None:
    found = problem("text", (spec,))
    assert fragment in found.message
    assert found.variable == spec.name


def test_duplicate_declaration() -> None:
    assert "twice" in problem("{{ a }}", (VariableSpec("a"), VariableSpec("a"))).message


def test_good_declarations_and_defaults() -> None:
    check_template(
        "{{ a }}{{ b }}{{ c }}{{ d }}{{ e }}{{ f }}{{ g }}",
        (
            VariableSpec("a"),
            VariableSpec("b", "string", "x", True),
            VariableSpec("c", "number", 1, True),
            VariableSpec("d", "integer", 2, True),
            VariableSpec("e", "boolean", False, True),
            VariableSpec("f", "list", [], True),
            VariableSpec("g", "object", {"k": 1}, True),
        ),
    )


SUPPORT = (
    VariableSpec("customer_name", "string"),
    VariableSpec("product", "string"),
    VariableSpec("tone", "string", "friendly", True),
)
SUPPORT_TEMPLATE = (
    "Help {{ customer_name|upper }} with {{ product }}.\n"
    "{% if tone == 'formal' %}\nBe formal.\n{% else %}\nBe {{ tone }}.\n{% endif %}\n"
)


def test_render_with_default_conditional_and_filter() -> None:
    renderer = PromptRenderer()
    values = {"customer_name": "ada", "product": "Widget"}
    text = renderer.render("k", SUPPORT_TEMPLATE, SUPPORT, values)
    assert text == "Help ADA with Widget.\nBe friendly.\n"
    formal = renderer.render("k", SUPPORT_TEMPLATE, SUPPORT, {**values, "tone": "formal"})
    assert formal == "Help ADA with Widget.\nBe formal.\n"


def test_a_call_without_values_gets_the_defaults_every_time() -> None:
    specs = (
        VariableSpec("shop", default="a bookshop", has_default=True),
        VariableSpec("n", "integer", default=3, has_default=True),
    )
    template = "Help {{ shop }} in {{ n }} sentences."
    renderer = PromptRenderer()
    for _ in range(3):  # the first call renders, the next take the text rendered then
        assert renderer.render("k", template, specs, {}) == "Help a bookshop in 3 sentences."
    assert renderer.render("k", template, specs, {"n": 2}) == "Help a bookshop in 2 sentences."
    # A template that needs a value keeps refusing a call without one, each time.
    renderer.render("s", SUPPORT_TEMPLATE, SUPPORT, {"customer_name": "a", "product": "b"})
    for _ in range(2):
        with pytest.raises(MissingVariable):
            renderer.render("s", SUPPORT_TEMPLATE, SUPPORT, {})


def test_loops_over_a_declared_list_and_read_objects() -> None:
    template = "{{ user.name }}:{% for item in items %} {{ loop.index }}={{ item }}{% endfor %}"
    text = PromptRenderer().render(
        "k", template, X, {"x": 0, "items": ["a", "b"], "user": {"name": "U"}}
    )
    assert text == "U: 1=a 2=b"


@pytest.mark.parametrize(
    "value", ["{{ 7*7 }}", "{% include 'x' %}", "{{ ''.__class__ }}", "{#", "{% raw %}"]
)
def test_caller_values_are_data(value: str) -> None:
    text = PromptRenderer().render(
        "k", SUPPORT_TEMPLATE, SUPPORT, {"customer_name": "a", "product": value}
    )
    assert f"with {value}." in text


def test_missing_variable() -> None:
    with pytest.raises(MissingVariable) as info:
        PromptRenderer().render("k", SUPPORT_TEMPLATE, SUPPORT, {"customer_name": "a"})
    assert info.value.variable == "product"
    assert "product" in str(info.value)


def test_undeclared_variable() -> None:
    values = {"customer_name": "a", "product": "b", "colour": "red"}
    with pytest.raises(UndeclaredVariable) as info:
        PromptRenderer().render("k", SUPPORT_TEMPLATE, SUPPORT, values)
    assert info.value.variable == "colour"


@pytest.mark.parametrize(
    ("type_name", "bad", "good"),
    [
        ("string", 3, "3"),
        ("number", True, 1.5),
        ("number", "1", 1),
        ("integer", False, 2),
        ("integer", 2.0, -2),
        ("boolean", 0, False),
        ("list", {"a": 1}, [1]),
        ("object", [1], {"a": 1}),
        ("string", None, ""),
    ],
)
def test_variable_types(type_name: str, bad: Any, good: Any) -> None:
    spec = (VariableSpec("v", type_name),)
    renderer = PromptRenderer()
    renderer.render("k", "{{ v }}", spec, {"v": good})
    with pytest.raises(VariableTypeError) as info:
        renderer.render("k", "{{ v }}", spec, {"v": bad})
    assert info.value.variable == "v"
    assert type_name in str(info.value)


def test_untyped_accepts_any_json_value() -> None:
    renderer = PromptRenderer()
    for value in ("s", 1, 1.5, True, None, [1], {"a": 1}):
        renderer.render("k", "{{ v }}", (VariableSpec("v"),), {"v": value})


def test_data_dependent_failures_are_render_errors() -> None:
    renderer = PromptRenderer()
    spec = (VariableSpec("user", "object"), VariableSpec("key", "string"))
    with pytest.raises(RenderFailed):
        renderer.render("a", "{{ user.name }}", spec[:1], {"user": {}})
    with pytest.raises(RenderFailed, match="unsafe"):
        renderer.render("b", "{{ user[key] }}", spec, {"user": {}, "key": "__class__"})
    n = (VariableSpec("n", "integer"),)
    with pytest.raises(RenderFailed):
        renderer.render("c", "{{ 'ab' * n }}", n, {"n": 10**7})


def test_cache_is_bounded_and_keyed() -> None:
    renderer = PromptRenderer(max_cached=2)
    spec = (VariableSpec("v"),)
    for key in ("a", "b", "c"):
        assert renderer.render(key, key + "{{ v }}", spec, {"v": 1}) == key + "1"
    assert list(renderer._cache) == ["b", "c"]
    # The same key with other content never serves the stale compiled template.
    assert renderer.render("c", "other {{ v }}", spec, {"v": 2}) == "other 2"
    assert renderer.render("c", "other {{ v }}", [VariableSpec("v")], {"v": 3}) == "other 3"


def test_template_text_is_kept_exactly() -> None:
    template = "  leading\n\ntrailing newline kept\n"
    assert PromptRenderer().render("k", template, (), {}) == template


def test_runaway_templates_are_refused() -> None:
    assert "itself" in problem("{% macro m(a) %}{{ m(a) }}{% endmacro %}{{ m(1) }}").message
    assert "nested" in problem("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}").message


def test_stored_template_that_does_not_compile_is_not_a_caller_error() -> None:
    with pytest.raises(TemplateProblem):
        PromptRenderer().render("k", "{% if %}", (), {})


def test_equal_declarations_in_a_new_object_hit_the_cache() -> None:
    renderer = PromptRenderer()
    renderer.render("k", "{{ v }}", (VariableSpec("v"),), {"v": 1})
    compiled = renderer._cache["k"].template
    new_object = (VariableSpec("v"),)
    assert renderer.render("k", "{{ v }}", new_object, {"v": 2}) == "2"
    assert renderer._cache["k"].template is compiled
    assert renderer._cache["k"].given_variables is new_object
