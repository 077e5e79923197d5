"""The layers of ``proxy/`` (docs/design.md, "Layers"): every module belongs to one, imports
only from its own layer or below, and the packages of one layer never import each other in
a cycle. Read from the source (AST), so lazy and type-only imports count too."""

from __future__ import annotations

import ast
import fnmatch
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"

#: Bottom to top. ``proxy.x.*`` is the package ``proxy.x`` and everything in it; other
#: patterns match module names (``fnmatch``). Packages not written yet have their place too.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "proxy",
            "proxy.errors",
            "proxy.config",
            "proxy.sse",
            "proxy.http_headers",
            "proxy.log",
            "proxy.tasks",
            "proxy.loop_lag",
            "proxy.fd_limit",
            "proxy.models",
            "proxy.prompt_key",
            "proxy.stats",
            "proxy.preflight",
            # Which provider serves a model: the config's providers, matched (pure).
            "proxy.providers",
            # Pure data about each backend, which the configuration validates against.
            "proxy.backends.kinds",
            "proxy.pg.*",
            "proxy.anthropic.*",
            # The safety policy: pure functions of a version's texts.
            "proxy.safety.*",
        ),
    ),
    ("simulator", ("proxy.simulator.*",)),
    ("registry", ("proxy.registry.*",)),
    ("exchange", ("proxy.metrics", "proxy.metric_series", "proxy.exchange.*")),
    # Spans of requests and calls (OpenTelemetry, imported only when enabled).
    ("tracing", ("proxy.tracing.*",)),
    ("shadow", ("proxy.shadow.*",)),
    ("analysis", ("proxy.analysis.*",)),
    ("feedback", ("proxy.feedback", "proxy.feedback_*")),
    ("usage", ("proxy.usage.*",)),
    ("capture", ("proxy.capture.*",)),
    ("pipeline", ("proxy.pipeline.*",)),
    ("evals", ("proxy.evals.*",)),
    ("backends", ("proxy.backends.*",)),
    ("services", ("proxy.services",)),
    ("web", ("proxy.web.*",)),
    ("server", ("proxy.server", "proxy.workers.*")),
    ("cli", ("proxy.cli.*", "proxy.cli_*", "proxy.admin_client", "proxy.__main__")),
)
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}
#: Layers only some layers above may import, whatever their rank: the simulated provider
#: is a separate program that ``serve`` (and the CLI's ``simulate``) may start in-process.
ONLY_FOR = {"simulator": frozenset({"server", "cli"})}


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*") and module == pattern[:-2]:
        return True
    return fnmatch.fnmatchcase(module, pattern)


def layer_of(module: str) -> str | None:
    for name, patterns in LAYERS:
        if any(_matches(module, pattern) for pattern in patterns):
            return name
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """``proxy.registry.store`` -> ``proxy.registry``; a top-level module is its own."""
    return ".".join(module.split(".")[:2])


def _resolve(name: str) -> str:
    """The module an import names: ``from proxy.shadow import sink_redis`` imports the
    module ``proxy.shadow.sink_redis`` when there is one."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
        return name
    return name.rpartition(".")[0] or name


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported proxy module) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield node.lineno, _resolve(f"{base}.{alias.name}")


def proxy_modules() -> list[tuple[Path, str]]:
    return [(path, module_name(path)) for path in sorted(PROXY.rglob("*.py"))]


def edges() -> list[tuple[Path, int, str, str]]:
    """(file, line, importer, imported) for every import of a proxy module."""
    found: dict[tuple[Path, int, str, str], None] = {}  # ordered, once per name and line
    for path, module in proxy_modules():
        for line, imported in imports(path, module):
            if imported == "proxy" or imported.startswith("proxy."):
                found[(path, line, module, imported)] = None
    return list(found)


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_every_module_has_a_layer() -> None:
    missing = [
        f"{path.relative_to(ROOT)} ({module})"
        for path, module in proxy_modules()
        if layer_of(module) is None
    ]
    assert not missing, (
        "modules in no layer: " + ", ".join(missing) + ". Add each to LAYERS in "
        "tests/unit/test_layers.py (and to the Layers section of docs/design.md): in the "
        "lowest layer that holds everything it imports."
    )


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = []
    for path, line, module, imported in edges():
        mine, theirs = layer_of(module), layer_of(imported)
        if mine is None or theirs is None:
            continue  # reported by test_every_module_has_a_layer
        allowed = ONLY_FOR.get(theirs)
        if RANK[theirs] > RANK[mine] or (allowed is not None and mine not in allowed | {theirs}):
            wrong.append(f"{where(path, line)}: {module} ({mine}) imports {imported} ({theirs})")
    assert not wrong, (
        "imports against the layers (a module may import only from its own layer or below; "
        "see docs/design.md, Layers):\n" + "\n".join(wrong)
    )


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_packages_of_a_layer_do_not_import_each_other_in_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    sites: dict[tuple[str, str], str] = {}
    for path, line, module, imported in edges():
        mine, theirs = package_of(module), package_of(imported)
        if mine == theirs or layer_of(module) != layer_of(imported):
            continue
        graph.setdefault(mine, set()).add(theirs)
        sites.setdefault((mine, theirs), f"{where(path, line)} imports {imported}")
    cycle = _cycle(graph)
    assert cycle is None, (
        f"packages of the {layer_of(cycle[0])} layer import each other in a cycle: "
        + " -> ".join(cycle)
        + "\n"
        + "\n".join(sites[(a, b)] for a, b in itertools.pairwise(cycle))
        + "\nMove what they share into one of them, or into a layer below."
    )


# -- the check itself ---------------------------------------------------------------------


def test_the_check_sees_upward_lazy_and_relative_imports(tmp_path: Path) -> None:
    copy = tmp_path / "example.py"
    copy.write_text(
        "from proxy.services import Services\n"
        "def later() -> None:\n"
        "    from . import run\n"
        "    import proxy.web.app\n",
        encoding="utf-8",
    )
    found = [imported for _, imported in imports(copy, "proxy.pipeline.example")]
    assert found == ["proxy.services", "proxy.pipeline.run", "proxy.web.app"]
    assert [layer_of(name) for name in found] == ["services", "pipeline", "web"]


def test_the_map_places_modules_not_written_yet() -> None:
    assert layer_of("proxy.pg.pool") == "foundation"
    assert layer_of("proxy.backends.postgres") == "backends"
    assert layer_of("proxy.backends.kinds") == "foundation"
    assert layer_of("proxy.cli.shadow") == layer_of("proxy.cli") == "cli"
    assert layer_of("proxy.cli_shadow") == "cli"
    assert layer_of("proxy.newthing") is None
    assert layer_of("proxy.registry") == layer_of("proxy.registry.store") == "registry"


def test_a_cycle_is_found_and_named() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
