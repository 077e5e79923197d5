"""The prompt checks of a pull request, for the GitHub Actions workflow beside this file
(prompts.yml; docs/prompts-as-code.md). Three commands, one per step of the `check` job:

    python pr_evals.py config --proxy-config promptproxy.yaml --out ci.yaml [--providers-from F]
        The config of the throwaway proxy the job starts on the runner: the team's safety
        policy, evals and tenants sections, with the bundled simulator as the provider
        (default) or the providers of --providers-from (real ones, keys from the env).
    python pr_evals.py baseline --prompts prompts --ref BASE_SHA --work DIR
        Push the base commit's prompt files to that proxy and promote each pushed version:
        prod there is what prod is today, as the base branch describes it.
    python pr_evals.py evals --prompts prompts --base DIR --comment FILE
        Push the pull request's prompt files and, for each prompt that got a new version and
        has a suite, run `promptproxy eval` against prod; write one Markdown comment. Exit 0
        when every eval passed, 3 when one did not, 1 when one could not run.

Standard library plus promptproxy itself (installed on the runner, the same version as the
proxy it talks to): PyYAML through it, and `promptproxy` run as ``python -m proxy``. The
admin URL and token come from PROMPTPROXY_ADMIN_URL and PROMPTPROXY_ADMIN_TOKEN, as for
every CLI command.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from proxy.evals.suite import find_suite

#: `promptproxy eval`'s exit status when a run finished and did not pass.
NOT_PASSED = 3
ERROR = 1
#: The first line of the comment, so a later run can find and replace it.
MARKER = "<!-- promptproxy-prompt-checks -->"
#: GitHub refuses comments over 65536 characters.
MAX_COMMENT = 60_000
#: The sections of the team's config the CI proxy keeps: what decides whether a version is
#: accepted (safety, the tiers an override may name) and how evals judge (evals). The rest
#: (stores, tokens, ports, shadows, sinks) belongs to production.
KEPT_SECTIONS = ("safety", "evals", "tenants")
PROMPT_SUFFIXES = (".md", ".yaml", ".yml")
LAYER_FOLDERS = {"tenants": "--tenant", "tiers": "--tier"}
RUN_TIMEOUT = 1800.0


# -- config ---------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: the top level must be a mapping of sections")
    return data


def simulator_providers(sim_port: int) -> dict[str, Any]:
    """The bundled simulator, in-process, as every provider: Claude models through its
    Messages API face, every other model through its OpenAI face (as config/promptproxy.yaml)."""
    root = f"http://127.0.0.1:{sim_port}"
    return {
        "providers": [
            {"name": "anthropic", "kind": "anthropic", "base_url": root, "models": ["claude-*"]},
            {
                "name": "openai",
                "kind": "openai-compatible",
                "base_url": f"{root}/v1",
                "models": ["*"],
            },
        ],
        "simulator": {"enabled": True, "host": "127.0.0.1", "port": sim_port},
    }


def ci_config(
    team: dict[str, Any],
    providers_from: dict[str, Any] | None,
    *,
    port: int,
    admin_port: int,
    sim_port: int,
) -> dict[str, Any]:
    """The CI proxy's config: the team's ``KEPT_SECTIONS``, loopback ports, no bootstrap
    folder (the job pushes what it compares), and the providers: the simulator, or the
    ``providers`` and ``upstream`` of ``providers_from`` (whose ``api_key_env`` the proxy
    reads from its environment)."""
    config: dict[str, Any] = {key: team[key] for key in KEPT_SECTIONS if key in team}
    config["server"] = {
        "host": "127.0.0.1",
        "port": port,
        "admin_host": "127.0.0.1",
        "admin_port": admin_port,
    }
    if providers_from is None:
        config.update(simulator_providers(sim_port))
    else:
        picked: dict[str, Any] = {
            key: providers_from[key] for key in ("providers", "upstream") if key in providers_from
        }
        if not picked:
            raise SystemExit("--providers-from: the file has neither `providers` nor `upstream`")
        config.update(picked)
    return config


def cmd_config(args: argparse.Namespace) -> int:
    team = read_yaml(args.proxy_config)
    providers_from = None if args.providers_from is None else read_yaml(args.providers_from)
    config = ci_config(
        team, providers_from, port=args.port, admin_port=args.admin_port, sim_port=args.sim_port
    )
    # JSON is YAML: no dumper quirks, and the proxy reads it as it reads any config.
    args.out.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    where = "the simulator" if providers_from is None else f"the providers of {args.providers_from}"
    print(f"CI proxy config written to {args.out}: evals against {where}")
    return 0


# -- running the CLI ------------------------------------------------------------------------


def promptproxy(*args: str) -> subprocess.CompletedProcess[str]:
    """``promptproxy ARGS`` of the installation running this script."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@dataclasses.dataclass(frozen=True)
class Pushed:
    """One file `prompts push -o json` reported, and the version line it addressed."""

    file: str  # relative to the prompts folder
    slug: str
    version: int
    created: bool
    variant: str | None
    layer: tuple[str, str] | None  # ("tenants", "acme"), ("tiers", "pro")

    def key_args(self) -> list[str]:
        """The slug and the options naming its version line on the command line."""
        args = [self.slug]
        if self.variant is not None:
            args += ["--variant", self.variant]
        if self.layer is not None:
            args += [LAYER_FOLDERS[self.layer[0]], self.layer[1]]
        return args

    @property
    def name(self) -> str:
        where = "" if self.layer is None else f"{self.layer[0]}/{self.layer[1]}/"
        return f"{where}{self.slug}" + ("" if self.variant is None else f"@{self.variant}")


def line_of(file: Path, folder: Path, slug: str, version: int, created: bool) -> Pushed:
    """``file``'s version line, from where it sits (docs: config/prompts/README.md): a
    ``<slug>@<variant>`` name is a variant, ``tenants/ID/`` and ``tiers/NAME/`` a layer.
    (`prompts push -o json` reports each file's slug, not its variant or layer.)"""
    relative = file.resolve().relative_to(folder.resolve())
    stem = next(
        (relative.name[: -len(s)] for s in PROMPT_SUFFIXES if relative.name.endswith(s)),
        relative.name,
    )
    variant = stem.split("@", 1)[1] if "@" in stem else None
    parts = relative.parts
    layer = None
    if len(parts) >= 3 and parts[-3] in LAYER_FOLDERS:
        layer = (parts[-3], parts[-2])
    return Pushed(relative.as_posix(), slug, version, created, variant, layer)


def push(folder: Path) -> list[Pushed]:
    """Push every prompt file of ``folder`` (`prompts push`: unchanged ones are no-ops)."""
    done = promptproxy("prompts", "push", "-o", "json", str(folder))
    if done.returncode != 0:
        raise PushFailed(done.stderr.strip() or done.stdout.strip())
    return [
        line_of(
            Path(item["file"]), folder, item["slug"], int(item["version"]), bool(item["created"])
        )
        for item in json.loads(done.stdout)
    ]


class PushFailed(Exception):
    pass


# -- baseline -------------------------------------------------------------------------------


def extract(ref: str, prompts: str, work: Path) -> Path | None:
    """``prompts`` as commit ``ref`` has it, written under ``work``; None when it has none
    (a pull request adding the first prompts)."""
    exists = ["git", "cat-file", "-e", f"{ref}:{prompts}"]
    if subprocess.run(exists, capture_output=True, timeout=60, check=False).returncode:
        return None
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "--", prompts],
        capture_output=True,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(work, filter="data")
    return work / prompts


def cmd_baseline(args: argparse.Namespace) -> int:
    record: dict[str, int] = {}
    folder = extract(args.ref, args.prompts, args.work)
    if folder is None:
        print(f"{args.ref} has no {args.prompts}/: no baseline, evals run on candidates alone")
    else:
        try:
            pushed = push(folder)
        except PushFailed as exc:
            # The base does not load under this policy or version (a tightened safety
            # policy, a newer promptproxy): the candidates are then evaluated alone.
            print(f"::warning::the base's prompt files were refused: {exc}")
            pushed = []
        for item in pushed:
            done = promptproxy(
                "prompts", "promote", *item.key_args(), str(item.version),
                "--reason", f"baseline: {args.ref}",
            )  # fmt: skip
            if done.returncode == 0:
                record[item.name] = item.version
                print(f"baseline {item.name}: v{item.version} promoted")
            else:
                why = done.stderr.strip()
                print(f"::warning::baseline {item.name} v{item.version} not promoted: {why}")
    (args.work / "baseline.json").parent.mkdir(parents=True, exist_ok=True)
    (args.work / "baseline.json").write_text(json.dumps(record), encoding="utf-8")
    return 0


# -- evals ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What became of one pushed prompt in this pull request."""

    item: Pushed
    status: str  # passed, not-passed, error, no-suite, override, unchanged
    detail: str = ""
    markdown: str = ""


def suite_changed(suite: Path, prompts: Path, base_prompts: Path | None) -> bool:
    """Whether the pull request adds or edits ``suite`` (bytes, as git sees files)."""
    if base_prompts is None:
        return True
    before = base_prompts / suite.relative_to(prompts)
    return not before.is_file() or before.read_bytes() != suite.read_bytes()


def run_eval(
    item: Pushed, baseline: str, prompts: Path, markdown: Path, criteria: Sequence[str]
) -> Outcome:
    args = ["eval", item.slug, "--candidate", str(item.version), "--baseline", baseline]
    if item.variant is not None:
        args += ["--variant", item.variant]
    done = promptproxy(*args, "--prompts", str(prompts), "--markdown", str(markdown), *criteria)
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    if done.returncode == 0:
        return Outcome(item, "passed", markdown=markdown.read_text(encoding="utf-8"))
    if done.returncode == NOT_PASSED:
        return Outcome(item, "not-passed", markdown=markdown.read_text(encoding="utf-8"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return Outcome(item, "error", detail=lines[-1] if lines else f"exit status {done.returncode}")


def evaluate(
    pushed: Sequence[Pushed],
    prompts: Path,
    base_prompts: Path | None,
    baseline: dict[str, int],
    work: Path,
    criteria: Sequence[str],
) -> list[Outcome]:
    """Each new version with a suite, against the base's prod (alone when the base had no
    such prompt); each unchanged prompt whose suite the pull request changed, on its prod
    version alone (does today's prompt pass the new suite?)."""
    outcomes = []
    for index, item in enumerate(pushed):
        if item.layer is not None:
            status = "override" if item.created else "unchanged"
            outcomes.append(Outcome(item, status))
            continue
        suite = find_suite(prompts, item.slug, None, item.variant)
        if suite is None:
            outcomes.append(Outcome(item, "no-suite" if item.created else "unchanged"))
            continue
        if item.created:
            against = "prod" if item.name in baseline else "none"
        elif suite_changed(suite, prompts, base_prompts):
            against = "none"
        else:
            outcomes.append(Outcome(item, "unchanged"))
            continue
        outcomes.append(run_eval(item, against, prompts, work / f"eval-{index}.md", criteria))
    return outcomes


_STATUS = {
    "passed": "✅ eval passed",
    "not-passed": "❌ eval did not pass",
    "error": "❗ eval could not run",
    "no-suite": "new version, no suite: not evaluated",
    "override": "new override version: not evaluated (evals run on base versions)",
}


def comment(outcomes: Sequence[Outcome], providers: str, head: str, error: str = "") -> str:
    """The pull request comment: a table of what changed, then each eval's summary."""
    failed = [o for o in outcomes if o.status in ("not-passed", "error")]
    if error:
        title = f"❗ The prompt checks could not run: {error}"
    elif failed:
        title = f"❌ {len(failed)} of the prompt evals did not pass"
    elif any(o.status == "passed" for o in outcomes):
        title = "✅ Every prompt eval passed"
    else:
        title = "No prompt eval to run"
    out = [MARKER, f"## promptproxy: {title}", ""]
    out.append(
        f"Against {providers}, at `{head[:12]}`; new versions are drafts in a throwaway registry."
    )
    changed = [o for o in outcomes if o.status != "unchanged"]
    if changed:
        out += ["", "| prompt | version | result |", "|---|---|---|"]
        for o in changed:
            result = _STATUS[o.status] + (f": {o.detail}" if o.detail else "")
            out.append(f"| `{o.item.name}` | v{o.item.version} | {result.replace('|', '/')} |")
    unchanged = [o.item.name for o in outcomes if o.status == "unchanged"]
    if unchanged:
        out += ["", "Unchanged: " + ", ".join(f"`{name}`" for name in unchanged) + "."]
    for o in outcomes:
        if o.markdown:
            out += ["", o.markdown.rstrip()]
    text = "\n".join(out) + "\n"
    if len(text) > MAX_COMMENT:
        text = text[:MAX_COMMENT] + "\n\n… (cut: the whole report is in the job's summary)\n"
    return text


def cmd_evals(args: argparse.Namespace) -> int:
    baseline_file = args.work / "baseline.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else {}
    base_prompts = args.work / args.prompts
    criteria = ["--min-pass-rate", args.min_pass_rate, "--max-drop", args.max_drop]
    providers = args.providers
    head = args.head or os.environ.get("GITHUB_SHA", "HEAD")
    error = ""
    try:
        pushed = push(args.prompts)
    except PushFailed as exc:
        pushed, error = [], str(exc).splitlines()[0]
        print(f"::error::the pull request's prompt files were refused: {exc}")
    outcomes = evaluate(
        pushed,
        args.prompts,
        base_prompts if base_prompts.is_dir() else None,
        baseline,
        args.work,
        criteria,
    )
    text = comment(outcomes, providers, head, error)
    args.comment.write_text(text, encoding="utf-8")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(text)
    statuses = {o.status for o in outcomes}
    if error or "error" in statuses:
        return ERROR
    return NOT_PASSED if "not-passed" in statuses else 0


# -- command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = top.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="write the CI proxy's config")
    config.add_argument("--proxy-config", type=Path, required=True)
    config.add_argument("--providers-from", type=Path)
    config.add_argument("--out", type=Path, required=True)
    config.add_argument("--port", type=int, default=8080)
    config.add_argument("--admin-port", type=int, default=8081)
    config.add_argument("--sim-port", type=int, default=8090)
    config.set_defaults(run=cmd_config)

    base = commands.add_parser("baseline", help="push and promote the base's prompt files")
    base.add_argument("--prompts", required=True, help="the prompts folder, from the repo root")
    base.add_argument("--ref", required=True, help="the base commit")
    base.add_argument("--work", type=Path, required=True)
    base.set_defaults(run=cmd_baseline)

    evals = commands.add_parser("evals", help="push the pull request's files, run the evals")
    evals.add_argument("--prompts", type=Path, required=True)
    evals.add_argument("--work", type=Path, required=True, help="the baseline step's --work")
    evals.add_argument("--comment", type=Path, required=True, help="the Markdown comment file")
    evals.add_argument("--providers", default="the simulator", help="said in the comment")
    evals.add_argument("--head", help="the pull request's head commit, said in the comment")
    evals.add_argument("--min-pass-rate", default="0")
    evals.add_argument("--max-drop", default="0")
    evals.set_defaults(run=cmd_evals)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
