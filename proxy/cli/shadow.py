"""`promptproxy shadow ...`: watch shadow pairs live, export them for offline evaluation, or
report whether the candidate diverges from stable more than stable does from itself.

Same conventions as `promptproxy prompts`: every command talks to the admin API (read role
suffices), one line per pair for people, `--output json` for scripts, errors exit non-zero.
`export` always writes JSON lines: it feeds evaluation scripts, not eyes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from proxy.cli.context import Context, admin_options, pass_ctx
from proxy.cli.keys import prompt_argument
from proxy.cli.output import run, table, when
from proxy.prompt_key import PromptKey
from proxy.web import admin_models as api

#: Pairs fetched per admin API call while exporting (the API allows up to 10,000).
EXPORT_PAGE = 1000
_PREVIEW = 40
#: What `-o json` prints of a report: the answer without each measure's bin counts (which
#: only a chart needs).
_REPORT_JSON_EXCLUDE = {"measures": {"__all__": {"noise_bins", "candidate_bins"}}}


def _preview(text: str, width: int = _PREVIEW) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def _half(arm: api.ShadowArm | None, width: int = _PREVIEW) -> str:
    if arm is None:
        return "(no primary)"
    if arm.tool_calls:
        said = "tools:" + ",".join(call.name or "?" for call in arm.tool_calls)
    else:
        said = _preview(arm.text or "", width)
    return (
        f"v{arm.version} {arm.status or '-'} {_ms(arm.latency_ms)} "
        f"{arm.error_class or arm.finish_reason or '-'} {said}"
    )


def pair_line(pair: api.ShadowPair) -> str:
    """One compact line: when, which pair, then each side's version, status, latency,
    finish reason (or error) and the start of its answer."""
    kind = "" if pair.kind == "candidate" else f" [{pair.kind}]"
    return (
        f"{when(pair.ts)} {pair.pair_id}{kind}  "
        f"primary {_half(pair.primary)}  |  shadow {_half(pair.shadow)}"
    )


def _print(pairs: Iterable[api.ShadowPair], output: str) -> int:
    count = 0
    for pair in pairs:
        line = orjson.dumps(api.wire(pair)).decode() if output == "json" else pair_line(pair)
        click.echo(line)
        count += 1
    return count


@click.group("shadow")
@admin_options("Admin token (read role is enough).")
def shadow() -> None:
    """Shadow pairs: the stable answer users got next to the candidate's, per request."""


@shadow.command()
@prompt_argument()
@click.option("--since", help="Show pairs from this far back first: 600, 10m, 2h or a unix time.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many pairs.")
@pass_ctx
def tail(ctx: Context, key: PromptKey, since: str | None, count: int | None) -> None:
    """Follow the pairs of SLUG as they are recorded (Ctrl-C stops)."""

    def action() -> None:
        shown = 0
        for pair in ctx.client.follow_shadow_pairs(key, since):
            shown += _print([pair], ctx.output)
            if count is not None and shown >= count:
                return

    try:
        run(action)
    except KeyboardInterrupt:
        sys.exit(130)


F = TypeVar("F", bound=Callable[..., Any])


def _pair_range(command: F) -> F:
    """``--since``, ``--limit`` and ``--rollout``: which pairs a command reads (export and
    report)."""
    command = click.option(
        "--rollout",
        "rollout_id",
        help="Pairs of this rollout id. Default: the running rollout, else the last one.",
    )(command)
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
@prompt_argument()
@_pair_range
@pass_ctx
def export(
    ctx: Context, key: PromptKey, since: str, limit: int | None, rollout_id: str | None
) -> None:
    """Write the pairs of one rollout of SLUG as JSON lines on stdout, oldest first, for
    offline evaluation. Which rollout goes to stderr."""

    def action() -> None:
        chosen = choose_rollout(ctx, key, rollout_id)
        click.echo(f"{key}: pairs of {chosen.describe()}", err=True)
        for pair in fetch_pairs(ctx, key, since, limit, chosen.id):
            click.echo(orjson.dumps(api.wire(pair)).decode())

    run(action)


@dataclass(frozen=True, slots=True)
class ChosenRollout:
    id: str
    #: None when named with --rollout (the CLI does not check it is running).
    running: bool | None

    def describe(self) -> str:
        state = {True: "running", False: "the last one, ended", None: "named with --rollout"}[
            self.running
        ]
        return f"rollout {self.id} ({state})"


def choose_rollout(ctx: Context, key: PromptKey, rollout_id: str | None) -> ChosenRollout:
    """The rollout whose pairs a command reads: the one named, else the one the admin API
    calls latest (running, else the last). Resolved once, so every page is of the same
    rollout even if a new one starts meanwhile."""
    if rollout_id is not None:
        return ChosenRollout(rollout_id, None)
    latest = ctx.client.shadow_rollout(key)
    return ChosenRollout(latest.rollout_id, latest.running)


def fetch_pairs(
    ctx: Context, key: PromptKey, since: str, limit: int | None, rollout_id: str
) -> Iterator[api.ShadowPair]:
    """The pairs of one rollout of ``key`` recorded since ``since``, oldest first, each once,
    at most ``limit``: pages through the admin API, which caps one answer."""
    cursor = since
    boundary: set[str] = set()  # pairs at the cursor's instant, already yielded
    written = 0
    while limit is None or written < limit:
        want = EXPORT_PAGE if limit is None else min(EXPORT_PAGE, limit - written)
        ask = want + len(boundary)
        page = ctx.client.shadow_pairs(key, since=cursor, limit=ask, rollout=rollout_id)
        fresh = [p for p in page if p.pair_id not in boundary][:want]
        yield from fresh
        written += len(fresh)
        if not fresh or len(page) < ask:
            return
        # The next page starts at the last yielded pair's time; the pairs already
        # yielded at exactly that time are skipped there.
        last = fresh[-1].ts
        done = boundary | {p.pair_id for p in fresh}
        boundary = {p.pair_id for p in page if p.ts == last and p.pair_id in done}
        cursor = repr(float(last))


# -- report -------------------------------------------------------------------------------

#: Noise = stable against stable, candidate = stable against candidate.
_REPORT_HEADERS = (
    *("MEASURE", "NOISE N", "MEAN", "P50", "P95"),
    *("CANDIDATE N", "MEAN", "P50", "P95", "P-VALUE", "VERDICT"),
)
_INSTALL_REPORT = "pip install 'promptproxy[report]'"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def report_text(report: api.ShadowReport) -> str:
    pairs = report.pairs
    head = (
        f"{report.slug}, {ChosenRollout(report.rollout_id, report.rollout_running).describe()}: "
        f"pairs since {report.since}: "
        f"{pairs.stable} stable vs stable "
        f"(noise), {pairs.candidate} stable vs candidate; {pairs.skipped} skipped "
        f"(unpaired or failed)"
    )
    rows = [
        (
            m.measure,
            m.noise_n,
            _num(m.noise_mean),
            _num(m.noise_p50),
            _num(m.noise_p95),
            m.candidate_n,
            _num(m.candidate_mean),
            _num(m.candidate_p50),
            _num(m.candidate_p95),
            _p(m.p_value),
            m.result if m.noise_n or m.candidate_n else "n/a",
        )
        for m in report.measures
    ]
    body = table(rows, _REPORT_HEADERS)
    failed = [m.measure for m in report.measures if m.result == "fail"]
    why = {
        "fail": f"{', '.join(failed)}: the candidate diverges more than stable from itself",
        "pass": "no measure diverges more than stable from itself",
        "inconclusive": f"fewer than {report.min_pairs} comparable pairs of a kind",
    }[report.result]
    rule = (
        f"fail = one-sided Mann-Whitney p < {report.alpha:g} and candidate mean > noise "
        f"mean + {report.margin:g}"
    )
    return f"{head}\n{body}\n{rule}\nverdict: {report.result} ({why})"


def write_chart(report: api.ShadowReport, path: Path) -> None:
    """One panel per measure: the share of pairs per bin, noise against candidate, with
    the measure's verdict and p-value in the title. matplotlib only loads here, and with
    the Agg backend (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 3).flatten()
    for ax, measure in zip(axes, report.measures, strict=False):
        name = measure.measure
        ax.set_xlim(0, 1)
        ax.set_xlabel("divergence (0 = same)")
        if not (measure.noise_n or measure.candidate_n):
            ax.set_title(f"{name}: n/a")
            ax.set_yticks([])
            ax.text(0.5, 0.5, "applies to no pair", ha="center", va="center", color="grey")
            continue
        edges = [i / len(measure.noise_bins) for i in range(len(measure.noise_bins) + 1)]
        for counts, mean, label, colour in (
            (measure.noise_bins, measure.noise_mean, "stable vs stable (noise)", "tab:blue"),
            (
                measure.candidate_bins,
                measure.candidate_mean,
                "stable vs candidate",
                "tab:orange",
            ),
        ):
            n = sum(counts)
            shares = [c / n if n else 0.0 for c in counts]
            ax.stairs(shares, edges, fill=True, alpha=0.35, color=colour)
            ax.stairs(shares, edges, color=colour, label=f"{label}, n={n}")
            if mean is not None:
                # Where the margin applies: the gap between these two lines.
                ax.axvline(mean, color=colour, linestyle="--", linewidth=1)
        colour = {"fail": "tab:red", "pass": "black"}.get(measure.result, "grey")
        ax.set_title(f"{name}: {measure.result} (p={_p(measure.p_value)})", color=colour)
        ax.set_ylabel("share of pairs (dashed: mean)")
        ax.legend(loc="upper right", fontsize="small")
    summary = axes[-1]
    summary.axis("off")
    summary.text(
        0.02,
        0.5,
        f"{report.slug}: {report.result}\n"
        f"rollout {report.rollout_id}\n\n"
        f"pairs since {report.since}:\n"
        f"  {report.pairs.stable} stable vs stable\n"
        f"  {report.pairs.candidate} stable vs candidate\n\n"
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
@prompt_argument()
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
    key: PromptKey,
    since: str,
    limit: int | None,
    rollout_id: str | None,
    alpha: float,
    margin: float,
    min_pairs: int,
    png: Path | None,
) -> None:
    """Does the candidate of SLUG diverge from stable more than stable from itself?

    Judges one rollout's pairs: the running rollout, else the last one (--rollout ID for
    another); the report names it.

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
        made = ctx.client.shadow_report(
            key,
            since=since,
            limit=limit,
            rollout=rollout_id,
            alpha=alpha,
            margin=margin,
            min_pairs=min_pairs,
        )
        if ctx.output == "json":
            shown = made.model_dump(mode="json", exclude_unset=True, exclude=_REPORT_JSON_EXCLUDE)
            click.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        else:
            click.echo(report_text(made))
        if png is not None:
            try:
                write_chart(made, png)
            except OSError as exc:
                _fail(f"cannot write {png}: {exc}")

    run(action)
