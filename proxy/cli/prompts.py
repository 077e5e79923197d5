"""`promptproxy prompts ...`: the prompt registry from a terminal or a CI job.

Every command but `lint` talks to the admin API (the same service layer as the HTTP API).
Tables for people, `--output json` for scripts; any error exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from proxy.cli.client import AdminError, key_of
from proxy.cli.context import Context, admin_options, pass_ctx
from proxy.cli.evals import run_lines
from proxy.cli.keys import prompt_argument
from proxy.cli.output import run, table, when
from proxy.cli.served import report_served, wait_options, wait_seconds
from proxy.prompt_key import PromptKey
from proxy.registry.models import Status, VersionDraft
from proxy.web import admin_models as api


@click.group("prompts")
@admin_options()
def prompts() -> None:
    """Manage prompt versions: push, promote, roll back, inspect."""


def _version_payload(draft: VersionDraft) -> api.VersionIn:
    """A prompt file's draft as the body of a push (the proxy checks it). Its layer and
    variant are not in the body: the client sends ``draft.key``'s as
    ``tenant=``/``tier=``/``variant=``."""
    layered: dict[str, Any] = {}
    # Only the layer fields a draft sets: a plain prompt's body stays what a proxy from
    # before layers accepts (its bodies refuse unknown keys).
    if draft.blocks:
        layered["blocks"] = {
            b.name: api.BlockIn.model_construct(default=b.default, max_chars=b.max_chars)
            for b in draft.blocks
        }
    if draft.param_bounds:
        layered["param_bounds"] = {n: [lo, hi] for n, (lo, hi) in draft.param_bounds.items()}
    if draft.fills:
        layered["fills"] = dict(draft.fills)
    if draft.defaults:
        layered["defaults"] = dict(draft.defaults)
    if draft.match:
        layered["match"] = list(draft.match)
    return api.VersionIn.model_construct(
        template=draft.template,
        variables=[
            api.Variable.model_construct(
                name=v.name, type=v.type, **({"default": v.default} if v.has_default else {})
            )
            for v in draft.variables
        ],
        model=draft.model,
        params=draft.params,
        author=draft.author or None,
        changelog=draft.changelog,
        caller_system=draft.caller_system,
        **layered,
    )


class Pushed(api.Wire):
    """One pushed file, as `push` reports it."""

    file: str
    slug: str
    version: int
    created: bool
    status: Status
    #: The overrides in use this base version breaks (their layers), if any.
    breaks: list[str] = []


@prompts.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_ctx
def push(ctx: Context, path: Path) -> None:
    """Push a prompt file, or every prompt file in a folder (idempotent); a folder's bases
    go before their tier and tenant overrides. A file names its own layer."""
    from proxy.registry.prompt_files import PromptFileError, load_prompt_dir, load_prompt_file

    try:
        items = load_prompt_dir(path) if path.is_dir() else [(path, load_prompt_file(path))]
    except PromptFileError as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(1)

    def action() -> None:
        results = []
        # Bases first: an override is checked against its base, which must exist.
        for file, draft in sorted(items, key=lambda item: item[1].key):
            answer = ctx.client.push(draft.key, _version_payload(draft))
            v = answer.version
            broken = [] if answer.overrides is None else answer.overrides.broken
            for breakage in broken:
                for problem in breakage.problems:
                    click.echo(
                        f"warning: {v.slug} v{v.version} breaks {breakage.layer}: {problem}",
                        err=True,
                    )
            results.append(
                Pushed(
                    file=str(file),
                    slug=v.slug,
                    version=v.version,
                    created=answer.created,
                    status=v.status,
                    breaks=[b.layer for b in broken],
                )
            )
        ctx.emit(
            results,
            lambda rs: table(
                [
                    (
                        r.slug,
                        r.version,
                        "created" if r.created else "unchanged",
                        r.status,
                        ",".join(r.breaks) or "-",
                        r.file,
                    )
                    for r in rs
                ],
                ["SLUG", "VERSION", "RESULT", "STATUS", "BREAKS", "FILE"],
            ),
        )

    run(action)


@prompts.command("list")
@pass_ctx
def list_(ctx: Context) -> None:
    """List prompts with their prod and latest versions."""
    run(
        lambda: ctx.emit(
            ctx.client.list_prompts().data,
            lambda rows: table(
                [
                    (r.slug, r.prod_version, r.latest_version, r.versions, when(r.updated_at))
                    for r in rows
                ],
                ["SLUG", "PROD", "LATEST", "VERSIONS", "UPDATED"],
            ),
        )
    )


def _version_text(v: api.Version) -> str:
    """One version in full: its fields, then its texts (the template, then each block's
    default or fill under a line naming it, as they may span lines)."""
    lines = [
        f"{v.slug} v{v.version}  [{v.status}]  sha256 {v.sha256[:12]}",
        f"author: {v.author}   created: {when(v.created_at)}",
        f"model: {v.model or '-'}   params: {v.params or '-'}",
    ]
    if v.match:  # a model variant's base: the request models it serves
        lines.append("match: " + ", ".join(v.match))
    if v.param_bounds:
        bounds = (f"{n} [{', '.join(f'{x:g}' for x in b)}]" for n, b in v.param_bounds.items())
        lines.append("param bounds: " + ", ".join(bounds))
    lines.append("variables: " + (", ".join(x.name for x in v.variables) or "-"))
    if v.defaults:
        lines.append(f"defaults: {v.defaults}")
    lines += [
        f"changelog: {v.changelog or '-'}",
        "caller's system messages: " + ("kept after" if v.caller_system == "after" else "dropped"),
    ]
    if v.template:  # an override has none
        lines += ["", v.template]
    for name, block in v.blocks.items():
        said = "default" if block.default else "no default"
        lines += ["", f"--- block {name}, at most {block.max_chars} chars; {said} ---"]
        if block.default:
            lines.append(block.default)
    for name, fill in v.fills.items():
        lines += ["", f"--- fill of block {name} ---", fill]
    return "\n".join(lines)


@prompts.command()
@prompt_argument()
@click.argument("version", type=int, required=False)
@pass_ctx
def show(ctx: Context, key: PromptKey, version: int | None) -> None:
    """Show a prompt's versions, or one version in full."""

    def action() -> None:
        if version is not None:
            ctx.emit(ctx.client.get_version(key, version), _version_text)
            return
        ctx.emit(ctx.client.get_prompt(key), _versions_table)

    run(action)


def _versions_table(prompt: api.Prompt) -> str:
    """A row per version; a MATCH column only for a model variant's base, whose versions
    each say which request models they serve (every other line has none to show)."""
    rows = [
        (v.version, v.status, v.author, when(v.created_at), v.model, v.changelog)
        for v in prompt.data
    ]
    headers = ["VERSION", "STATUS", "AUTHOR", "CREATED", "MODEL", "CHANGELOG"]
    if not any(v.match for v in prompt.data):
        return table(rows, headers)
    matched = [
        (*row[:5], ",".join(v.match), row[5]) for row, v in zip(rows, prompt.data, strict=True)
    ]
    return table(matched, [*headers[:5], "MATCH", headers[5]])


@prompts.command()
@prompt_argument()
@click.argument("a", type=int)
@click.argument("b", type=int)
@pass_ctx
def diff(ctx: Context, key: PromptKey, a: int, b: int) -> None:
    """Diff two versions of a prompt."""
    run(lambda: ctx.emit(ctx.client.diff(key, a, b), lambda d: d.diff.rstrip() or "(identical)"))


_PARAM_HEADERS = ("PARAM", "VALUE", "LAYER")


def _whose(e: api.Explain) -> str:
    if e.tenant is not None:
        return f"tenant {e.tenant}" + ("" if e.tier is None else f" (tier {e.tier})")
    return "the base alone" if e.tier is None else f"tier {e.tier}"


def _marked(parts: list[tuple[str, str]]) -> list[str]:
    """Text parts, each line behind its part's tag in a left margin: every line says who
    wrote it, however many lines a part spans (an empty part still shows its tag)."""
    width = max((len(tag) for tag, _ in parts), default=0)
    lines = []
    for tag, text in parts:
        for line in text.splitlines() or ["(empty)"]:
            lines.append(f"  {tag.ljust(width)}  {line}".rstrip())
    return lines


def explain_text(e: api.Explain) -> str:
    """The layers, each message (the composed one segment by segment, tagged
    ``[tenant:acme@4 block tone]``), then the parameters by layer, the model pin and the
    variables a request still has to supply."""
    lines = [f"{e.slug} for {_whose(e)}", f"layers: {e.layers}"]
    for number, message in enumerate(e.messages, start=1):
        head = f"message {number}: {message.role}, {message.layer}"
        if number == len(e.messages) and e.segments:
            head = f"message {number}: {message.role}, composed on {message.layer}"
            parts = [
                (f"[{s.layer}]" if s.block is None else f"[{s.layer} block {s.block}]", s.text)
                for s in e.segments
            ]
        else:
            parts = [(f"[{message.layer}]", message.text)]
        lines += ["", head, *_marked(parts)]
    lines.append("")
    if e.params:
        rows = [(name, orjson.dumps(p.value).decode(), p.layer) for name, p in e.params.items()]
        lines += ["params:", *(f"  {row}" for row in table(rows, _PARAM_HEADERS).splitlines())]
    else:
        lines.append("params: -")
    lines.append(f"model: {e.model or '- (the caller chooses)'}")
    lines.append("variables without a value: " + (", ".join(e.variables) or "-"))
    return "\n".join(lines)


@prompts.command()
@click.argument("slug")
@click.option(
    "--tenant",
    metavar="ID",
    help="Compose as this tenant's requests are: its override, then its tier's, on the base.",
)
@click.option(
    "--tier",
    metavar="NAME",
    help="Compose as this tier's requests are; with --tenant, as if the tenant had this tier "
    "(a preview).",
)
@click.option(
    "--model",
    metavar="MODEL",
    help="Compose as a request for this model is: the model variant it selects "
    "(default: the default variant).",
)
@click.option(
    "--version",
    type=click.IntRange(min=1),
    help="The base version to compose, of the variant the model selects (default: its "
    "prod version).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the admin API's answer (-o json).")
@pass_ctx
def explain(
    ctx: Context,
    slug: str,
    tenant: str | None,
    tier: str | None,
    model: str | None,
    version: int | None,
    as_json: bool,
) -> None:
    """What a request of SLUG is composed of: the messages put first, the composed prompt
    segment by segment marked by the layer (and block) that wrote it, the parameters by
    layer, the model pin, and the variables left for the request. Parts of overrides the
    base ignores are warnings on stderr. The model variant is the one --model selects, as
    a request's model does (there is no --variant)."""
    if as_json:
        ctx.output = "json"

    def action() -> None:
        answer = ctx.client.explain(key_of(slug), tenant, tier, version, model)
        ctx.emit(answer, explain_text)
        for ignored in answer.ignored:
            click.echo(f"warning: ignored: {ignored}", err=True)

    run(action)


def _audit_line(e: api.AuditEntry) -> str:
    return (
        f"{e.slug}: v{e.version} {e.from_status or '-'} -> {e.to_status} "
        f"by {e.actor} at {when(e.at)}" + (f" ({e.reason})" if e.reason else "")
    )


@prompts.command()
@prompt_argument()
@click.argument("version", type=int)
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
    help="Go ahead although the version has not passed the gates its slug requires "
    "(needs --reason; the audit keeps it with each gate overridden). See docs/gates.md.",
)
@wait_options
@pass_ctx
def promote(
    ctx: Context,
    key: PromptKey,
    version: int,
    reason: str,
    force: bool,
    override_gates: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Make VERSION the prod version of SLUG. A base version that breaks an override in
    use is refused unless --force (with --reason); one that has not passed its gates
    (an eval run, a judge score: docs/gates.md) unless --override-gates (with --reason)."""
    if force and not reason.strip():
        raise click.UsageError("--force needs --reason: it is kept in the audit log")
    if override_gates and not reason.strip():
        raise click.UsageError("--override-gates needs --reason: it is kept in the audit log")

    def action() -> None:
        answer = ctx.client.promote(
            key, version, reason, wait_seconds(wait, timeout), force, override_gates
        )
        ctx.emit(answer, _audit_line)
        report_served(ctx.output, f"v{answer.version}", answer.served)

    run(action)


@prompts.command()
@prompt_argument()
@click.option("--reason", default="", help="Why (kept in the audit log).")
@wait_options
@pass_ctx
def rollback(ctx: Context, key: PromptKey, reason: str, wait: bool, timeout: float) -> None:
    """Make the previous prod version of SLUG prod again."""

    def action() -> None:
        answer = ctx.client.rollback(key, reason, wait_seconds(wait, timeout))
        ctx.emit(answer, _audit_line)
        report_served(ctx.output, f"v{answer.version}", answer.served)

    run(action)


def _detail(entry: api.AuditEntry) -> str | None:
    """A rollout's facts in an audit row: `canary 25% (was 10%)`, `shadow 5%, ended`."""
    detail = entry.rollout_detail()
    if detail is None:
        return None
    text = f"{detail.mode} {detail.percent:g}%"
    if detail.from_percent is not None:
        text += f" (was {detail.from_percent:g}%)"
    if detail.ended_rollout:
        text += ", ended"
    return text


@prompts.command()
@prompt_argument()
@click.option(
    "--at", help="ISO-8601 instant: which version was prod then, and what a rollout served."
)
@pass_ctx
def history(ctx: Context, key: PromptKey, at: str | None) -> None:
    """The audit history of SLUG and its eval runs, or what it served at an instant."""

    def action() -> None:
        if at is not None:
            ctx.emit(ctx.client.served_at(key, at), _served_at)
        else:
            ctx.emit(
                ctx.client.history(key).data,
                lambda rows: _audit_table(rows) + _eval_runs(ctx, key),
            )

    run(action)


def _eval_runs(ctx: Context, key: PromptKey) -> str:
    """The stored eval runs under the audit (people only: `-o json` stays the audit list;
    the runs as JSON are `GET /admin/v1/prompts/{slug}/evals`)."""
    try:
        runs = ctx.client.eval_runs(key, limit=20).data
    except AdminError as exc:
        if exc.status in (404, 405):  # a proxy from before eval runs
            return ""
        if exc.status == 503:  # the audit above still stands
            return f"\n\nEval runs: not available now ({exc})"
        raise
    return "" if not runs else "\n\nEval runs (newest first):\n" + run_lines(runs)


def _audit_table(rows: list[api.AuditEntry]) -> str:
    return table(
        [
            (
                e.seq,
                when(e.at),
                e.action,
                e.version,
                e.from_status,
                e.to_status,
                e.actor,
                _detail(e),
                e.reason,
            )
            for e in rows
        ],
        ["SEQ", "AT", "ACTION", "VERSION", "FROM", "TO", "ACTOR", "DETAIL", "REASON"],
    )


def _known(value: Any) -> str:
    # Audit entries written before a field was recorded cannot say it.
    return "unknown" if value is None else str(value)


def _served_at(data: api.ServedAt) -> str:
    """Prod at the instant and, during a rollout, what the rollout served."""
    prod = data.prod_version
    text = f"{data.slug} at {data.at}: prod version {prod if prod is not None else 'none'}"
    rollout = data.rollout
    if rollout is None:
        return text + "; no rollout running"
    percent = rollout.percent
    share = "an unknown share" if percent is None else f"{percent:g}%"
    candidate = f"version {_known(rollout.candidate)}"
    if rollout.mode == "shadow":
        served = f"shadow of {candidate}: callers served prod, {share} of requests copied to it"
    elif rollout.mode == "canary":
        served = f"canary of {candidate} serving {share} of callers"
    else:
        served = f"rollout of {candidate} ({_known(rollout.mode)} mode) at {share}"
    segment = rollout.segment or {}
    reach = " and ".join(f"{kind} {', '.join(names)}" for kind, names in segment.items() if names)
    return (
        f"{text}; {served}{f' among {reach}' if reach else ''}, sticky "
        f"{_known(rollout.sticky)} (rollout {_known(rollout.id)}, started "
        f"{when(rollout.started_at)}, at this share since {when(rollout.percent_since)})"
    )


@prompts.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The proxy's config file, whose `safety` section the prompts are checked against "
    "(default: the built-in safety policy). No environment variable is read.",
)
def lint(folder: Path, config_path: Path | None) -> None:
    """Validate a folder of prompt files offline, the safety policy included; exit 1
    listing every problem. Warnings (variants only their names order) are listed too, and
    do not fail."""
    from proxy.config import ConfigError, load_safety_policy
    from proxy.registry.prompt_files import lint_prompts

    try:
        policy = load_safety_policy(config_path)
    except ConfigError as exc:
        click.echo(f"{config_path}: {exc}", err=True)
        sys.exit(2)
    found = lint_prompts(folder, policy)
    for problem in found.problems:
        click.echo(problem, err=True)
    for warning in found.warnings:
        click.echo(warning, err=True)
    if found.problems:
        sys.exit(1)
    click.echo(f"{folder}: OK")
