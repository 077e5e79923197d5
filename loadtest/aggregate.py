"""From per-round cells to the figures we report.

Each round measures every (scenario, target) once, direct included, so "added" figures
compare a proxy with the direct run of the same round. Rounds are then combined by the
median of every figure: one round disturbed by another process on a shared machine does
not move the result, where pooling all samples would let it spoil p99.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from loadtest.targets import (
    ALL_TARGETS,
    BASELINES,
    DIRECT,
    LITELLM,
    MINIMAL,
    NGINX,
    PROMPTPROXY,
    PROMPTPROXY_CLAUDE,
    PROMPTPROXY_SWAP,
    ROLLOUTS,
)

#: A translated target -> the pass-through it is compared with (same proxy, same run).
TRANSLATED = {PROMPTPROXY_CLAUDE: PROMPTPROXY}

Cell = dict[str, Any]


def value(cell: Cell | None, *path: str) -> float | None:
    node: Any = cell
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return float(node)


def find(
    cells: Sequence[Cell], scenario: str, target: str, round_: int | None = None
) -> Cell | None:
    for cell in cells:
        same_round = round_ is None or cell.get("round") == round_
        if cell["scenario"] == scenario and cell["target"] == target and same_round:
            return cell
    return None


def add_deltas(runs: Sequence[Cell]) -> None:
    """Fill ``added_ms`` of each proxy run: its percentiles minus direct's, same round."""
    for cell in runs:
        direct = find(runs, cell["scenario"], DIRECT, cell.get("round"))
        if cell["target"] == DIRECT or direct is None:
            cell["added_ms"] = None
            continue
        added: dict[str, float | None] = {}
        for kind, prefix in (("latency_ms", ""), ("ttfb_ms", "ttfb_")):
            for q in ("p50", "p90", "p99"):
                mine, base = value(cell, kind, q), value(direct, kind, q)
                added[prefix + q] = None if mine is None or base is None else mine - base
        cell["added_ms"] = added


def _median_tree(nodes: Sequence[Any]) -> Any:
    first = nodes[0]
    if isinstance(first, dict):
        return {
            k: _median_tree([n.get(k) if isinstance(n, dict) else None for n in nodes])
            for k in first
        }
    if isinstance(first, int | float) and not isinstance(first, bool):
        numbers = [float(n) for n in nodes if isinstance(n, int | float)]
        return statistics.median(numbers)
    return first


def _vs_minimal(runs: Sequence[Cell]) -> dict[tuple[str, str], list[float]]:
    """Each target's CPU per request over the minimal's in the same round and scenario."""
    return _paired_ratios(runs, MINIMAL)


def _paired_ratios(runs: Sequence[Cell], base: str) -> dict[tuple[str, str], list[float]]:
    """Each target's CPU per request over ``base``'s in the same round and scenario.

    The two ran a minute apart at most. On a shared VM the CPU a request costs drifts by
    10-25 % between minutes (other tenants' use of the host's caches; the same tree in two
    processes measured that far apart), so a ratio of per-target medians, taken from
    different rounds, moved with the drift; a ratio within a round mostly cancels it."""
    baseline = {
        (c["scenario"], c.get("round")): value(c, "cpu_us_per_req", "target")
        for c in runs
        if c["target"] == base
    }
    ratios: dict[tuple[str, str], list[float]] = {}
    for c in runs:
        mine = value(c, "cpu_us_per_req", "target")
        theirs = baseline.get((c["scenario"], c.get("round")))
        if mine is not None and theirs:
            ratios.setdefault((c["scenario"], c["target"]), []).append(mine / theirs)
    return ratios


def combine(runs: Sequence[Cell], names: Sequence[str] = ALL_TARGETS) -> list[Cell]:
    """One cell per (scenario, target): medians over rounds; counts summed, RSS the max;
    ``cpu_vs_minimal``: the median of the round-by-round ratios (see ``_vs_minimal``); a
    translated target's ``cpu_vs_passthrough`` likewise, against its pass-through.
    ``names``: the targets to keep, in report order."""
    paired = _vs_minimal(runs)
    passthrough = {t: _paired_ratios(runs, base) for t, base in TRANSLATED.items()}
    scenarios = dict.fromkeys(c["scenario"] for c in runs)
    present = {(c["scenario"], c["target"]) for c in runs}
    keys = [(s, t) for s in scenarios for t in names if (s, t) in present]
    combined = []
    for scenario, target in keys:
        group = [c for c in runs if c["scenario"] == scenario and c["target"] == target]
        cell = _median_tree(group)
        cell.pop("round", None)
        cell["rounds"] = len(group)
        for count in ("requested", "ok", "errors"):
            cell[count] = sum(c[count] for c in group)
        cell["error_samples"] = [s for c in group for s in c["error_samples"]][:5]
        cell["stopped_early"] = next(
            (c["stopped_early"] for c in group if c["stopped_early"]), None
        )
        rss = [c["peak_rss_mib"] for c in group if c["peak_rss_mib"] is not None]
        cell["peak_rss_mib"] = max(rss) if rss else None
        cpu = [c["cpu_us_per_req"]["target"] for c in group if c["cpu_us_per_req"]["target"]]
        cell["cpu_us_per_req_range"] = [min(cpu), max(cpu)] if cpu else None
        ratios = paired.get((scenario, target))
        cell["cpu_vs_minimal"] = statistics.median(ratios) if ratios else None
        if target in passthrough:
            ratios = passthrough[target].get((scenario, target))
            cell["cpu_vs_passthrough"] = statistics.median(ratios) if ratios else None
        combined.append(cell)
    return combined


def vs_minimal(cells: Sequence[Cell], scenario: str, target: str) -> float | None:
    """``target``'s CPU/request over the minimal's in ``scenario``: the round-by-round
    median when the cells have it, else (results written before it) the ratio of medians."""
    cell = find(cells, scenario, target)
    if cell is None:
        return None
    if cell.get("cpu_vs_minimal") is not None:
        return float(cell["cpu_vs_minimal"])
    mine = value(cell, "cpu_us_per_req", "target")
    base = value(find(cells, scenario, MINIMAL), "cpu_us_per_req", "target")
    return mine / base if mine is not None and base else None


def cpu_ratios(cells: Sequence[Cell]) -> dict[str, float | None]:
    """promptproxy CPU/request / minimal CPU/request, per scenario."""
    return {
        scenario: vs_minimal(cells, scenario, PROMPTPROXY)
        for scenario in dict.fromkeys(c["scenario"] for c in cells)
    }


def swap_in_cost(cells: Sequence[Cell]) -> dict[str, dict[str, float | None]]:
    """What prompt swap-in adds over plain pass-through, per scenario, in the same run."""
    cost: dict[str, dict[str, float | None]] = {}
    for scenario in dict.fromkeys(c["scenario"] for c in cells):
        plain, swap = find(cells, scenario, PROMPTPROXY), find(cells, scenario, PROMPTPROXY_SWAP)
        if plain is None or swap is None:
            continue

        def delta(*path: str, a: Cell = swap, b: Cell = plain) -> float | None:
            x, y = value(a, *path), value(b, *path)
            return None if x is None or y is None else x - y

        cost[scenario] = {
            "cpu_us_per_req": delta("cpu_us_per_req", "target"),
            "latency_p50_ms": delta("latency_ms", "p50"),
            "latency_p99_ms": delta("latency_ms", "p99"),
        }
    return cost


def translation_cost(cells: Sequence[Cell]) -> dict[str, dict[str, float | None]]:
    """What translating to Anthropic's Messages API and back adds over the pass-through
    (promptproxy_claude against promptproxy), per scenario, in the same run: CPU per request
    of both and their ratio (the median of the round-by-round ratios), and what each adds to
    direct at p50 and p99, latency and, for streams, time to first byte."""
    cost: dict[str, dict[str, float | None]] = {}
    for translated, base in TRANSLATED.items():
        for scenario in dict.fromkeys(c["scenario"] for c in cells):
            plain, cell = find(cells, scenario, base), find(cells, scenario, translated)
            if plain is None or cell is None:
                continue
            cpu_plain = value(plain, "cpu_us_per_req", "target")
            cpu = value(cell, "cpu_us_per_req", "target")
            ratio = value(cell, "cpu_vs_passthrough")
            if ratio is None and cpu is not None and cpu_plain:
                ratio = cpu / cpu_plain
            row: dict[str, float | None] = {
                "cpu_us_per_req_passthrough": cpu_plain,
                "cpu_us_per_req": cpu,
                "cpu_ratio": ratio,
            }
            for key in ("p50", "p99", "ttfb_p50", "ttfb_p99"):
                row[f"added_{key}_ms_passthrough"] = value(plain, "added_ms", key)
                row[f"added_{key}_ms"] = value(cell, "added_ms", key)
            cost[scenario] = row
    return cost


def rollout_cost(cells: Sequence[Cell]) -> dict[str, dict[str, dict[str, float | None]]]:
    """What each rollout target adds over plain swap-in, per scenario, in the same run; for
    shadow also per shadowed request (the delta divided by the shadowed share)."""
    cost: dict[str, dict[str, dict[str, float | None]]] = {}
    for target, (_, percent) in ROLLOUTS.items():
        for scenario in dict.fromkeys(c["scenario"] for c in cells):
            base, cell = find(cells, scenario, PROMPTPROXY_SWAP), find(cells, scenario, target)
            if base is None or cell is None:
                continue

            def delta(*path: str, a: Cell = cell, b: Cell = base) -> float | None:
                x, y = value(a, *path), value(b, *path)
                return None if x is None or y is None else x - y

            cpu = delta("cpu_us_per_req", "target")
            cost.setdefault(target, {})[scenario] = {
                "percent": percent,
                "cpu_us_per_req": cpu,
                "cpu_us_per_affected_req": None if cpu is None else cpu * 100 / percent,
                "latency_p50_ms": delta("latency_ms", "p50"),
                "latency_p99_ms": delta("latency_ms", "p99"),
            }
    return cost


def baseline_change(cells: Sequence[Cell]) -> dict[str, dict[str, dict[str, float | None]]]:
    """This tree against ``--baseline REV``, per compared target and scenario, same run:
    CPU per request (and its change in %), and what each adds to direct at p50 and p99."""
    change: dict[str, dict[str, dict[str, float | None]]] = {}
    for old_name, new_name in BASELINES.items():
        for scenario in dict.fromkeys(c["scenario"] for c in cells):
            old, new = find(cells, scenario, old_name), find(cells, scenario, new_name)
            if old is None or new is None:
                continue
            cpu_old = value(old, "cpu_us_per_req", "target")
            cpu_new = value(new, "cpu_us_per_req", "target")
            row: dict[str, float | None] = {
                "cpu_us_per_req_baseline": cpu_old,
                "cpu_us_per_req": cpu_new,
                "cpu_change_pct": (
                    None if cpu_old is None or cpu_new is None else (cpu_new / cpu_old - 1) * 100
                ),
            }
            for q in ("p50", "p99"):
                row[f"added_{q}_ms_baseline"] = value(old, "added_ms", q)
                row[f"added_{q}_ms"] = value(new, "added_ms", q)
            change.setdefault(new_name, {})[scenario] = row
    return change


#: The rows of the peer comparison, in report order.
PEER_ROWS = (PROMPTPROXY, MINIMAL, NGINX, LITELLM)


def peer_comparison(cells: Sequence[Cell]) -> dict[str, dict[str, dict[str, float | None]]]:
    """promptproxy beside the minimal pass-through and the peers, per scenario, same run:
    CPU per request (and as a multiple of promptproxy's), req/s, added p50/p99, peak RSS."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for scenario in dict.fromkeys(c["scenario"] for c in cells):
        ours = value(find(cells, scenario, PROMPTPROXY), "cpu_us_per_req", "target")
        for target in PEER_ROWS:
            cell = find(cells, scenario, target)
            if cell is None:
                continue
            cpu = value(cell, "cpu_us_per_req", "target")
            out.setdefault(scenario, {})[target] = {
                "cpu_us_per_req": cpu,
                "cpu_vs_promptproxy": None if cpu is None or not ours else cpu / ours,
                "rps": value(cell, "rps"),
                "added_p50_ms": value(cell, "added_ms", "p50"),
                "added_p99_ms": value(cell, "added_ms", "p99"),
                "peak_rss_mib": value(cell, "peak_rss_mib"),
            }
    return out


def request_budgets(runs: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    """Targets whose measured phases were cut to a time budget: the budget and, per
    scenario, the measured requests of each round."""
    out: dict[str, dict[str, Any]] = {}
    for cell in runs:
        budget = cell.get("request_budget")
        if budget is None:
            continue
        entry = out.setdefault(cell["target"], {"seconds": budget["seconds"], "measured": {}})
        entry["measured"].setdefault(cell["scenario"], []).append(budget["measured"])
    return out
