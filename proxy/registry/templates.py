"""Prompt templates: checked once when a version is created, rendered on every request.

Templates are Jinja2, rendered in ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``
and no globals. ``check_template`` refuses at creation time what the sandbox would only
refuse at traffic time (``_``-attributes, ``attr``, globals, include/import/extends), so an
author learns of it on push rather than from failing requests. The sandbox stays the runtime
guarantee. Caller values are context data only: nothing a caller sends is ever compiled.
"""

from __future__ import annotations

import keyword
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType, TracebackType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateAssertionError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from proxy.registry.models import VariableSpec

#: Variable types a version may declare. ``None`` (untyped) accepts any JSON value.
VARIABLE_TYPES: Mapping[str | None, Callable[[Any], bool]] = MappingProxyType(
    {
        None: lambda v: True,
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
)
# Typed stand-ins for the trial render; lists hold one item so loop bodies run once.
_DUMMIES: dict[str | None, Any] = {
    None: "x",
    "string": "x",
    "number": 1.5,
    "integer": 1,
    "boolean": True,
    "list": ["x"],
    "object": {},
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Names Jinja binds itself: a variable by that name would be shadowed or unreachable.
_RESERVED = frozenset(
    {"true", "false", "none", "loop", "self", "super", "caller", "varargs", "kwargs"}
)
# Jinja's default globals; this environment has none, so using one is a mistake worth naming.
_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace"})
_REFUSED_NODES: dict[type[nodes.Node], str] = {
    nodes.Include: "{% include %} is not available in prompt templates",
    nodes.Import: "{% import %} is not available in prompt templates",
    nodes.FromImport: "{% from ... import %} is not available in prompt templates",
    nodes.Extends: "{% extends %} is not available in prompt templates",
    nodes.Block: "{% block %} is not available in prompt templates",
}
# Filters whose first argument is an attribute name (others take it as attribute=...).
_ATTRIBUTE_FIRST = frozenset({"selectattr", "rejectattr", "groupby"})
# Bounds for intercepted operators: ``'x' * 10**9`` would otherwise exhaust memory.
_MAX_SEQUENCE = 100_000
_MAX_POW_BITS = 4_096


class TemplateProblem(Exception):
    """A template or its variable declarations cannot be accepted (found at creation time)."""

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        variable: str | None = None,
    ):
        super().__init__(message if line is None else f"line {line}: {message}")
        self.message = message
        self.line = line
        self.column = column
        #: Set for problems with a declaration, so a file loader can point at its line.
        self.variable = variable


class RenderError(Exception):
    """Request-time failure caused by the caller's values; ``variable`` names the culprit."""

    def __init__(self, message: str, variable: str | None):
        super().__init__(message)
        self.message = message
        self.variable = variable


class MissingVariable(RenderError):
    pass


class UndeclaredVariable(RenderError):
    pass


class VariableTypeError(RenderError):
    pass


class RenderFailed(RenderError):
    """The values passed the declared checks but rendering still failed (e.g. an object
    variable lacks a key the template reads). ``variable`` is None: no single name to blame."""


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and max(left.bit_length(), 1) * right > _MAX_POW_BITS:
                raise SecurityError("the result of '**' would be too large")
        elif operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if sized and len(seq) * count > _MAX_SEQUENCE:
                    raise SecurityError("the result of '*' would be too long")
        return super().call_binop(context, operator, left, right)


def make_environment() -> ImmutableSandboxedEnvironment:
    """The one rendering configuration. Changing it changes the output of existing versions.

    ``trim_blocks``/``lstrip_blocks`` make a line holding only ``{% if %}`` leave no blank
    line; ``keep_trailing_newline`` keeps the template's text exactly as written.
    """
    env = _PromptEnvironment(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        cache_size=0,
    )
    env.globals.clear()
    return env


def template_problems(template: str, variables: Sequence[VariableSpec]) -> list[TemplateProblem]:
    """Every problem found, in order; empty when the template can be accepted."""
    env = make_environment()
    problems = _spec_problems(variables)
    try:
        ast = env.parse(template)
        problems.extend(_ast_problems(ast, {v.name for v in variables}))
        if problems:
            return problems
        compiled = env.from_string(ast)
    except TemplateAssertionError as exc:  # unknown filters and tests
        return [*problems, TemplateProblem(exc.message or str(exc), exc.lineno)]
    except TemplateSyntaxError as exc:
        return [*problems, TemplateProblem(f"syntax error: {exc.message}", exc.lineno)]
    except RecursionError:  # parser and AST walk recurse per nesting level
        return [*problems, TemplateProblem("template is nested too deeply")]
    trial = {v.name: v.default if v.has_default else _DUMMIES.get(v.type) for v in variables}
    try:
        compiled.render(trial)
    except SecurityError as exc:
        return [TemplateProblem(f"refused by the sandbox: {exc}", _template_line(exc))]
    except RecursionError as exc:  # a self-calling macro: would fail every request
        return [TemplateProblem("a macro calls itself without end", _template_line(exc))]
    except Exception:  # stand-in values may not suit the template: that is data-dependent
        pass
    return []


def check_template(template: str, variables: Sequence[VariableSpec]) -> None:
    """Raise the first ``TemplateProblem`` (its message lists every undeclared name)."""
    problems = template_problems(template, variables)
    if problems:
        raise problems[0]


def _spec_problems(variables: Sequence[VariableSpec]) -> list[TemplateProblem]:
    problems: list[TemplateProblem] = []
    seen: set[str] = set()
    for spec in variables:
        name = spec.name
        if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
            message = (
                f"invalid variable name {name!r}: use a letter or '_', then letters, digits, '_'"
            )
            problems.append(TemplateProblem(message, variable=str(name)))
            continue
        if name in _RESERVED:
            problems.append(TemplateProblem(f"variable name {name!r} is reserved", variable=name))
        if name in seen:
            problems.append(TemplateProblem(f"variable {name!r} is declared twice", variable=name))
        seen.add(name)
        if spec.type not in VARIABLE_TYPES:
            allowed = ", ".join(str(t) for t in VARIABLE_TYPES if t)
            message = f"variable {name!r} has unknown type {spec.type!r} (use one of: {allowed})"
            problems.append(TemplateProblem(message, variable=name))
        elif spec.has_default and not VARIABLE_TYPES[spec.type](spec.default):
            message = f"default {spec.default!r} of variable {name!r} is not of type {spec.type}"
            problems.append(TemplateProblem(message, variable=name))
    return problems


def _ast_problems(ast: nodes.Template, declared: set[str]) -> list[TemplateProblem]:
    problems: list[TemplateProblem] = []
    # One refusal per construct: the '__class__' literal inside a refused x|attr('__class__')
    # is not reported again.
    covered: set[int] = set()
    for node in _walk(ast):
        refused = None if id(node) in covered else _refusal(node)
        if refused:
            problems.append(TemplateProblem(refused, node.lineno))
            covered.update(id(const) for const in node.find_all(nodes.Const))
    undeclared = meta.find_undeclared_variables(ast) - declared
    first_use: dict[str, int] = {}
    for node in ast.find_all(nodes.Name):
        if node.name in undeclared and node.ctx == "load":
            first_use.setdefault(node.name, node.lineno)
    special = _RESERVED | _GLOBALS
    for name in sorted(undeclared & special):
        problems.append(
            TemplateProblem(f"{name!r} is not available in prompt templates", first_use.get(name))
        )
    plain = sorted(undeclared - special, key=lambda n: (first_use.get(n, 0), n))
    if plain:
        names = ", ".join(repr(n) for n in plain)
        problems.append(
            TemplateProblem(f"variables used but not declared: {names}", first_use.get(plain[0]))
        )
    problems.sort(key=lambda p: p.line or 0)
    return problems


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def _refusal(node: nodes.Node) -> str | None:
    for kind, message in _REFUSED_NODES.items():
        if isinstance(node, kind):
            return message
    if isinstance(node, nodes.Getattr | nodes.NSRef) and node.attr.startswith("_"):
        return f"attribute {node.attr!r} is private (names starting with '_' are refused)"
    if isinstance(node, nodes.Getitem):
        key = node.arg
        if isinstance(key, nodes.Const) and isinstance(key.value, str) and key.value[:1] == "_":
            return f"item {key.value!r} is private (names starting with '_' are refused)"
    if isinstance(node, nodes.Name) and node.name == "self" and node.ctx == "load":
        return "'self' is not available in prompt templates"
    if isinstance(node, nodes.Filter) and node.name == "attr":
        return "the 'attr' filter is refused: use x.name or x['name']"
    if isinstance(node, nodes.Filter) and node.name == "map" and node.args:
        first = node.args[0]
        if not isinstance(first, nodes.Const) or first.value == "attr":
            return "map() needs a literal filter name other than 'attr'"
    if isinstance(node, nodes.Filter | nodes.Test):
        # These name an attribute by string, which the AST check cannot see as a Getattr.
        names = [kw.value for kw in node.kwargs if kw.key == "attribute"]
        if node.name in _ATTRIBUTE_FIRST and node.args:
            names.append(node.args[0])
        for name in names:
            path = name.value if isinstance(name, nodes.Const) else None
            if not isinstance(path, str | int):
                return f"the attribute name given to {node.name!r} must be a literal"
            if any(part.startswith("_") for part in str(path).split(".")):
                return f"attribute {path!r} is private (names starting with '_' are refused)"
    if isinstance(node, nodes.Const) and isinstance(node.value, str) and "__" in node.value:
        return f"string literal {node.value!r} contains '__' (refused: reaches Python internals)"
    return None


def _template_line(exc: BaseException) -> int | None:
    """Jinja rewrites tracebacks so template frames carry template line numbers."""
    tb: TracebackType | None = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@dataclass(frozen=True, slots=True)
class _Compiled:
    template_text: str
    #: the caller's own sequence object: on the hot path the same tuple comes back each time
    given_variables: Sequence[VariableSpec]
    variables: tuple[VariableSpec, ...]
    template: Template
    #: name -> (type check, has default, default), in declaration order
    specs: dict[str, tuple[Callable[[Any], bool], bool, Any]]
    #: The text when the caller gives no values, rendered once: the environment has no
    #: globals, so a render depends on its context alone. None when that render fails (a
    #: required variable): each request then renders and gets the error.
    defaults_text: str | None = None


class PromptRenderer:
    """Renders versions on the request path; compiled templates live in a bounded LRU.

    One instance per event loop: the cache is not locked for use from several threads."""

    def __init__(self, max_cached: int = 512) -> None:
        self._env = make_environment()
        self._max_cached = max_cached
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()

    def render(
        self,
        version_key: str,
        template: str,
        variables: Sequence[VariableSpec],
        values: Mapping[str, Any],
    ) -> str:
        """Render with the caller's ``values``. Raises ``RenderError`` subclasses for bad
        values (the caller's fault) and ``TemplateProblem`` only if a stored template does not
        compile at all (the store's fault, never the caller's)."""
        compiled = self._compiled(version_key, template, variables)
        if not values and compiled.defaults_text is not None:
            return compiled.defaults_text
        return _render(compiled, values)

    def _compiled(self, key: str, template: str, variables: Sequence[VariableSpec]) -> _Compiled:
        hit = self._cache.get(key)
        # Comparing the text guards against a caller reusing a key for other content;
        # for the same string object it is an identity check.
        if hit is not None and hit.template_text == template:
            if hit.given_variables is variables:
                self._cache.move_to_end(key)
                return hit
            if hit.variables == tuple(variables):
                # Equal declarations in a new object (a reloaded snapshot): remember the object
                # so later requests take the identity path.
                hit = replace(hit, given_variables=variables)
                self._cache[key] = hit
                self._cache.move_to_end(key)
                return hit
        # No re-check here: the sandbox is what keeps rendering safe, and re-running creation
        # checks (which may grow stricter) must not break versions already serving traffic.
        try:
            source = self._env.from_string(template)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(f"stored template does not compile: {exc}", exc.lineno) from exc
        unknown = [v.type for v in variables if v.type not in VARIABLE_TYPES]
        if unknown:
            raise TemplateProblem(f"stored variable declarations use unknown type {unknown[0]!r}")
        compiled = _Compiled(
            template_text=template,
            given_variables=variables,
            variables=tuple(variables),
            template=source,
            specs={v.name: (VARIABLE_TYPES[v.type], v.has_default, v.default) for v in variables},
        )
        try:
            defaults_text = _render(compiled, {})
        except RenderError:
            pass
        else:
            compiled = replace(compiled, defaults_text=defaults_text)
        self._cache[key] = compiled
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return compiled


def _render(compiled: _Compiled, values: Mapping[str, Any]) -> str:
    specs = compiled.specs
    for name in values:
        if name not in specs:
            raise UndeclaredVariable(
                f"prompt variable {name!r} is not declared by this prompt version", name
            )
    context: dict[str, Any] = {}
    for name, (is_valid, has_default, default) in specs.items():
        if name in values:
            value = values[name]
            if not is_valid(value):
                kind = next(s.type for s in compiled.variables if s.name == name)
                raise VariableTypeError(
                    f"prompt variable {name!r} must be of type {kind}, got {_json_type(value)}",
                    name,
                )
            context[name] = value
        elif has_default:
            context[name] = default
        else:
            raise MissingVariable(f"prompt variable {name!r} is required", name)
    try:
        return compiled.template.render(context)
    except (TemplateError, ArithmeticError, TypeError, ValueError) as exc:
        raise RenderFailed(f"the prompt could not be rendered: {exc}", None) from exc


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    names.update({list: "list", dict: "object", type(None): "null"})
    return names.get(type(value), type(value).__name__)
