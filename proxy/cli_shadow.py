"""`promptproxy shadow ...`: watch shadow pairs live, or export them for offline evaluation.

Same conventions as `promptproxy prompts`: every command talks to the admin API (read role
suffices), one line per pair for people, `--output json` for scripts, errors exit non-zero.
`export` always writes JSON lines: it feeds evaluation scripts, not eyes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import click
import orjson

from proxy.cli_prompts import Context, _run, _when, admin_options, pass_ctx

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
@click.pass_context
def shadow(ctx: click.Context, admin_url: str, token: str | None, output: str) -> None:
    """Shadow pairs: the stable answer users got next to the candidate's, per request."""
    ctx.obj = Context(admin_url, token, output)


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


@shadow.command()
@click.argument("slug")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Pairs recorded since: seconds ago (600), 10m, 2h, 1d, or a unix time.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many pairs (oldest first).")
@pass_ctx
def export(ctx: Context, slug: str, since: str, limit: int | None) -> None:
    """Write the pairs of SLUG as JSON lines on stdout, oldest first, for offline evaluation."""

    def action() -> None:
        cursor = since
        boundary: set[str] = set()  # pairs at the cursor's instant, already written
        written = 0
        while limit is None or written < limit:
            want = EXPORT_PAGE if limit is None else min(EXPORT_PAGE, limit - written)
            ask = want + len(boundary)
            page = ctx.client.shadow_pairs(slug, since=cursor, limit=ask)
            fresh = [p for p in page if p["pair_id"] not in boundary][:want]
            for pair in fresh:
                click.echo(orjson.dumps(pair).decode())
            written += len(fresh)
            if not fresh or len(page) < ask:
                return
            # The next page starts at the last written pair's time; the pairs already
            # written at exactly that time are skipped there.
            last = fresh[-1]["ts"]
            done = boundary | {p["pair_id"] for p in fresh}
            boundary = {p["pair_id"] for p in page if p["ts"] == last and p["pair_id"] in done}
            cursor = repr(float(last))

    _run(action)
