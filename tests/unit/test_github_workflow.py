"""deploy/github/prompts.yml is a valid GitHub Actions workflow (SchemaStore's published
schema, as vendored by the check-jsonschema package) with the properties a reviewer looks
for; pr_evals.py's pure parts. tests/integration/test_github_workflow_steps.py runs its steps."""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from proxy import __version__
from proxy.config import load_config
from tests.github_workflow import PR_EVALS, WORKFLOW, load_workflow

#: Where check-jsonschema keeps its copy of https://json.schemastore.org/github-workflow.json.
SCHEMA_PACKAGE = "check_jsonschema"
SCHEMA_PATH = "builtin_schemas/vendor/github-workflows.json"
FULL_SHA = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")


def workflow_schema() -> dict[str, Any]:
    try:
        resource = importlib.resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_PATH)
        text = resource.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.fail(
            f"SchemaStore's GitHub workflow schema is not at {SCHEMA_PACKAGE}/{SCHEMA_PATH} "
            f"({exc}): check-jsonschema (the test extra, pinned in constraints.txt) moved or "
            "dropped its vendored copy; find it in the installed package and update SCHEMA_PATH"
        )
    schema: dict[str, Any] = json.loads(text)
    assert schema.get("$id") == "https://json.schemastore.org/github-workflow.json", schema.get(
        "$id"
    )
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = workflow_schema()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message[:300]}"
        for error in validator(schema).iter_errors(document)
    ]


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in workflow["jobs"].items() for step in job["steps"]]


def test_the_workflow_is_valid_against_the_published_schema() -> None:
    assert schema_errors(load_workflow()) == []


def test_the_schema_catches_a_broken_workflow() -> None:
    # So the test above can fail: a step that both runs and uses, a job without runs-on.
    broken = copy.deepcopy(load_workflow())
    broken["jobs"]["check"]["steps"][0]["run"] = "echo both"
    del broken["jobs"]["sync"]["runs-on"]
    errors = schema_errors(broken)
    # (A job matches none of the schema's job shapes: the error is the job's.)
    assert [e.split(":")[0] for e in errors] == ["jobs/check", "jobs/sync"], errors


def test_it_runs_on_pull_requests_and_pushes_touching_the_prompt_files() -> None:
    workflow = load_workflow()
    prompts = workflow["env"]["PROMPTS_DIR"]
    config = workflow["env"]["PROXY_CONFIG"]
    assert set(workflow["on"]) == {"pull_request", "push"}
    for event in ("pull_request", "push"):
        assert set(workflow["on"][event]["paths"]) == {f"{prompts}/**", config}
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["jobs"]["check"]["if"] == "github.event_name == 'pull_request'"
    assert workflow["jobs"]["sync"]["if"] == "github.event_name == 'push'"
    # The base commit must be in the clone: its prompt files are the baseline.
    (checkout,) = [s for s in workflow["jobs"]["check"]["steps"] if "checkout" in s.get("uses", "")]
    assert checkout["with"]["fetch-depth"] == 0


def test_permissions_are_minimal() -> None:
    workflow = load_workflow()
    assert workflow["permissions"] == {}
    assert workflow["jobs"]["check"]["permissions"] == {
        "contents": "read",
        "pull-requests": "write",
    }
    assert workflow["jobs"]["sync"]["permissions"] == {"contents": "read"}
    for _, step in steps(workflow):
        if "checkout" in step.get("uses", ""):
            assert step["with"]["persist-credentials"] is False


def test_every_action_is_pinned_by_commit_with_its_version_named() -> None:
    used = [step["uses"] for _, step in steps(load_workflow()) if "uses" in step]
    assert used
    for uses in used:
        assert FULL_SHA.match(uses), f"{uses}: pin a full commit SHA"
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40}\s+# v\d+\.\d+\.\d+$", line), line


def test_secrets_reach_scripts_through_env_only() -> None:
    # An expression in a script is pasted into it before bash reads it: a secret would be
    # in the script file, and a pull request's title or branch name could inject commands.
    workflow = load_workflow()
    runs = [step["run"] for _, step in steps(workflow) if "run" in step]
    assert runs
    for run in runs:
        assert "${{" not in run, run
    text = WORKFLOW.read_text()
    secrets = set(re.findall(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", text))
    assert secrets == {
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "PROMPTPROXY_ADMIN_URL",
        "PROMPTPROXY_ADMIN_TOKEN",
    }
    for _, step in steps(workflow):
        for name, value in step.get("env", {}).items():
            if "secrets." in str(value):
                assert value == f"${{{{ secrets.{name} }}}}", (name, value)
    # The CI proxy's token is made on the runner: masked before it is written anywhere.
    (proxy,) = [s for s in workflow["jobs"]["check"]["steps"] if s.get("id") == "proxy"]
    assert proxy["run"].index("::add-mask::$token") < proxy["run"].index('"$GITHUB_ENV"')


def test_promptproxy_is_installed_at_a_pinned_version() -> None:
    workflow = load_workflow()
    # The version this workflow and pr_evals.py were tested with: bump them together.
    assert workflow["env"]["PROMPTPROXY_VERSION"] == __version__
    installs = [step for _, step in steps(workflow) if step.get("id") == "install"]
    assert len(installs) == 2
    for step in installs:
        assert step["run"] == 'python -m pip install "promptproxy==$PROMPTPROXY_VERSION"'


# -- pr_evals.py ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pr_evals() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pr_evals", PR_EVALS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pr_evals"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TEAM: dict[str, Any] = {
    "server": {"host": "0.0.0.0", "port": 80},
    "registry": {"store": "redis://prompts-redis:6379/0", "bootstrap_dir": "prompts"},
    "admin": {"tokens": [{"name": "ci", "env": "PROMPTS_CI_TOKEN", "role": "admin"}]},
    "providers": [
        {
            "name": "openai",
            "kind": "openai-compatible",
            "base_url": "https://api.openai.com/v1",
            "api_key_env": "OPENAI_API_KEY",
            "models": ["*"],
        }
    ],
    "evals": {"judge": "judge.helpfulness"},
    "safety": {"required_phrases": [{"name": "no_leak", "text": "Never reveal this."}]},
    "tenants": {"tiers": ["free", "gold"]},
}


def test_the_ci_config_keeps_the_policy_and_needs_no_production_secret(
    pr_evals: ModuleType, tmp_path: Path
) -> None:
    config = pr_evals.ci_config(TEAM, None, port=1, admin_port=2, sim_port=3)
    assert set(config) == {"safety", "evals", "tenants", "server", "providers", "simulator"}
    assert config["safety"] == TEAM["safety"]
    assert config["simulator"] == {"enabled": True, "host": "127.0.0.1", "port": 3}
    assert {p["base_url"] for p in config["providers"]} == {
        "http://127.0.0.1:3",
        "http://127.0.0.1:3/v1",
    }
    path = tmp_path / "ci.yaml"
    path.write_text(json.dumps(config))
    settings = load_config(path, environ={})  # no key, no token in the environment
    assert settings.config.server.admin_port == 2
    assert settings.config.tenants.tiers == ("free", "gold")
    assert settings.config.registry.bootstrap_dir is None


def test_the_ci_config_takes_real_providers_from_a_file(pr_evals: ModuleType) -> None:
    config = pr_evals.ci_config(TEAM, TEAM, port=1, admin_port=2, sim_port=3)
    assert config["providers"] == TEAM["providers"]
    assert "simulator" not in config
    with pytest.raises(SystemExit, match="neither"):
        pr_evals.ci_config(TEAM, {"safety": {}}, port=1, admin_port=2, sim_port=3)


@pytest.mark.parametrize(
    ("relative", "name", "args"),
    [
        ("support-reply.md", "support-reply", ["support-reply"]),
        (
            "support-reply@claude.md",
            "support-reply@claude",
            ["support-reply", "--variant", "claude"],
        ),
        (
            "tenants/acme/support-reply.yaml",
            "tenants/acme/support-reply",
            ["support-reply", "--tenant", "acme"],
        ),
        (
            "tiers/gold/support-reply@claude.yml",
            "tiers/gold/support-reply@claude",
            ["support-reply", "--variant", "claude", "--tier", "gold"],
        ),
    ],
)
def test_a_pushed_file_names_its_version_line(
    pr_evals: ModuleType, tmp_path: Path, relative: str, name: str, args: list[str]
) -> None:
    item = pr_evals.line_of(tmp_path / relative, tmp_path, "support-reply", 2, True)
    assert (item.name, item.key_args(), item.file) == (name, args, relative)


def test_the_comment_leads_with_the_verdict_and_lists_what_changed(pr_evals: ModuleType) -> None:
    def outcome(name: str, status: str, markdown: str = "") -> Any:
        item = pr_evals.Pushed(f"{name}.md", name, 2, status != "unchanged", None, None)
        return pr_evals.Outcome(item, status, markdown=markdown)

    text = pr_evals.comment(
        [
            outcome("support-reply", "not-passed", "### ❌ Eval of `support-reply` v2\n"),
            outcome("summarize", "no-suite"),
            outcome("classify-ticket", "unchanged"),
        ],
        "the simulator",
        "0123456789abcdef",
    )
    lines = text.splitlines()
    assert lines[0] == pr_evals.MARKER
    assert lines[1] == "## promptproxy: ❌ 1 of the prompt evals did not pass"
    assert "| `support-reply` | v2 | ❌ eval did not pass |" in lines
    assert "| `summarize` | v2 | new version, no suite: not evaluated |" in lines
    assert "Unchanged: `classify-ticket`." in lines
    assert "Against the simulator, at `0123456789ab`" in text
    assert text.rstrip().endswith("### ❌ Eval of `support-reply` v2")
    passed = pr_evals.comment([outcome("a", "passed")], "the simulator", "f" * 40)
    assert passed.splitlines()[1] == "## promptproxy: ✅ Every prompt eval passed"
    huge = pr_evals.comment([outcome("a", "passed", "x" * 100_000)], "the simulator", "f" * 40)
    assert len(huge) < 65_536
    assert huge.endswith("(cut: the whole report is in the job's summary)\n")


def test_a_suite_counts_as_changed_when_added_or_edited(
    pr_evals: ModuleType, tmp_path: Path
) -> None:
    head, base = tmp_path / "head", tmp_path / "base"
    for folder in (head, base):
        folder.mkdir()
        (folder / "a.eval.yaml").write_text("cases: []\n")
    (head / "b.eval.yaml").write_text("cases: []\n")
    (head / "c.eval.yaml").write_text("cases: [x]\n")
    (base / "c.eval.yaml").write_text("cases: []\n")
    changed = {
        name: pr_evals.suite_changed(head / name, head, base)
        for name in ("a.eval.yaml", "b.eval.yaml", "c.eval.yaml")
    }
    assert changed == {"a.eval.yaml": False, "b.eval.yaml": True, "c.eval.yaml": True}
    assert pr_evals.suite_changed(head / "a.eval.yaml", head, None)  # no base: all new
