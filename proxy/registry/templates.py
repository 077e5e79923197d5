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

from proxy.registry.models import BlockSpec, VariableSpec

#: The name a base template reads its blocks by: ``{{ block.tone }}``.
BLOCK_NAME = "block"

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


def template_problems(
    template: str, variables: Sequence[VariableSpec], blocks: Sequence[BlockSpec] = ()
) -> list[TemplateProblem]:
    """Every problem found, in order; empty when the template can be accepted. A template
    with ``blocks`` reads them as ``block.NAME``, each declared one at least once."""
    env = make_environment()
    problems = _spec_problems(variables)
    declared = {v.name for v in variables}
    if blocks:
        if BLOCK_NAME in declared:
            message = f"variable name {BLOCK_NAME!r} is reserved for the blocks"
            problems.append(TemplateProblem(message, variable=BLOCK_NAME))
        declared.add(BLOCK_NAME)
    try:
        ast = env.parse(template)
        problems.extend(_ast_problems(ast, declared))
        if blocks:
            problems.extend(_block_problems(ast, [b.name for b in blocks]))
        if problems:
            return problems
        compiled = env.from_string(ast)
    except TemplateAssertionError as exc:  # unknown filters and tests
        return [*problems, TemplateProblem(exc.message or str(exc), exc.lineno)]
    except TemplateSyntaxError as exc:
        return [*problems, TemplateProblem(f"syntax error: {exc.message}", exc.lineno)]
    except RecursionError:  # parser and AST walk recurse per nesting level
        return [*problems, TemplateProblem("template is nested too deeply")]
    trial: dict[str, Any] = {
        v.name: v.default if v.has_default else _DUMMIES.get(v.type) for v in variables
    }
    if blocks:
        trial[BLOCK_NAME] = Blocks({b.name: "x" for b in blocks})
    try:
        compiled.render(trial)
    except SecurityError as exc:
        return [TemplateProblem(f"refused by the sandbox: {exc}", _template_line(exc))]
    except RecursionError as exc:  # a self-calling macro: would fail every request
        return [TemplateProblem("a macro calls itself without end", _template_line(exc))]
    except Exception:  # stand-in values may not suit the template: that is data-dependent
        pass
    return []


def check_template(
    template: str, variables: Sequence[VariableSpec], blocks: Sequence[BlockSpec] = ()
) -> None:
    """Raise the first ``TemplateProblem`` (its message lists every undeclared name)."""
    problems = template_problems(template, variables, blocks)
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


def names_read(text: str) -> frozenset[str] | None:
    """The variables a template reads; None when it does not parse (a stored fill the
    composition then leaves out)."""
    try:
        return frozenset(meta.find_undeclared_variables(make_environment().parse(text)))
    except (TemplateSyntaxError, RecursionError):
        return None


def _block_problems(ast: nodes.Template, declared: Sequence[str]) -> list[TemplateProblem]:
    """``block`` may only be read as ``block.NAME`` (or ``block['NAME']``) of a declared
    block, and every declared block must be read: a fill no template shows is a mistake."""
    problems: list[TemplateProblem] = []
    read: set[str] = set()
    named: set[int] = set()
    for node in _walk(ast):
        name: object
        if isinstance(node, nodes.Getattr):
            target, name = node.node, node.attr
        elif isinstance(node, nodes.Getitem):
            key = node.arg
            target, name = node.node, key.value if isinstance(key, nodes.Const) else None
        else:
            continue
        if not (isinstance(target, nodes.Name) and target.name == BLOCK_NAME):
            continue
        named.add(id(target))
        if not isinstance(name, str):
            problems.append(TemplateProblem("a block must be named literally", node.lineno))
        elif name not in declared:
            problems.append(
                TemplateProblem(f"block {name!r} is used but not declared in blocks", node.lineno)
            )
        else:
            read.add(name)
    for node in ast.find_all(nodes.Name):
        if node.name == BLOCK_NAME and node.ctx == "load" and id(node) not in named:
            message = f"{BLOCK_NAME!r} must be read as {BLOCK_NAME}.NAME of a declared block"
            problems.append(TemplateProblem(message, node.lineno))
    for name in declared:
        if name not in read:
            message = f"block {name!r} is declared but the template never reads block.{name}"
            problems.append(TemplateProblem(message, variable=name))
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


#: A block as a renderer takes it: name, a key naming its text (a hash), and the text.
BlockFill = tuple[str, str, str]


class Blocks:
    """The rendered blocks as a template reads them, ``block.tone`` or ``block['tone']``.

    Not a dict: Jinja looks an attribute up before an item, so a block named ``items`` or
    ``keys`` would read the dict's method instead of its text."""

    __slots__ = ("_texts",)

    def __init__(self, texts: Mapping[str, str]) -> None:
        self._texts = texts

    def __getattr__(self, name: str) -> str:
        try:
            return self._texts[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> str:
        return self._texts[name]


@dataclass(frozen=True, slots=True)
class _Compiled:
    template_text: str
    #: the caller's own sequence object: on the hot path the same tuple comes back each time
    given_variables: Sequence[VariableSpec]
    variables: tuple[VariableSpec, ...]
    template: Template
    #: name -> (type check, has default, default), in declaration order
    specs: dict[str, tuple[Callable[[Any], bool], bool, Any]]
    #: the caller's own sequence of block fills (identity, as ``given_variables``)
    given_blocks: Sequence[BlockFill] = ()
    #: name -> compiled fill, rendered with the variables and read as ``block.NAME``
    blocks: tuple[tuple[str, Template], ...] = ()
    #: The text when the caller gives no values, rendered once: the environment has no
    #: globals, so a render depends on its context alone. None when that render fails (a
    #: required variable): each request then renders and gets the error.
    defaults_text: str | None = None


class PromptRenderer:
    """Renders versions on the request path; compiled templates live in bounded LRUs.

    A composed prompt (a base whose blocks its overrides fill) is rendered under its own
    key, while the compiled base template and fills are shared by every composition that
    uses them: 200 tenants of one base compile the base once.

    One instance per event loop: the caches are not locked for use from several threads."""

    def __init__(self, max_cached: int = 16_384) -> None:
        self._env = make_environment()
        self._max_cached = max_cached
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        #: key -> (text, compiled text): the text guards against a key reused for another
        self._templates: OrderedDict[str, tuple[str, Template]] = OrderedDict()
        self._failures: OrderedDict[str, None] = OrderedDict()

    def render(
        self,
        version_key: str,
        template: str,
        variables: Sequence[VariableSpec],
        values: Mapping[str, Any],
        blocks: Sequence[BlockFill] = (),
        template_key: str | None = None,
    ) -> str:
        """Render with the caller's ``values``. Raises ``RenderError`` subclasses for bad
        values (the caller's fault) and ``TemplateProblem`` only if a stored template does not
        compile at all (the store's fault, never the caller's). ``version_key`` names the
        whole of what is rendered: template, variables and ``blocks``; ``template_key`` the
        template alone (default ``version_key``), so compositions share its compilation."""
        compiled = self._compiled(version_key, template, variables, blocks, template_key)
        if not values and compiled.defaults_text is not None:
            return compiled.defaults_text
        return _render(compiled, values)

    def first_failure(self, key: str) -> bool:
        """True the first time ``key`` is named (of the last 1,024): a failure logged once,
        not once per request."""
        if key in self._failures:
            return False
        self._failures[key] = None
        while len(self._failures) > 1024:
            self._failures.popitem(last=False)
        return True

    def _compiled(
        self,
        key: str,
        template: str,
        variables: Sequence[VariableSpec],
        blocks: Sequence[BlockFill],
        template_key: str | None,
    ) -> _Compiled:
        hit = self._cache.get(key)
        # Comparing the text guards against a caller reusing a key for other content;
        # for the same string object it is an identity check.
        if hit is not None and hit.template_text == template:
            same_blocks = hit.given_blocks is blocks or _block_keys(hit.given_blocks) == (
                _block_keys(blocks)
            )
            if hit.given_variables is variables and same_blocks:
                self._cache.move_to_end(key)
                return hit
            if same_blocks and hit.variables == tuple(variables):
                # Equal declarations in a new object (a reloaded snapshot): remember the object
                # so later requests take the identity path.
                hit = replace(hit, given_variables=variables, given_blocks=blocks)
                self._cache[key] = hit
                self._cache.move_to_end(key)
                return hit
        # No re-check here: the sandbox is what keeps rendering safe, and re-running creation
        # checks (which may grow stricter) must not break versions already serving traffic.
        unknown = [v.type for v in variables if v.type not in VARIABLE_TYPES]
        if unknown:
            raise TemplateProblem(f"stored variable declarations use unknown type {unknown[0]!r}")
        compiled = _Compiled(
            template_text=template,
            given_variables=variables,
            variables=tuple(variables),
            template=self._template(template_key or key, template),
            specs={v.name: (VARIABLE_TYPES[v.type], v.has_default, v.default) for v in variables},
            given_blocks=blocks,
            blocks=tuple((name, self._template(text_key, text)) for name, text_key, text in blocks),
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

    def _template(self, key: str, text: str) -> Template:
        """The compiled ``text``; ``key`` names that text (a version's or a fill's hash)."""
        hit = self._templates.get(key)
        if hit is not None and hit[0] == text:
            self._templates.move_to_end(key)
            return hit[1]
        try:
            compiled = self._env.from_string(text)
        except TemplateSyntaxError as exc:
            raise TemplateProblem(f"stored template does not compile: {exc}", exc.lineno) from exc
        self._templates[key] = (text, compiled)
        while len(self._templates) > self._max_cached:
            self._templates.popitem(last=False)
        return compiled


def _block_keys(blocks: Sequence[BlockFill]) -> tuple[tuple[str, str], ...]:
    return tuple((name, text_key) for name, text_key, _ in blocks)


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
        if compiled.blocks:
            # Fills are rendered first, over the same variables, and reach the base as data:
            # a fill can never change the base's structure.
            rendered = {name: fill.render(context) for name, fill in compiled.blocks}
            context[BLOCK_NAME] = Blocks(rendered)
        return compiled.template.render(context)
    except (TemplateError, ArithmeticError, TypeError, ValueError) as exc:
        raise RenderFailed(f"the prompt could not be rendered: {exc}", None) from exc
    except RecursionError:
        # A macro calling itself as deep as a caller's value says: the caller's input, a
        # 400, not a crash of the request.
        message = "the prompt could not be rendered: it recurses too deeply"
        raise RenderFailed(message, None) from None


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    names.update({list: "list", dict: "object", type(None): "null"})
    return names.get(type(value), type(value).__name__)
