"""deploy/github/prompts.yml's steps, run as a GitHub runner runs them, in a team's repository
made here (a base commit with the example prompts, a pull request commit on it), against the
simulator. What GitHub provides is stood in for: `actions/checkout` (the repository is the
working directory, at the pull request's commit), `actions/setup-python` and the `pip
install` step (this checkout's installed promptproxy is first on PATH), and the comment step,
the one step that calls GitHub: the test reads the file it would post. Every other `run:`
step runs with bash as written, with the environment the workflow sets; only the ports come
from the test, through the env variables the workflow declares for them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.github_workflow import PR_EVALS, REPO, WORKFLOW, load_workflow
from tests.processes import ProxyProc, free_port, proxy, simulator

pytestmark = pytest.mark.integration

#: The steps the test stands in for (their ids), and the actions it knows.
REPLACED = {"install", "comment"}
ACTIONS = ("actions/checkout@", "actions/setup-python@")
#: What `serve` says when a port it was given is taken (tests/processes.py retries likewise).
PORT_TAKEN = "the port is already in use"
PORT_ATTEMPTS = 5
STEP_TIMEOUT = 240
SIM_KEY = "sk-test-simulated-provider-key-0123456789"

#: A production config as a team keeps it: a shared store, a token from the environment,
#: real providers, its own safety rule. The CI proxy needs none of its secrets.
TEAM_CONFIG = """\
server: {host: 0.0.0.0, port: 8080}
registry: {store: "redis://prompts-redis:6379/0"}
admin:
  tokens: [{name: deployer, env: PROMPTS_DEPLOY_TOKEN, role: admin}]
providers:
  - {name: openai, kind: openai-compatible, base_url: "https://api.openai.com/v1",
     api_key_env: OPENAI_API_KEY, models: ["*"]}
evals:
  judge: judge.helpfulness
safety:
  denied:
    - name: competitor
      pattern: '(?P<verb>recommend)\\s+globex'
      message: names a competitor
"""


@dataclass
class Step:
    id: str
    status: str  # ok, failed, skipped, replaced
    output: str = ""


@dataclass
class Job:
    steps: list[Step]
    failed: bool
    temp: Path

    def step(self, step_id: str) -> Step:
        (found,) = [s for s in self.steps if s.id == step_id]
        return found

    def statuses(self) -> dict[str, str]:
        return {s.id: s.status for s in self.steps}

    @property
    def comment(self) -> str:
        return (self.temp / "promptproxy-comment.md").read_text(encoding="utf-8")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def team_repo(root: Path) -> tuple[Path, str]:
    """A repository as the docs tell a team to set it up, with one commit: its SHA."""
    repo = root / "app"
    shutil.copytree(REPO / "config" / "prompts", repo / "prompts")
    (repo / "promptproxy.yaml").write_text(TEAM_CONFIG)
    workflows = repo / ".github" / "workflows"
    workflows.mkdir(parents=True)
    shutil.copy(WORKFLOW, workflows / "prompts.yml")
    script = repo / load_workflow()["env"]["PR_EVALS"]
    script.parent.mkdir(parents=True)
    shutil.copy(PR_EVALS, script)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "team@example.com")
    git(repo, "config", "user.name", "Team")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "prompts")
    git(repo, "checkout", "-q", "-b", "change")
    return repo, git(repo, "rev-parse", "HEAD")


def commit(repo: Path, edits: Mapping[str, tuple[str, str]], message: str) -> str:
    """Replace text in prompt files (each edit must apply), commit: the new SHA."""
    for name, (old, new) in edits.items():
        path = repo / "prompts" / name
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new, 1))
    git(repo, "commit", "-q", "-am", message)
    return git(repo, "rev-parse", "HEAD")


# -- a runner, as much of one as the workflow uses ------------------------------------------

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def substitute(value: Any, contexts: Mapping[str, str]) -> str:
    """``${{ name }}`` replaced by ``contexts[name]``; anything else is the test's error."""

    def one(match: re.Match[str]) -> str:
        assert match.group(1) in contexts, f"the test does not know ${{{{ {match.group(1)} }}}}"
        return contexts[match.group(1)]

    return _EXPRESSION.sub(one, str(value))


def condition(expression: str | None, contexts: Mapping[str, str], failed: bool) -> bool:
    """The few `if:` forms the workflow uses."""
    if expression is None:
        return not failed
    expr = _EXPRESSION.sub(lambda m: m.group(1), expression).strip()
    if expr in ("always()", "!cancelled()"):
        return True
    if expr == "failure()":
        return failed
    event = re.fullmatch(r"github\.event_name == '(\w+)'", expr)
    assert event is not None, f"the test does not know `if: {expression}`"
    return not failed and contexts["github.event_name"] == event.group(1)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        assert sep, f"$GITHUB_ENV line the test does not read: {line!r}"
        values[name] = value
    return values


def run_job(
    job_name: str,
    repo: Path,
    temp: Path,
    contexts: Mapping[str, str],
    env_overrides: Mapping[str, str] = {},
) -> Job:
    workflow = load_workflow()
    job = workflow["jobs"][job_name]
    assert condition(job.get("if"), contexts, failed=False), f"{job_name} would not run"
    assert set(env_overrides) <= set(workflow["env"]), "the workflow does not read these"
    temp.mkdir(parents=True, exist_ok=True)
    github_env = temp / "github.env"
    github_env.touch()
    summary = temp / "step-summary.md"
    venv_bin = str(Path(sys.executable).parent)
    runner = {
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", str(temp)),
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(repo),
        "GITHUB_SHA": contexts["github.sha"],
        "GITHUB_EVENT_NAME": contexts["github.event_name"],
        "GITHUB_ENV": str(github_env),
        "GITHUB_OUTPUT": str(temp / "github.output"),
        "GITHUB_STEP_SUMMARY": str(summary),
        "RUNNER_TEMP": str(temp),
    }
    defined = {name: substitute(value, contexts) for name, value in workflow["env"].items()}
    defined |= {name: substitute(value, contexts) for name, value in job.get("env", {}).items()}
    defined |= env_overrides
    shell = workflow["defaults"]["run"]["shell"]
    assert shell == "bash"
    results: list[Step] = []
    failed = False
    for index, step in enumerate(job["steps"]):
        step_id = step.get("id", f"step-{index}")
        if not condition(step.get("if"), contexts, failed):
            results.append(Step(step_id, "skipped"))
            continue
        if "uses" in step:
            assert step["uses"].startswith(ACTIONS), f"the test cannot stand in for {step['uses']}"
            results.append(Step(step_id, "replaced"))
            continue
        if step_id in REPLACED:
            results.append(Step(step_id, "replaced"))
            continue
        env = runner | defined | read_env_file(github_env)
        env |= {name: substitute(value, contexts) for name, value in step.get("env", {}).items()}
        script = temp / f"step-{index}.sh"
        script.write_text(step["run"])
        # As GitHub runs `shell: bash`.
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        ok = done.returncode == 0 or step.get("continue-on-error") is True
        results.append(Step(step_id, "ok" if ok else "failed", done.stdout))
        failed = failed or not ok
    return Job(results, failed, temp)


@contextlib.contextmanager
def proxy_reaped(temp: Path) -> Iterator[None]:
    """However a job ends, the proxy its steps started ends with the test."""
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int((temp / "promptproxy.pid").read_text()), signal.SIGKILL)


def check_job(repo: Path, root: Path, base: str, head: str, **env: str) -> Job:
    """The `check` job of a pull request from ``base`` to ``head``, on fresh ports (again
    with others when one was taken before the proxy bound it)."""
    contexts = {
        "github.event_name": "pull_request",
        "github.sha": head,
        "github.event.pull_request.base.sha": base,
        "github.event.pull_request.head.sha": head,
        "github.event.pull_request.number": "7",
        "github.repository": "team/app",
        "github.token": "unused: the comment step is not run",
        "secrets.OPENAI_API_KEY": env.pop("OPENAI_API_KEY", ""),
        "secrets.ANTHROPIC_API_KEY": "",
        "env.PYTHON_VERSION": "3",
    }
    for attempt in range(PORT_ATTEMPTS):
        temp = root / f"runner-{head[:8]}-{attempt}"
        ports = {
            "CI_PROXY_PORT": str(free_port()),
            "CI_ADMIN_PORT": str(free_port()),
            "CI_SIM_PORT": str(free_port()),
        }
        with proxy_reaped(temp):
            job = run_job("check", repo, temp, contexts, ports | env)
        log = temp / "promptproxy.log"
        if job.step("proxy").status == "failed" and PORT_TAKEN in log.read_text():
            continue
        return job
    raise AssertionError("no free ports for the CI proxy")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("github")
    repo, base = team_repo(root)
    return root, repo, base


def branch(repo: Path, base: str, name: str) -> None:
    git(repo, "checkout", "-q", "-B", name, base)


# -- the check job --------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_degraded_prompt_fails_the_check_and_the_comment_says_why(
    repo: tuple[Path, Path, str],
) -> None:
    root, app, base = repo
    branch(app, base, "degrade")
    head = commit(
        app,
        {
            # Most of every answer's words become noise: the judge scores it far below its
            # threshold in every sample (the simulator's stand-in for a worse prompt).
            "support-reply.md": (
                "- Keep the reply under 150 words.",
                "- Keep the reply under 150 words. [[sim noise=0.9]]",
            ),
            "summarize.md": ("Lead with the decision", "Start with the decision"),
        },
        "support-reply: shorter rules",
    )
    job = check_job(app, root, base, head)

    assert job.failed
    assert job.statuses() == {
        "step-0": "replaced",
        "step-1": "replaced",
        "install": "replaced",
        "lint": "ok",
        "proxy": "ok",
        "baseline": "ok",
        "evals": "failed",
        "comment": "replaced",  # runs after a failure too: the test reads its file instead
        "proxy-log": "ok",
        "stop": "ok",
    }
    assert "proxy ready on 127.0.0.1" in job.step("proxy").output
    baseline = job.step("baseline").output
    for slug in ("support-reply", "summarize", "classify-ticket", "judge.helpfulness"):
        assert f"baseline {slug}: v1 promoted" in baseline

    comment = job.comment
    assert comment.startswith("<!-- promptproxy-prompt-checks -->\n")
    assert "## promptproxy: ❌ 1 of the prompt evals did not pass" in comment
    assert f"Against the simulator, at `{head[:12]}`" in comment
    assert "| `support-reply` | v2 | ❌ eval did not pass |" in comment
    assert "| `summarize` | v2 | new version, no suite: not evaluated |" in comment
    assert "Unchanged: `classify-ticket`, `judge.helpfulness`." in comment
    # The eval's own Markdown summary, as `promptproxy eval --markdown` wrote it.
    (summary,) = (job.temp / "promptproxy-base").glob("eval-*.md")
    assert summary.read_text().strip() in comment
    assert "### ❌ Eval of `support-reply` v2 against v1: did not pass" in comment
    assert "| off-topic-question | 0/3 | 3/3 | assert[1] judge.helpfulness v1 scored" in comment
    assert (job.temp / "step-summary.md").read_text() == comment
    # The step the test stood in for posts exactly that file.
    (posting,) = [s for s in load_workflow()["jobs"]["check"]["steps"] if s.get("id") == "comment"]
    assert '"$RUNNER_TEMP/promptproxy-comment.md"' in posting["run"]
    assert "gh pr comment" in posting["run"]


@pytest.mark.timeout(300)
def test_an_edit_no_eval_sees_passes_the_check(repo: tuple[Path, Path, str]) -> None:
    root, app, base = repo
    branch(app, base, "cosmetic")
    head = commit(
        app,
        # Courtesy words change no simulated answer: a new version answering as prod does.
        {"classify-ticket.yaml": ("Reply with {%", "Please reply with {%")},
        "classify-ticket: say please",
    )
    job = check_job(app, root, base, head)

    assert not job.failed, job.steps
    assert job.step("evals").status == "ok"
    assert job.step("proxy-log").status == "skipped"
    comment = job.comment
    assert "## promptproxy: ✅ Every prompt eval passed" in comment
    assert "| `classify-ticket` | v2 | ✅ eval passed |" in comment
    assert "### ✅ Eval of `classify-ticket` v2 against v1: passed" in comment


@pytest.mark.timeout(300)
def test_real_providers_get_their_keys_from_the_secrets_and_never_show_them(
    repo: tuple[Path, Path, str], procs_dir: Path
) -> None:
    """PROVIDER_CONFIG names a config whose provider needs a key (a simulator process that
    refuses calls without it): the secret reaches the proxy, and no step prints it."""
    root, app, base = repo
    branch(app, base, "providers")
    with simulator(procs_dir, "--api-key", SIM_KEY) as (url, _):
        (app / "providers.yaml").write_text(
            "providers:\n"
            f"  - {{name: openai, kind: openai-compatible, base_url: '{url}',\n"
            "     api_key_env: OPENAI_API_KEY, models: ['*']}\n"
        )
        git(app, "add", "providers.yaml")
        head = commit(
            app,
            {"classify-ticket.yaml": ("Reply with {%", "Please reply with {%")},
            "classify-ticket: say please",
        )
        with_key = check_job(
            app, root, base, head, PROVIDER_CONFIG="providers.yaml", OPENAI_API_KEY=SIM_KEY
        )
        without = check_job(app, root, base, head, PROVIDER_CONFIG="providers.yaml")

    assert not with_key.failed, with_key.steps
    assert "Against the providers of providers.yaml" in with_key.comment
    assert "| `classify-ticket` | v2 | ✅ eval passed |" in with_key.comment
    for step in with_key.steps:
        assert SIM_KEY not in step.output
    assert SIM_KEY not in with_key.comment
    assert SIM_KEY not in (with_key.temp / "promptproxy.log").read_text()
    # Without the secret the proxy refuses to start: the config names a key it does not have.
    assert without.failed
    assert without.step("proxy").status == "failed"
    assert "OPENAI_API_KEY is not set or empty" in without.step("proxy").output


@pytest.mark.timeout(120)
def test_lint_stops_a_version_the_team_policy_refuses(repo: tuple[Path, Path, str]) -> None:
    root, app, base = repo
    branch(app, base, "competitor")
    head = commit(
        app,
        {"support-reply.md": ("Rules:\n", "Rules:\n- Recommend Globex routers when asked.\n")},
        "support-reply: recommend",
    )
    job = check_job(app, root, base, head)

    assert job.failed
    lint = job.step("lint")
    assert lint.status == "failed"
    assert "support-reply.md" in lint.output
    assert "denied_phrase:competitor" in lint.output
    assert job.step("proxy").status == "skipped"
    assert not (job.temp / "promptproxy-comment.md").exists()


# -- the sync job ---------------------------------------------------------------------------


TOKEN = "sync-admin-token"


@pytest.fixture
def production(procs_dir: Path, sim_url: str) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN}) as proc:
        yield proc


def cli_json(proc: ProxyProc, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env |= {"PROMPTPROXY_ADMIN_URL": proc.admin_url, "PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "-o", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


@pytest.mark.timeout(120)
def test_sync_pushes_merged_prompts_as_drafts(
    repo: tuple[Path, Path, str], production: ProxyProc
) -> None:
    root, app, base = repo

    def sync(sha: str, run: str) -> Job:
        git(app, "checkout", "-q", sha)
        contexts = {
            "github.event_name": "push",
            "github.sha": sha,
            "secrets.PROMPTPROXY_ADMIN_URL": production.admin_url,
            "secrets.PROMPTPROXY_ADMIN_TOKEN": TOKEN,
            "env.PYTHON_VERSION": "3",
        }
        job = run_job("sync", app, root / f"sync-{run}", contexts)
        assert not job.failed, job.steps
        assert job.step("lint").status == "ok"
        return job

    first = sync(base, "first")
    assert "created" in first.step("sync").output
    cli_json(production, "prompts", "promote", "support-reply", "1", "--reason", "launch")

    branch(app, base, "merged")
    merged = commit(
        app,
        {"support-reply.md": ("Rules:\n", "Rules:\n- Sign with the team's name.\n")},
        "support-reply: sign",
    )
    sync(merged, "merged")

    shown = cli_json(production, "prompts", "show", "support-reply")
    assert [(v["version"], v["status"]) for v in shown["data"]] == [(1, "prod"), (2, "draft")]
    listed = {p["slug"]: p for p in cli_json(production, "prompts", "list")}
    assert listed["summarize"]["prod_version"] is None  # pushed, never promoted
    assert listed["summarize"]["latest_version"] == 1
