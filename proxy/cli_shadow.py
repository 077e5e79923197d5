"""`promptproxy shadow ...`: watch shadow pairs live, export them for offline evaluation, or
report whether the candidate diverges from stable more than stable does from itself.

Same conventions as `promptproxy prompts`: every command talks to the admin API (read role
suffices), one line per pair for people, `--output json` for scripts, errors exit non-zero.
`export` always writes JSON lines: it feeds evaluation scripts, not eyes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from proxy.cli_prompts import Context, _run, _when, admin_options, pass_ctx, table
from proxy.shadow.compare import (
    DIVERGENCE_BINS,
    MEASURES,
    Divergence,
    DivergenceCounts,
    ShadowVerdict,
    divergence,
    shadow_verdict,
)
from proxy.shadow.models import ArmResult, ShadowKind, ToolCall

#: Pairs fetched per admin API call while exporting (the API allows up to 10,000).
EXPORT_PAGE = 1000
_PREVIEW = 40


def _preview(text: str, width: int = _PREVIEW) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def _half(arm: dict[str, Any] | None, width: int = _PREVIEW) -> str:
    if arm is None:
        return "(no primary)"
    if arm.get("tool_calls"):
        said = "tools:" + ",".join(call["name"] or "?" for call in arm["tool_calls"])
    else:
        said = _preview(arm.get("text") or "", width)
    return (
        f"v{arm['version']} {arm['status'] or '-'} {_ms(arm.get('latency_ms'))} "
        f"{arm.get('error_class') or arm.get('finish_reason') or '-'} {said}"
    )


def pair_line(pair: dict[str, Any]) -> str:
    """One compact line: when, which pair, then each side's version, status, latency,
    finish reason (or error) and the start of its answer."""
    kind = "" if pair.get("kind") == "candidate" else f" [{pair.get('kind')}]"
    return (
        f"{_when(pair.get('ts'))} {pair['pair_id']}{kind}  "
        f"primary {_half(pair.get('primary'))}  |  shadow {_half(pair.get('shadow'))}"
    )


def _print(pairs: Iterable[Any], output: str) -> int:
    count = 0
    for pair in pairs:
        line = orjson.dumps(pair).decode() if output == "json" else pair_line(pair)
        click.echo(line)
        count += 1
    return count


@click.group("shadow")
@admin_options("Admin token (read role is enough).")
def shadow() -> None:
    """Shadow pairs: the stable answer users got next to the candidate's, per request."""


@shadow.command()
@click.argument("slug")
@click.option("--since", help="Show pairs from this far back first: 600, 10m, 2h or a unix time.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many pairs.")
@pass_ctx
def tail(ctx: Context, slug: str, since: str | None, count: int | None) -> None:
    """Follow the pairs of SLUG as they are recorded (Ctrl-C stops)."""

    def action() -> None:
        shown = 0
        for pair in ctx.client.follow_shadow_pairs(slug, since):
            shown += _print([pair], ctx.output)
            if count is not None and shown >= count:
                return

    try:
        _run(action)
    except KeyboardInterrupt:
        sys.exit(130)


F = TypeVar("F", bound=Callable[..., Any])


def _pair_range(command: F) -> F:
    """``--since`` and ``--limit``: which pairs a command reads (export and report)."""
    command = click.option(
        "--limit", type=click.IntRange(min=1), help="At most this many pairs (oldest first)."
    )(command)
    return click.option(
        "--since",
        default="1h",
        show_default=True,
        help="Pairs recorded since: seconds ago (600), 10m, 2h, 1d, or a unix time.",
    )(command)


@shadow.command()
@click.argument("slug")
@_pair_range
@pass_ctx
def export(ctx: Context, slug: str, since: str, limit: int | None) -> None:
    """Write the pairs of SLUG as JSON lines on stdout, oldest first, for offline evaluation."""

    def action() -> None:
        for pair in fetch_pairs(ctx, slug, since, limit):
            click.echo(orjson.dumps(pair).decode())

    _run(action)


def fetch_pairs(ctx: Context, slug: str, since: str, limit: int | None) -> Iterator[Any]:
    """The pairs of SLUG recorded since ``since``, oldest first, each once, at most
    ``limit``: pages through the admin API, which caps one answer."""
    cursor = since
    boundary: set[str] = set()  # pairs at the cursor's instant, already yielded
    written = 0
    while limit is None or written < limit:
        want = EXPORT_PAGE if limit is None else min(EXPORT_PAGE, limit - written)
        ask = want + len(boundary)
        page = ctx.client.shadow_pairs(slug, since=cursor, limit=ask)
        fresh = [p for p in page if p["pair_id"] not in boundary][:want]
        yield from fresh
        written += len(fresh)
        if not fresh or len(page) < ask:
            return
        # The next page starts at the last yielded pair's time; the pairs already
        # yielded at exactly that time are skipped there.
        last = fresh[-1]["ts"]
        done = boundary | {p["pair_id"] for p in fresh}
        boundary = {p["pair_id"] for p in page if p["ts"] == last and p["pair_id"] in done}
        cursor = repr(float(last))


# -- report -------------------------------------------------------------------------------

#: Noise = stable against stable, candidate = stable against candidate.
_REPORT_HEADERS = (
    *("MEASURE", "NOISE N", "MEAN", "P50", "P95"),
    *("CANDIDATE N", "MEAN", "P50", "P95", "P-VALUE", "VERDICT"),
)
_INSTALL_REPORT = "pip install 'promptproxy[report]'"


def _arm(data: Mapping[str, Any]) -> ArmResult:
    return ArmResult(
        version=int(data.get("version") or 0),
        status=int(data.get("status") or 0),
        text=data.get("text") or "",
        tool_calls=[
            ToolCall(call.get("name") or "", call.get("arguments") or "")
            for call in data.get("tool_calls") or []
        ],
        finish_reason=data.get("finish_reason"),
        truncated=bool(data.get("truncated")),
    )


def _answered(arm: Mapping[str, Any]) -> bool:
    return not arm.get("error_class") and 200 <= (arm.get("status") or 0) < 300


def pair_divergence(pair: Mapping[str, Any]) -> Divergence | None:
    """The pair's divergence: the one the runner stored with it, else computed from its
    halves. None when it cannot be compared: no primary, or a half that failed (errors
    are the error-rate check's business; a failed answer's text says nothing)."""
    primary, shadow = pair.get("primary"), pair.get("shadow")
    if primary is None or shadow is None or not (_answered(primary) and _answered(shadow)):
        return None
    stored = pair.get("divergence")
    if isinstance(stored, Mapping):
        return Divergence.from_dict(stored)
    # A pair does not record whether its request asked for JSON; unless it says so,
    # json_invalid stays not applicable rather than flagging every prose answer.
    return divergence(_arm(primary), _arm(shadow), expect_json=pair.get("expect_json") is True)


@dataclass(slots=True)
class _Side:
    counts: DivergenceCounts = field(default_factory=DivergenceCounts)
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MEASURES})
    pairs: int = 0

    def add(self, d: Divergence) -> None:
        self.pairs += 1
        self.counts.add(d)
        for name in MEASURES:
            value = d.get(name)
            if value is not None:
                self.values[name].append(value)


def _quantile(values: list[float], q: float) -> float | None:
    # Linear between order statistics (numpy's default): exact, the pairs are at hand.
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(slots=True)
class ShadowReport:
    slug: str
    since: str
    noise: _Side
    candidate: _Side
    skipped: int
    verdict: ShadowVerdict
    alpha: float
    margin: float
    min_pairs: int

    def to_dict(self) -> dict[str, Any]:
        measures = []
        for m in self.verdict.measures:
            row = m.to_dict()
            for side, name in ((self.noise, "noise"), (self.candidate, "candidate")):
                row[f"{name}_p50"] = _quantile(side.values[m.measure], 0.5)
                row[f"{name}_p95"] = _quantile(side.values[m.measure], 0.95)
            measures.append(row)
        return {
            "slug": self.slug,
            "since": self.since,
            "pairs": {
                "stable": self.noise.pairs,
                "candidate": self.candidate.pairs,
                "skipped": self.skipped,
            },
            "alpha": self.alpha,
            "margin": self.margin,
            "min_pairs": self.min_pairs,
            "result": self.verdict.result,
            "measures": measures,
        }


def build_report(
    slug: str,
    since: str,
    pairs: Iterable[Mapping[str, Any]],
    *,
    alpha: float,
    margin: float,
    min_pairs: int,
) -> ShadowReport:
    sides = {ShadowKind.STABLE.value: _Side(), ShadowKind.CANDIDATE.value: _Side()}
    skipped = 0
    for pair in pairs:
        side = sides.get(pair.get("kind") or "")
        d = pair_divergence(pair) if side is not None else None
        if side is None or d is None:
            skipped += 1
            continue
        side.add(d)
    noise, candidate = sides[ShadowKind.STABLE.value], sides[ShadowKind.CANDIDATE.value]
    verdict = shadow_verdict(
        noise.counts, candidate.counts, alpha=alpha, margin=margin, min_pairs=min_pairs
    )
    return ShadowReport(slug, since, noise, candidate, skipped, verdict, alpha, margin, min_pairs)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def report_text(report: ShadowReport) -> str:
    data = report.to_dict()
    head = (
        f"{report.slug}: pairs since {report.since}: {report.noise.pairs} stable vs stable "
        f"(noise), {report.candidate.pairs} stable vs candidate; {report.skipped} skipped "
        f"(unpaired or failed)"
    )
    rows = [
        (
            m["measure"],
            m["noise_n"],
            _num(m["noise_mean"]),
            _num(m["noise_p50"]),
            _num(m["noise_p95"]),
            m["candidate_n"],
            _num(m["candidate_mean"]),
            _num(m["candidate_p50"]),
            _num(m["candidate_p95"]),
            _p(m["p_value"]),
            m["result"] if m["noise_n"] or m["candidate_n"] else "n/a",
        )
        for m in data["measures"]
    ]
    body = table(rows, _REPORT_HEADERS)
    failed = [m.measure for m in report.verdict.measures if m.result == "fail"]
    why = {
        "fail": f"{', '.join(failed)}: the candidate diverges more than stable from itself",
        "pass": "no measure diverges more than stable from itself",
        "inconclusive": f"fewer than {report.min_pairs} comparable pairs of a kind",
    }[report.verdict.result]
    rule = (
        f"fail = one-sided Mann-Whitney p < {report.alpha:g} and candidate mean > noise "
        f"mean + {report.margin:g}"
    )
    return f"{head}\n{body}\n{rule}\nverdict: {report.verdict.result} ({why})"


def write_chart(report: ShadowReport, path: Path) -> None:
    """One panel per measure: the share of pairs per bin, noise against candidate, with
    the measure's verdict and p-value in the title. matplotlib only loads here, and with
    the Agg backend (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3).flatten()
    edges = [i / DIVERGENCE_BINS for i in range(DIVERGENCE_BINS + 1)]
    for ax, verdict in zip(axes, report.verdict.measures, strict=False):
        name = verdict.measure
        ax.set_xlim(0, 1)
        ax.set_xlabel("divergence (0 = same)")
        if not (verdict.noise_n or verdict.candidate_n):
            ax.set_title(f"{name}: n/a")
            ax.set_yticks([])
            ax.text(0.5, 0.5, "applies to no pair", ha="center", va="center", color="grey")
            continue
        for side, mean, label, colour in (
            (report.noise, verdict.noise_mean, "stable vs stable (noise)", "tab:blue"),
            (report.candidate, verdict.candidate_mean, "stable vs candidate", "tab:orange"),
        ):
            counts = side.counts.bins[name]
            n = sum(counts)
            shares = [c / n if n else 0.0 for c in counts]
            ax.stairs(shares, edges, fill=True, alpha=0.35, color=colour)
            ax.stairs(shares, edges, color=colour, label=f"{label}, n={n}")
            if mean is not None:
                # Where the margin applies: the gap between these two lines.
                ax.axvline(mean, color=colour, linestyle="--", linewidth=1)
        colour = {"fail": "tab:red", "pass": "black"}.get(verdict.result, "grey")
        ax.set_title(f"{name}: {verdict.result} (p={_p(verdict.p_value)})", color=colour)
        ax.set_ylabel("share of pairs (dashed: mean)")
        ax.legend(loc="upper right", fontsize="small")
    summary = axes[-1]
    summary.axis("off")
    summary.text(
        0.02,
        0.5,
        f"{report.slug}: {report.verdict.result}\n\n"
        f"pairs since {report.since}:\n"
        f"  {report.noise.pairs} stable vs stable\n"
        f"  {report.candidate.pairs} stable vs candidate\n\n"
        f"fail = one-sided Mann-Whitney p < {report.alpha:g}\n"
        f"  and mean gap > {report.margin:g}\n"
        f"min pairs {report.min_pairs}",
        fontsize=14,
        va="center",
    )
    figure.savefig(path, format="png", dpi=100)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@shadow.command()
@click.argument("slug")
@_pair_range
@click.option(
    "--alpha",
    type=click.FloatRange(0, 0.5, min_open=True),
    default=0.01,
    show_default=True,
    help="Significance level of each measure's test.",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="How much more the candidate must diverge on average than the noise to fail.",
)
@click.option(
    "--min-pairs",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Fewer comparable pairs of a kind than this: inconclusive.",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help=f"Also draw the distributions into this PNG file (needs {_INSTALL_REPORT}).",
)
@pass_ctx
def report(
    ctx: Context,
    slug: str,
    since: str,
    limit: int | None,
    alpha: float,
    margin: float,
    min_pairs: int,
    png: Path | None,
) -> None:
    """Does the candidate of SLUG diverge from stable more than stable from itself?

    Compares, per measure, the stable-vs-stable pairs (the noise: stable run twice) with
    the stable-vs-candidate pairs, by a one-sided Mann-Whitney U test. A report: exits 0
    whatever the verdict; non-zero only when it cannot be made.
    """
    if png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            _fail(f"--png needs matplotlib: {_INSTALL_REPORT}")

    def action() -> None:
        made = build_report(
            slug,
            since,
            fetch_pairs(ctx, slug, since, limit),
            alpha=alpha,
            margin=margin,
            min_pairs=min_pairs,
        )
        ctx.emit(made.to_dict(), lambda _: report_text(made))
        if png is not None:
            try:
                write_chart(made, png)
            except OSError as exc:
                _fail(f"cannot write {png}: {exc}")

    _run(action)
