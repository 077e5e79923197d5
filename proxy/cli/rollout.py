"""`promptproxy rollout ...`: canary and shadow rollouts from a terminal or a CI job.

Same conventions as `promptproxy prompts`: every command talks to the admin API, tables for
people, `--output json` for scripts, any error exits non-zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from proxy.cli.client import AdminError
from proxy.cli.context import Context, admin_options, pass_ctx
from proxy.cli.keys import prompt_argument
from proxy.cli.output import run, table, when
from proxy.cli.served import report_served, wait_options, wait_seconds
from proxy.prompt_key import PromptKey
from proxy.registry.models import RolloutMode
from proxy.web import admin_models as api


@click.group("rollout")
@admin_options()
def rollout() -> None:
    """Try a candidate version on real traffic: canary, shadow, ramp, promote, abort."""


def _row(r: api.RolloutListItem) -> tuple[Any, ...]:
    return (
        r.slug,
        r.mode,
        f"v{r.candidate}",
        f"{r.percent:g}%",
        _verdict_text(r),
        r.sticky,
        when(r.started_at),
        r.actor,
    )


def _verdict_text(r: api.RolloutListItem) -> str:
    """The last verdict, briefly: ``manual`` without a policy, ``pending`` before the
    first verdict, ``?`` when the analysis state could not be read."""
    if r.analysis is None:
        return "manual"
    summary = r.analysis_summary
    if summary is None:
        return "?"  # a rollout with a policy always has one, unless the store failed
    text = summary.last_verdict or "pending"
    if summary.failures:
        text += f" ({summary.failures} failed)"
    return text


_HEADERS = ("SLUG", "MODE", "CANDIDATE", "PERCENT", "VERDICT", "STICKY", "STARTED", "BY")


def _rollout_table(answer: api.RolloutList) -> str:
    if not answer.data:
        return "no rollout running"
    text = table([_row(r) for r in answer.data], _HEADERS)
    if answer.analysis_unavailable:
        text += "\nThe analysis state could not be read: a verdict shown as ? is unknown."
    return text


def _describe(r: api.RolloutView) -> str:
    prod = r.prod_version
    lines = [
        f"{r.slug}: {r.mode} rollout of v{r.candidate} at {r.percent:g}% "
        f"(stable: {'v' + str(prod) if prod else 'none'})",
        f"  sticky on   {r.sticky}",
        f"  reaches     {_segment_text(r.segment)}",
        f"  rollout id  {r.id}",
        f"  started     {when(r.started_at)} by {r.actor}",
        f"  updated     {when(r.updated_at)}",
    ]
    policy = r.analysis
    lines.extend(
        describe_policy(policy, r.mode) if policy else ["  analysis    none (manual rollout)"]
    )
    state = r.analysis_state if isinstance(r, api.RolloutStatus) else None
    if state is not None:
        lines.append(describe_analysis_state(state, policy))
    return "\n".join(lines)


def _describe_ended(last: api.LastAnalysis) -> str:
    """The last analysed rollout of a slug that has none running (aborted, promoted)."""
    head = f"{last.slug}: no rollout running; the last analysed one was {last.rollout_id}"
    action = next((v.action for v in last.verdicts if v.action), None)
    if action in ("abort", "promote"):
        head += f", ended by the analyser ({action})"
    state = api.AnalysisState(
        step=None, failures=last.failures, next_at=0.0, holder=None, verdicts=last.verdicts
    )
    body = describe_analysis_state(state, None)
    # Step, next verdict and lease belong to a running rollout only.
    running_only = ("  step", "  next", "  lease")
    kept = [line for line in body.splitlines() if not line.startswith(running_only)]
    return "\n".join([head, *kept])


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def describe_policy(p: api.AnalysisPolicy, mode: RolloutMode = RolloutMode.CANARY) -> list[str]:
    """A policy in two lines: its rhythm, then its checks."""
    limit = p.failure_limit
    tolerance = (
        "aborts on the first failed verdict"
        if limit == 0
        else f"tolerates {limit} failed verdict{'s' if limit > 1 else ''}"
    )
    ramp = " -> ".join(f"{s:g}%" for s in p.steps) if p.steps else "none (never ramps by itself)"
    t = p.thresholds
    checks = [
        f"{label}{value:g}"
        for value, label in (
            (t.error_rate_increase, "error rate +"),
            (t.p95_latency_ratio, "p95 latency x"),
            (t.p95_ttft_ratio, "p95 TTFT x"),
            (t.length_finish_increase, "length finishes +"),
            (t.answer_length_drift, "answer length ±"),
        )
        if value is not None
    ]
    if t.shadow_divergence and mode is RolloutMode.SHADOW:
        checks.append("shadow divergence")
    if feedback := t.feedback_drop:
        checks.append(f"feedback {feedback.name} -{feedback.max_drop:g}")
    if judge := t.judge_drop:
        checks.append(f"judge score -{judge.max_drop:g}")
    return [
        f"  analysis    every {p.interval:g}s, {p.min_samples} samples per "
        f"arm, alpha {p.alpha:g}, {tolerance}; steps {ramp}",
        f"  checks      {', '.join(checks) if checks else 'none'}",
    ]


_VERDICT_HEADERS = ("TIME", "VERDICT", "PERCENT", "STABLE", "CANDIDATE", "ACTION")
_CHECK_HEADERS = ("CHECK", "RESULT", "STABLE", "CANDIDATE", "LIMIT", "P-VALUE", "NOTE")
_TIER_HEADERS = ("TIER", "VERDICT", "STABLE", "CANDIDATE", "FAILED CHECKS")
#: Older verdicts are in ``--output json``; a terminal shows the recent trend.
_SHOWN_VERDICTS = 10


def describe_analysis_state(state: api.AnalysisState, policy: api.AnalysisPolicy | None) -> str:
    """The analyser's state of one rollout: where it is, then its last verdicts (newest
    first), then the checks of the newest one and its tiers. ``policy`` None: a rollout
    that ended."""
    steps = [] if policy is None else policy.steps
    step = state.step
    if step is None:
        where = "before the first step" if steps else "no steps"
    else:
        percent = f" ({steps[step]:g}%)" if 0 <= step < len(steps) else ""
        where = f"{step + 1} of {len(steps)}{percent}"
    tolerated = 0 if policy is None else policy.failure_limit
    lines = [
        f"  step        {where}",
        f"  failures    {state.failures} (tolerated: {tolerated})",
        f"  next        {when(state.next_at)}",
        f"  lease       {state.holder or 'no replica holds it'}",
    ]
    verdicts = state.verdicts
    if not verdicts:
        lines.append("  no verdict yet")
        return "\n".join(lines)
    rows = [
        (
            when(v.at),
            v.verdict,
            f"{v.percent:g}%" if v.percent is not None else None,
            (v.samples or {}).get("stable"),
            # The candidate arm: `canary`, or `shadow` for a shadow rollout.
            (v.samples or {}).get("canary", (v.samples or {}).get("shadow")),
            v.action,
        )
        for v in verdicts[:_SHOWN_VERDICTS]
    ]
    newest = verdicts[0]
    checks = [
        (
            c.name,
            c.result,
            _num(c.stable),
            _num(c.candidate),
            _num(c.limit),
            _num(c.p_value, 2),
            c.note or "",
        )
        for c in newest.checks or []
    ]
    lines += ["", table(rows, _VERDICT_HEADERS)]
    if checks:
        lines += ["", f"checks of the verdict at {when(newest.at)}:"]
        lines.append(table(checks, _CHECK_HEADERS))
    if newest.tiers:
        tiers = [
            (
                name,
                t.verdict,
                (t.samples or {}).get("stable"),
                (t.samples or {}).get("canary", (t.samples or {}).get("shadow")),
                "; ".join(f"{c.name}: {c.note}" for c in t.checks or [] if c.result == "fail"),
            )
            for name, t in newest.tiers.items()
        ]
        lines += ["", f"tiers of the verdict at {when(newest.at)}:"]
        lines.append(table(tiers, _TIER_HEADERS))
    return "\n".join(lines)


def _audit_line(e: api.AuditEntry) -> str:
    detail = api.RolloutDetail.model_validate(e.detail or {})
    percent = f" at {detail.percent:g}%" if detail.percent is not None else ""
    moved = (
        f", v{e.version} {e.from_status} -> {e.to_status}"
        if e.to_status and e.from_status != e.to_status
        else ""
    )
    reason = f" ({e.reason})" if e.reason else ""
    return f"{e.slug}: {e.action}{percent}{moved} by {e.actor}{reason}"


@rollout.command()
@prompt_argument(required=False)
@pass_ctx
def status(ctx: Context, key: PromptKey | None) -> None:
    """The running rollout of SLUG, or every running rollout."""

    def action() -> None:
        if key is not None:
            try:
                ctx.emit(ctx.client.get_rollout(key), _describe)
            except AdminError as exc:
                if exc.status != 404:
                    raise
                # No rollout running: if the analyser ended one, say why.
                try:
                    last = ctx.client.get_analysis(key)
                except AdminError as missing:
                    if missing.status != 404:
                        raise
                    # An answer, not an error (docs/operations.md), once the prompt
                    # exists; an unknown prompt is still one (get_prompt raises its 404).
                    ctx.client.get_prompt(key)
                    ctx.emit(
                        {"slug": key.text, "rollout": None},
                        lambda _: f"{key} has no rollout running.",
                    )
                    return
                ctx.emit(last, _describe_ended)
            return
        answer = ctx.client.list_rollouts()
        # JSON: the items as before (a list), each with its `analysis_summary`.
        ctx.emit(answer.data, lambda _: _rollout_table(answer))

    run(action)


@rollout.command("set")
@prompt_argument()
@click.option("--candidate", type=int, required=True, help="The version to try.")
@click.option("--canary", type=float, help="Percent of callers served by the candidate.")
@click.option("--shadow", type=float, help="Percent of requests also sent to the candidate.")
@click.option(
    "--sticky",
    help="What keeps a caller on one arm: header:<name>, user, tenant or none "
    "(default for a new rollout: none).",
)
@click.option(
    "--analysis",
    "analysis_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Automated-analysis policy: a YAML or JSON file (see docs/rollouts.md).",
)
@click.option("--interval", type=float, help="Analysis: seconds between verdicts.")
@click.option("--min-samples", type=int, help="Analysis: requests per arm a verdict needs.")
@click.option(
    "--failure-limit", type=int, help="Analysis: failed verdicts tolerated before the abort."
)
@click.option("--steps", help="Analysis: percents to ramp through, e.g. 1,5,25,50 ('' for none).")
@click.option(
    "--tiers", help="Reach only the tenants of these tiers (comma-separated), with --tenants."
)
@click.option("--tenants", help="Reach only these tenants (comma-separated), with --tiers.")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.option(
    "--force",
    is_flag=True,
    help="Go ahead although the base version breaks tier or tenant overrides in use "
    "(needs --reason; the audit keeps both).",
)
@click.option(
    "--override-gates",
    is_flag=True,
    help="Start the rollout although the candidate has not passed the gates its slug "
    "requires (needs --reason; the audit keeps it with each gate overridden). See "
    "docs/gates.md.",
)
@wait_options
@pass_ctx
def set_(
    ctx: Context,
    key: PromptKey,
    candidate: int,
    canary: float | None,
    shadow: float | None,
    sticky: str | None,
    analysis_file: Path | None,
    interval: float | None,
    min_samples: int | None,
    failure_limit: int | None,
    steps: str | None,
    tiers: str | None,
    tenants: str | None,
    reason: str,
    force: bool,
    override_gates: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Start a rollout of CANDIDATE, or change the running one's percentage. A base
    candidate that breaks an override in use is refused unless --force (with --reason);
    one that has not passed its gates (docs/gates.md) unless --override-gates (with
    --reason). A percentage change is not gated again.

    With --analysis or any of the analysis flags (which override the file's values) the
    rollout gets an automated-analysis policy; the flags alone start from the defaults.
    A running rollout keeps its policy: to change it, abort and start again."""
    if (canary is None) == (shadow is None):
        raise click.UsageError("give exactly one of --canary PERCENT or --shadow PERCENT")
    mode, percent = (
        (RolloutMode.CANARY, canary) if canary is not None else (RolloutMode.SHADOW, shadow)
    )
    fields: dict[str, Any] = {
        "candidate": candidate,
        "mode": mode,
        "percent": percent,
        "reason": reason,
        "force": force,
    }
    if force and not reason.strip():
        raise click.UsageError("--force needs --reason: it is kept in the audit log")
    if override_gates:  # sent only when set: a proxy before gates refuses the key
        if not reason.strip():
            raise click.UsageError("--override-gates needs --reason: it is kept in the audit log")
        fields["override_gates"] = True
    if sticky is not None:
        fields["sticky"] = sticky
    if tiers is not None or tenants is not None:
        fields["segment"] = api.Segment.model_construct(
            tiers=_names(tiers), tenants=_names(tenants)
        )
    flags = {"interval": interval, "min_samples": min_samples, "failure_limit": failure_limit}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if steps is not None:
        overrides["steps"] = _parse_steps(steps)
    if analysis_file is not None or overrides:
        # Sent as written: the proxy checks the policy and names the field it refuses.
        policy = _read_policy(analysis_file) if analysis_file is not None else {}
        fields["analysis"] = {**policy, **overrides}
    body = api.RolloutIn.model_construct(**fields)
    run(lambda: _set_and_report(ctx, key, body, wait_seconds(wait, timeout)))


def _set_and_report(ctx: Context, key: PromptKey, body: api.RolloutIn, wait: float | None) -> None:
    answer = ctx.client.set_rollout(key, body, wait)
    ctx.emit(answer, _describe)
    label = f"{answer.mode} of v{answer.candidate} at {answer.percent:g}%"
    report_served(ctx.output, label, answer.served)


def _parse_steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected percents separated by commas, like 1,5,25,50; got {text!r}",
            param_hint="--steps",
        ) from None


def _read_policy(path: Path) -> dict[str, Any]:
    """The policy object of a YAML or JSON file (JSON is YAML). Only its shape is checked
    here; the proxy validates the values and names the field it refuses."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--analysis") from None
    if not isinstance(data, dict):
        raise click.BadParameter(
            f"{path} must hold a policy object (interval, steps, thresholds...)",
            param_hint="--analysis",
        )
    return data


@rollout.command()
@prompt_argument()
@click.argument("percent", type=float)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@wait_options
@pass_ctx
def ramp(
    ctx: Context, key: PromptKey, percent: float, reason: str, wait: bool, timeout: float
) -> None:
    """Change the running rollout's percentage; callers already on the candidate stay."""

    def action() -> None:
        running = ctx.client.get_rollout(key)
        body = api.RolloutIn.model_construct(
            candidate=running.candidate,
            mode=running.mode,
            percent=percent,
            sticky=running.sticky,
            reason=reason,
        )
        _set_and_report(ctx, key, body, wait_seconds(wait, timeout))

    run(action)


@rollout.command()
@prompt_argument()
@click.option("--reason", default="", help="Why (kept in the audit log).")
@wait_options
@pass_ctx
def promote(ctx: Context, key: PromptKey, reason: str, wait: bool, timeout: float) -> None:
    """Make the candidate prod (the former prod is deprecated) and end the rollout."""

    def action() -> None:
        answer = ctx.client.promote_rollout(key, reason, wait_seconds(wait, timeout))
        ctx.emit(answer, _audit_line)
        report_served(ctx.output, f"v{answer.version}", answer.served)

    run(action)


@rollout.command()
@prompt_argument()
@click.option("--reason", default="", help="Why (kept in the audit log).")
@wait_options
@pass_ctx
def abort(ctx: Context, key: PromptKey, reason: str, wait: bool, timeout: float) -> None:
    """End the rollout: all traffic back to stable, the candidate back to its status."""

    def action() -> None:
        answer = ctx.client.abort_rollout(key, reason, wait_seconds(wait, timeout))
        ctx.emit(answer, _audit_line)
        report_served(ctx.output, f"abort of the v{answer.version} rollout", answer.served)

    run(action)


def _names(text: str | None) -> list[str]:
    return [] if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _segment_text(segment: api.Segment | None) -> str:
    if segment is None:
        return "every caller"
    parts = [f"tiers {', '.join(segment.tiers)}"] if segment.tiers else []
    parts += [f"tenants {', '.join(segment.tenants)}"] if segment.tenants else []
    return " and ".join(parts)
