"""`promptproxy eval SLUG --candidate N`: run a prompt's eval suite through the proxy.

The suite file is read here (beside the prompt files, or `--suite`) and sent to the admin
API, which checks it, runs it through the proxy's request path and stores the run. This
command shows the progress and prints the result: a table for people, `-o json` for
scripts, `--markdown FILE` for a pull request. Exit status: 0 when the run passed its
criteria, 3 when it ran and did not pass, 1 on an error (2: bad command line).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from proxy.cli.client import AdminError, key_of
from proxy.cli.context import Context, pass_ctx, plain
from proxy.cli.output import fail, table, when
from proxy.evals.suite import SuiteError, find_suite, load_suite_file

F = TypeVar("F", bound=Callable[..., Any])
#: The exit status of a run that finished and did not pass.
NOT_PASSED = 3


def _run_options(command: F) -> F:
    """The options `eval` and `replay` share."""
    command = click.option(
        "--markdown",
        "markdown_path",
        type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
        help="Also write a Markdown summary here (- for stdout), e.g. for a pull request.",
    )(command)
    return click.option("--concurrency", type=click.IntRange(1, 256), help="Calls in flight.")(
        command
    )


def _check_markdown(ctx: Context, markdown_path: Path | None) -> None:
    if markdown_path is not None and str(markdown_path) == "-" and ctx.output == "json":
        raise click.UsageError("-o json prints the run on stdout: write the Markdown to a file")


def _finish(
    ctx: Context,
    run: dict[str, Any],
    human: Callable[[dict[str, Any]], str],
    markdown: Callable[[dict[str, Any]], str],
    markdown_path: Path | None,
) -> None:
    """Print the run, write its Markdown, exit 3 when it did not pass."""
    ctx.emit(run, human)
    if markdown_path is not None:
        text = markdown(run)
        if str(markdown_path) == "-":
            click.echo(text)
        else:
            markdown_path.write_text(text, encoding="utf-8")
    if not run["passed"]:
        sys.exit(NOT_PASSED)


def _baseline(value: str) -> int | str | None:
    if value == "none":
        return None
    if value == "prod":
        return "prod"
    if value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter("a version number, prod or none")


@click.command("eval")
@click.argument("slug")
@click.option("--candidate", type=click.IntRange(min=1), required=True, help="Version to test.")
@click.option(
    "--baseline",
    default="prod",
    show_default=True,
    help="Version to compare with: a number, prod, or none (the candidate alone).",
)
@click.option(
    "--tenant",
    help="Run the cases as this tenant (its overrides apply); a case's own tenant: wins.",
)
@click.option("--variant", help="The model variant's version line (SLUG@VARIANT).")
@click.option(
    "--suite",
    "suite_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The suite file (default: found beside the prompt files in --prompts).",
)
@click.option(
    "--prompts",
    "prompts_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("prompts"),
    show_default=True,
    help="The prompt files' folder, where SLUG.eval.yaml is looked for.",
)
@click.option("--min-pass-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option(
    "--max-drop",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Largest drop of the pass rate against the baseline that still passes.",
)
@_run_options
@pass_ctx
def eval_command(
    ctx: Context,
    slug: str,
    candidate: int,
    baseline: str,
    tenant: str | None,
    variant: str | None,
    suite_path: Path | None,
    prompts_dir: Path,
    min_pass_rate: float,
    max_drop: float,
    concurrency: int | None,
    markdown_path: Path | None,
) -> None:
    """Run SLUG's eval suite on version CANDIDATE and the baseline, through the proxy."""
    try:
        path = suite_path or find_suite(prompts_dir, slug, tenant, variant)
        if path is None:
            click.echo(
                f"error: no eval suite for {slug} in {prompts_dir} (looked for "
                f"{slug}.eval.yaml beside its prompt file); give --suite or --prompts",
                err=True,
            )
            sys.exit(2)
        suite = load_suite_file(path)
        # A suite named SLUG@VARIANT.eval.yaml is that variant's.
        key = key_of(slug, variant=variant or suite.variant)
    except AdminError as exc:
        fail(exc)
    except SuiteError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    body: dict[str, Any] = {
        "suite": suite.to_dict(),
        "suite_name": str(path)[-200:],
        "candidate": candidate,
        "baseline": _baseline(baseline),
        "min_pass_rate": min_pass_rate,
        "max_drop": max_drop,
    }
    if tenant is not None:
        body["tenant"] = tenant
    if concurrency is not None:
        body["concurrency"] = concurrency
    _check_markdown(ctx, markdown_path)
    run = _follow(ctx, key, body, str(path))
    _finish(ctx, run, human_report, markdown_report, markdown_path)


def _follow(
    ctx: Context, key: Any, body: dict[str, Any], source: str, what: str = "evals"
) -> dict[str, Any]:
    """The run, once finished; progress on stderr meanwhile."""
    bar: Any = None
    try:
        for event in ctx.client.run_eval(key, body, what=what):
            kind = event.get("event")
            if kind == "started":
                label = f"{source}: {event['total']} calls"
                bar = click.progressbar(length=event["total"], label=label, file=sys.stderr)
                bar.__enter__()
            elif kind == "progress" and bar is not None:
                bar.update(event["done"] - bar.pos)
            elif kind == "finished":
                run: dict[str, Any] = event["run"]
                if event.get("warning"):
                    click.echo(f"warning: {event['warning']}", err=True)
                return run
            elif kind == "failed":
                raise AdminError(f"eval run {event.get('id')} failed: {event.get('error')}")
    except AdminError as exc:
        fail(exc)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    fail(AdminError("the eval run's stream ended before the run did"))


# -- printing -------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _interval(pair: list[float]) -> str:
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]"


def _pp(value: float) -> str:
    return f"{100 * value:+.1f} pp"


def _side_line(name: str, side: dict[str, Any]) -> str:
    errors = f", {side['errors']} errors" if side["errors"] else ""
    line = (
        f"{name} v{side['version']}: {side['passed']}/{side['samples']} samples passed, "
        f"{_pct(side['pass_rate'])} (95% CI {_interval(side['interval'])}){errors}"
    )
    return line + _judge_part(side)


def _judge_part(side: dict[str, Any]) -> str:
    part = ""
    judge = side.get("judge")
    if judge:
        mean = "-" if judge["mean"] is None else f"{judge['mean']:.2f}"
        unscored = f", {judge['unscored']} unscored" if judge.get("unscored") else ""
        part += f"; judge score {mean} (n={judge['n']}{unscored})"
    agreement = side.get("agreement")
    if agreement:
        part += (
            f"; agrees with the labels {_pct(agreement['accuracy'])} of {agreement['n']}, "
            f"kappa {agreement['kappa']:.2f}"
        )
    return part


def _judge_difference_line(summary: dict[str, Any]) -> str | None:
    diff = summary.get("judge_difference")
    if diff is None:
        return None
    significant = " (a significant drop)" if diff.get("significant_drop") else ""
    return (
        f"judge score difference: {diff['value']:+.2f} "
        f"({_ci(diff, lambda v: f'{v:+.2f}')}, over {diff['cases']} cases){significant}"
    )


def _ci(diff: dict[str, Any], show: Callable[[float], str]) -> str:
    """A difference's interval, or why there is none."""
    if diff.get("too_few_cases"):
        return "no interval: fewer than 5 cases"
    low, high = diff["interval"]
    return f"95% CI {show(low)} to {show(high)}"


def _first_failures(run: dict[str, Any], side: str = "candidate") -> dict[str, str]:
    """Case name -> the first failure of its first failing sample on ``side``."""
    found: dict[str, str] = {}
    for case in run.get("detail", {}).get("cases", []):
        for sample in case["sides"].get(side, []):
            if sample["error"]:
                found[case["name"]] = sample["error"]
                break
            if sample["failures"]:
                failure = sample["failures"][0]
                found[case["name"]] = f"assert[{failure['assertion']}] {failure['detail']}"
                break
    return found


def _case_flag(row: dict[str, Any]) -> str:
    if row.get("regressed"):
        return "REGRESSED"
    if row.get("improved"):
        return "improved"
    return ""


def _drift_line(summary: dict[str, Any]) -> str | None:
    found = summary.get("drift")
    if found is None:
        return None
    failed = [m["measure"] for m in found["measures"] if m["result"] == "fail"]
    pairs = f"{found['candidate_pairs']} candidate and {found['noise_pairs']} noise pairs"
    if found["result"] == "fail":
        return f"drift: beyond the baseline's own noise in {', '.join(failed)} ({pairs})"
    if found["result"] == "inconclusive":
        return f"drift: inconclusive, too few pairs ({pairs}; raise samples)"
    return f"drift: none beyond the baseline's own noise ({pairs})"


def human_report(run: dict[str, Any]) -> str:
    summary = run["summary"]
    has_baseline = "baseline" in summary
    failures = _first_failures(run)
    rows = []
    for row in run.get("detail", {}).get("rows", []):
        k, n = row["candidate"]
        cells: list[Any] = [row["name"], f"{k}/{n}"]
        if has_baseline:
            kb, nb = row["baseline"]
            cells += [f"{kb}/{nb}", _case_flag(row)]
        cells.append(failures.get(row["name"], "")[:80])
        rows.append(cells)
    headers = ["case", "candidate"] + (["baseline", ""] if has_baseline else []) + ["first failure"]
    lines = [table(rows, headers), ""]
    lines.append(_side_line("candidate", summary["candidate"]))
    if has_baseline:
        lines.append(_side_line("baseline", summary["baseline"]))
        diff = summary["difference"]
        significant = " (a significant drop)" if diff.get("significant_drop") else ""
        lines.append(
            f"difference: {_pp(diff['value'])} ({_ci(diff, _pp)}, over {diff['cases']} "
            f"cases){significant}"
        )
        judged = _judge_difference_line(summary)
        if judged is not None:
            lines.append(judged)
        drifted = _drift_line(summary)
        if drifted is not None:
            lines.append(drifted)
    criteria = summary["criteria"]
    verdict = "PASSED" if run["passed"] else "NOT PASSED"
    lines.append(
        f"{verdict}: min pass rate {_pct(criteria['min_pass_rate'])}, max drop "
        f"{_pct(criteria['max_drop'])}; run {run['id']} by {run['actor']} at "
        f"{when(run['finished_at'])}"
    )
    return "\n".join(lines)


def markdown_report(run: dict[str, Any]) -> str:
    summary = run["summary"]
    has_baseline = "baseline" in summary
    icon = "✅" if run["passed"] else "❌"
    verdict = "passed" if run["passed"] else "did not pass"
    baseline = f" against v{run['baseline']}" if has_baseline else ""
    out = [
        f"### {icon} Eval of `{run['slug']}` v{run['candidate']}{baseline}: {verdict}",
        "",
        "| version | passed | pass rate | 95% CI | judge score | label agreement |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("candidate", "baseline"):
        side = summary.get(name)
        if side is not None:
            judge, agreement = side.get("judge"), side.get("agreement")
            out.append(
                f"| {name} v{side['version']} | {side['passed']}/{side['samples']} | "
                f"{_pct(side['pass_rate'])} | {_interval(side['interval'])} | "
                + ("-" if not judge or judge["mean"] is None else f"{judge['mean']:.2f}")
                + " | "
                + (
                    "-"
                    if not agreement
                    else f"{_pct(agreement['accuracy'])}, kappa {agreement['kappa']:.2f}"
                )
                + " |"
            )
    if has_baseline:
        diff = summary["difference"]
        out += [
            "",
            f"Difference {_pp(diff['value'])} ({_ci(diff, _pp)}, mean over {diff['cases']} cases).",
        ]
        for extra in (_judge_difference_line(summary), _drift_line(summary)):
            if extra is not None:
                out += ["", extra[0].upper() + extra[1:] + "."]
    failures = _first_failures(run)
    rows = run.get("detail", {}).get("rows", [])
    flagged = [r for r in rows if r.get("regressed") or r["name"] in failures]
    if flagged:
        out += ["", "| case | candidate | baseline | first failure |", "|---|---|---|---|"]
        for row in flagged:
            k, n = row["candidate"]
            base = "-" if "baseline" not in row else f"{row['baseline'][0]}/{row['baseline'][1]}"
            detail = failures.get(row["name"], "").replace("|", "\\|")[:120]
            out.append(
                f"| {row['name']}{' ⚠' if row.get('regressed') else ''} | {k}/{n} | "
                f"{base} | {detail} |"
            )
    judges = ", ".join(f"`{slug}` v{version}" for slug, version in run.get("judges", []))
    out += [
        "",
        f"<sub>Judges: {judges}.</sub>" if judges else "",
        f"<sub>Suite `{run['suite_name']}` (sha256 {run['suite_sha256'][:12]}), run "
        f"`{run['id']}` by {run['actor']}.</sub>",
    ]
    return "\n".join(out) + "\n"


@click.command("replay")
@click.argument("slug")
@click.option("--candidate", type=click.IntRange(min=1), required=True, help="Version to test.")
@click.option(
    "--baseline",
    default="prod",
    show_default=True,
    help="The version whose captured calls are replayed: a number or prod.",
)
@click.option("--since", default="1h", show_default=True, help="Captured since: 10m, 2h, 1d...")
@click.option("--limit", type=click.IntRange(1, 5000), default=200, show_default=True)
@click.option("--variant", help="The model variant's version line (SLUG@VARIANT).")
@_run_options
@pass_ctx
def replay_command(
    ctx: Context,
    slug: str,
    candidate: int,
    baseline: str,
    since: str,
    limit: int,
    variant: str | None,
    concurrency: int | None,
    markdown_path: Path | None,
) -> None:
    """Replay SLUG's captured calls on version CANDIDATE, against the baseline re-run.

    Each captured call of the baseline (capture.slugs) is sent again, through the proxy,
    to the candidate and to the baseline; per measure, the candidate's answers must not
    diverge from the captured ones more than the baseline's own do. Exit 0 when no measure
    diverges, 3 when one does or there are too few calls to tell, 1 on an error."""
    try:
        key = key_of(slug, variant=variant)
    except AdminError as exc:
        fail(exc)
    _check_markdown(ctx, markdown_path)
    base = _baseline(baseline)
    if base is None:
        raise click.BadParameter("a version number or prod", param_hint="--baseline")
    body: dict[str, Any] = {
        "candidate": candidate,
        "baseline": base,
        "since": since,
        "limit": limit,
    }
    if concurrency is not None:
        body["concurrency"] = concurrency
    run = _follow(ctx, key, body, f"replay of {slug}", what="replays")
    _finish(ctx, run, replay_report, replay_markdown, markdown_path)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _replay_rows(replay: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            m["measure"],
            f"{_num(m['noise_mean'])} (n={m['noise_n']})",
            f"{_num(m['candidate_mean'])} (n={m['candidate_n']})",
            "-" if m["p_value"] is None else f"{m['p_value']:.4f}",
            m["result"],
        ]
        for m in replay["measures"]
    ]


_REPLAY_HEADERS = ["measure", "baseline re-run", "candidate", "p", "result"]
_REPLAY_VERDICT = {
    "pass": "no measure diverges from the captured answers more than the baseline's re-run",
    "fail": "the candidate diverges from the captured answers beyond the baseline's own noise",
    "inconclusive": "too few calls to tell: capture more, or widen --since",
}


def _replay_head(run: dict[str, Any]) -> str:
    replay = run["summary"]["replay"]
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(replay["skipped"].items()))
    return (
        f"{replay['captures']} captured calls of v{run['baseline']} replayed on "
        f"v{run['candidate']} and v{run['baseline']}"
        + (f" (left out: {skipped})" if skipped else "")
    )


def replay_report(run: dict[str, Any]) -> str:
    replay = run["summary"]["replay"]
    failed = [m["measure"] for m in replay["measures"] if m["result"] == "fail"]
    verdict = replay["result"].upper() + ": " + _REPLAY_VERDICT[replay["result"]]
    if failed:
        verdict += f" ({', '.join(failed)})"
    return "\n".join(
        [
            _replay_head(run),
            "",
            table(_replay_rows(replay), _REPLAY_HEADERS),
            "",
            verdict + f"; run {run['id']}",
        ]
    )


def replay_markdown(run: dict[str, Any]) -> str:
    replay = run["summary"]["replay"]
    icon = {"pass": "✅", "fail": "❌"}.get(replay["result"], "⚠️")
    out = [
        f"### {icon} Replay of `{run['slug']}` v{run['candidate']}: {replay['result']}",
        "",
        _replay_head(run) + ".",
        "",
        "| " + " | ".join(_REPLAY_HEADERS) + " |",
        "|---|---|---|---|---|",
    ]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in _replay_rows(replay)]
    return "\n".join(out) + "\n"


def run_lines(runs: list[Any]) -> str:
    """Stored runs, one per line (``prompts history``)."""
    rows = []
    for run in runs:
        data = plain(run)
        summary = data["summary"]
        diff = summary.get("difference")
        rate = summary["candidate"].get("pass_rate")
        rows.append(
            [
                when(data["finished_at"]),
                data["id"] + ("" if data["kind"] == "eval" else f" ({data['kind']})"),
                f"v{data['candidate']}",
                "-" if data["baseline"] is None else f"v{data['baseline']}",
                "-" if rate is None else _pct(rate),
                "-" if diff is None else _pp(diff["value"]),
                "passed" if data["passed"] else "not passed",
                data["actor"],
            ]
        )
    headers = ["finished", "run", "candidate", "baseline", "pass rate", "diff", "verdict", "by"]
    return table(rows, headers)
