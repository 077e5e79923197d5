"""The image's contract (docs/deployment.md), checked without a Docker engine.

The image is built and run by ``tests.image_emulation`` from the instructions of
deploy/Dockerfile itself (its ENTRYPOINT, CMD, ENV, USER, WORKDIR, VOLUME, HEALTHCHECK and
STOPSIGNAL), so the file and these checks cannot drift apart: the container's command runs as
uid 10001 in a read-only root with only the data volume writable, its own network (the
config's ports are the container's) and PID 1 as in a container. What a platform team relies
on: it starts and is healthy, keeps its registry in the volume across restarts, drains on the
stop signal within `docker stop`'s timeout, and takes its config from a mounted file and the
environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from proxy.config import Settings, load_config
from tests.dockerfile_spec import Stage, parse_dockerfile
from tests.image_emulation import (
    DOCKER_STOP_TIMEOUT,
    Container,
    Image,
    build_image,
    emulation_unavailable,
    new_data_dir,
    run_container,
)

# Building the image's venv (the builder stage's pip install) is paid by the first test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
CONTAINER_CONFIG = REPO / "deploy" / "container.yaml"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
COMPOSE = REPO / "deploy" / "compose.yaml"
TOKEN = "image-contract-admin-token"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CONSOLE = REPO / "proxy" / "web" / "console"
#: GET a URL from inside the container: status and content type, as JSON.
_HEAD = (
    "import json, sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=5); "
    "print(json.dumps([r.status, r.headers['Content-Type'], r.headers['Content-Security-Policy']]))"
)
GREETING = """---
author: platform-team
---
Greet the user by name.
"""


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return parse_dockerfile(DOCKERFILE)[-1]


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_config(CONTAINER_CONFIG, environ={})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    reason = emulation_unavailable()
    if reason is not None:
        pytest.skip(reason)
    return build_image(REPO, DOCKERFILE, tmp_path_factory.mktemp("image"))


@pytest.fixture
def data(image: Image, tmp_path: Path) -> Path:
    return new_data_dir(image, tmp_path / "volume")


def _config_path(image: Image) -> str:
    return image.env["PROMPTPROXY_CONFIG"]


def _admin(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.config.server.admin_port}"


def _status(container: Container, url: str) -> int | None:
    reply = container.http("GET", url)
    return None if reply is None else reply.status


def _wait_ready(container: Container, settings: Settings) -> None:
    url = f"{_admin(settings)}/readyz"
    container.wait_until(lambda: _status(container, url) == 200, "ready (/readyz 200)")


def _slugs(container: Container, settings: Settings) -> dict[str, Any]:
    reply = container.http("GET", f"{_admin(settings)}/admin/v1/prompts", token=TOKEN)
    assert reply is not None
    assert reply.status == 200, reply.body
    return {p["slug"]: p for p in reply.json()["data"]}


def _stop(container: Container, runtime: Stage) -> int | None:
    """`docker stop`: the STOPSIGNAL to PID 1, then its exit status if it came before the
    stop timeout (Docker would SIGKILL it then)."""
    container.signal(signal.Signals[runtime.stop_signal()])
    return container.wait(DOCKER_STOP_TIMEOUT)


def _problems(container: Container) -> list[dict[str, Any]]:
    """Log records at warning or above: a write refused by the read-only root shows here
    even where the process carries on."""
    return [r for r in container.log_records() if r.get("level") not in ("debug", "info")]


def _mounted_config(tmp: Path, **changes: dict[str, Any]) -> Path:
    """The image's config file with some sections changed, as a user would mount it."""
    raw = yaml.safe_load(CONTAINER_CONFIG.read_text())
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    path = tmp / "promptproxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o644)
    return path


# -- what the files say, checked against each other (no emulation needed) -----------------


def _under(path: str, volume: str) -> bool:
    return PurePosixPath(path).is_relative_to(volume)


def test_every_path_the_container_config_writes_is_in_the_volume(
    runtime: Stage, settings: Settings
) -> None:
    # The old image's crash: the default store, relative to the root-owned WORKDIR.
    (volume,) = runtime.volumes()
    config = settings.config
    store = config.registry.store.removeprefix("embedded:")
    assert config.registry.backend.name == "embedded"
    assert PurePosixPath(store).is_absolute(), store
    assert _under(store, volume), store
    assert _under(config.shadow.sink.dir, volume), config.shadow.sink.dir
    assert not _under(runtime.workdir(), volume)


def test_the_dockerfile_and_the_container_config_agree(runtime: Stage, settings: Settings) -> None:
    server = settings.config.server
    assert set(runtime.exposed()) == {server.port, server.admin_port}
    health = " ".join(runtime.healthcheck().command)
    assert f"'http://127.0.0.1:{server.admin_port}')" in health
    assert "'/healthz'" in health
    env = runtime.env({"PATH": "/usr/bin"})
    copied = {c.sources: c.dest for c in runtime.copies()}
    assert copied[("deploy/container.yaml",)] == env["PROMPTPROXY_CONFIG"]
    assert settings.config.registry.bootstrap_dir in copied.values()
    # `docker stop` sends SIGKILL 10 s after the stop signal: the drain ends before it.
    assert runtime.stop_signal() == "SIGTERM"
    assert server.shutdown_grace_seconds < DOCKER_STOP_TIMEOUT


def _ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob(pattern: str, path: str) -> bool:
    regex = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern):
        regex += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.fullmatch(regex, path) is not None


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent folders,
    decides; a `!` pattern lets it back in."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").rstrip("/")
        if any(_glob(bare, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    patterns = _ignore_patterns()
    sources = [
        source
        for stage in parse_dockerfile(DOCKERFILE)
        for copy in stage.copies()
        if copy.from_stage is None
        for source in copy.sources
    ]
    files = [
        str(f.relative_to(REPO))
        for source in sources
        for f in ([REPO / source] if (REPO / source).is_file() else (REPO / source).rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    ]
    assert files
    sent = [f for f in files if not _ignored(f, patterns)]
    assert sent == files, sorted(set(files) - set(sent))
    for kept_out in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "loadtest/run.py",
        "docs/design.md",
        ".promptproxy/registry.db",
        "proxy/__pycache__/config.cpython-311.pyc",
    ):
        assert _ignored(kept_out, patterns), kept_out


def test_a_root_without_the_right_to_make_namespaces_skips_with_a_reason() -> None:
    # Root in a CI container (no CAP_SYS_ADMIN): the emulation must be skipped, saying why,
    # not fail half-way through a build.
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to drop CAP_SYS_ADMIN")
    code = "from tests.image_emulation import emulation_unavailable as u; print(u())"
    probe = subprocess.run(
        [setpriv, "--bounding-set=-sys_admin", "--", sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert "namespaces" in probe.stdout, probe.stdout


def test_a_wheel_carries_the_consoles_files(tmp_path: Path) -> None:
    """The package data rule (pyproject) ships whatever proxy/web/console holds, built the
    way the image builds it (non-editable, isolated); probe files stand in for the page's
    while the tree has none. Built from a copy without .git, so no VCS plugin adds them."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(REPO / "proxy", tree / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    console = tree / "proxy" / "web" / "console"
    console.mkdir(exist_ok=True)
    for probe in ("index.html", "probe.js", "probe.css", "probe.svg"):
        if not (console / probe).exists():
            (console / probe).write_text("probe\n")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(tree), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("promptproxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("proxy/web/console/")}
    expected = {f"proxy/web/console/{f.name}" for f in console.iterdir() if f.is_file()}
    assert expected <= shipped, sorted(expected - shipped)


# -- the image, run ----------------------------------------------------------------------


def test_starts_as_its_user_with_only_the_volume_writable_and_is_healthy(
    image: Image, runtime: Stage, settings: Settings, data: Path, tmp_path: Path
) -> None:
    with run_container(image, tmp_path, data) as container:
        _wait_ready(container, settings)
        status = Path(f"/proc/{container.pid}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", status, re.M), status
        assert re.search(r"^Gid:\s+10001\s+10001\s+10001\s+10001$", status, re.M), status
        assert re.search(r"^Groups:\s*$", status, re.M), status
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status

        # The HEALTHCHECK, exactly as Docker runs it: in the container, as its user.
        health = container.exec(runtime.healthcheck().command)
        assert health.returncode == 0, health.stderr

        reply = container.http(
            "POST", f"http://127.0.0.1:{settings.config.server.port}/v1/chat/completions", CHAT
        )
        assert reply is not None
        assert reply.status == 200, reply.body

        # Started on the image's config: the example prompts are there.
        assert {"summarize", "support-reply"} <= set(_slugs(container, settings))

        for where in ("/", "/app", "/tmp", "/etc/promptproxy", "/opt/venv"):
            refused = container.exec(["touch", f"{where.rstrip('/')}/written"])
            assert refused.returncode != 0, where
        assert container.exec(["touch", f"{image.volume}/written"]).returncode == 0

        # Temporary files (the private sockets of `serve --workers`) have a writable place.
        made = container.exec(["python", "-c", "import tempfile; print(tempfile.mkdtemp())"])
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip().startswith(f"{image.volume}/"), made.stdout

        # Tracing is a config switch in the image, not a rebuild: the otel extra is in.
        traced = data / "traced.yaml"
        traced.write_text(
            Path("deploy/container.yaml").read_text()
            + "tracing:\n  enabled: true\n  endpoint: http://collector:4318/v1/traces\n"
        )
        checked = container.exec(["promptproxy", "config", "check", f"{image.volume}/traced.yaml"])
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert _problems(container) == []


def test_the_installed_package_serves_the_console(
    image: Image, runtime: Stage, settings: Settings, data: Path, tmp_path: Path
) -> None:
    if not (CONSOLE / "index.html").is_file():
        pytest.skip("proxy/web/console/index.html is not in this tree (the console's page)")
    (venv,) = [p for p in image.from_builder.values() if p.name == "venv"]
    found = list(venv.glob("lib/python*/site-packages/proxy/web/console"))
    assert found, "the image's venv has no proxy/web/console: the package data did not ship"
    installed = found[0]
    in_tree = {f.name for f in CONSOLE.iterdir() if f.is_file()}
    assert in_tree <= {f.name for f in installed.iterdir()}, in_tree
    with run_container(image, tmp_path, data) as container:
        _wait_ready(container, settings)
        fetched = container.exec(["python", "-c", _HEAD, f"{_admin(settings)}/console/"])
        assert fetched.returncode == 0, fetched.stderr
        status, content_type, policy = json.loads(fetched.stdout)
        assert status == 200
        assert content_type.startswith("text/html")
        assert "script-src 'self'" in policy
        assert _stop(container, runtime) == 0, container.log_tail()


def test_the_registry_and_shadow_pairs_live_in_the_volume_and_survive_a_restart(
    image: Image, runtime: Stage, settings: Settings, data: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts"
    for version, text in ((1, GREETING), (2, GREETING.replace("by name", "warmly by name"))):
        (prompts / f"v{version}").mkdir(parents=True)
        (prompts / f"v{version}" / "greeting.md").write_text(text)
    env = {"PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    with run_container(image, tmp_path, data, env=env, mounts={"/srv/prompts": prompts}) as first:
        _wait_ready(first, settings)
        # The CLI in the container, against its own admin port, with the token from the env.
        for command in (
            ["prompts", "push", "/srv/prompts/v1/greeting.md"],
            ["prompts", "promote", "greeting", "1"],
            ["prompts", "push", "/srv/prompts/v2/greeting.md"],
            ["rollout", "set", "greeting", "--candidate", "2", "--shadow", "100"],
        ):
            done = first.exec(["promptproxy", *command])
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        url = f"http://127.0.0.1:{settings.config.server.port}/p/greeting/v1/chat/completions"
        reply = first.http("POST", url, CHAT)
        assert reply is not None
        assert reply.status == 200, reply.body
        first.wait_until(
            lambda: any(p.stat().st_size for p in data.rglob("pairs.jsonl*")),
            "writing the shadow pair into the volume",
        )
        assert _stop(first, runtime) == 0, first.log_tail()
        assert _problems(first) == []

    with run_container(image, tmp_path, data, env=env) as second:
        _wait_ready(second, settings)
        assert _slugs(second, settings)["greeting"]["prod_version"] == 1
        assert _stop(second, runtime) == 0, second.log_tail()
        assert _problems(second) == []

    written = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert Path("registry.db") in written, written
    assert all(p.stat().st_uid == image.user[0] for p in data.rglob("*")), written


def test_the_stop_signal_drains_a_slow_request_and_exits_0(
    image: Image, runtime: Stage, settings: Settings, data: Path, tmp_path: Path
) -> None:
    # The mounted config's simulator answers after 5 s: the request is in flight at the stop.
    config = _mounted_config(tmp_path, simulator={"first_byte_ms": 5000})
    mounts = {_config_path(image): config}
    server = settings.config.server
    with run_container(image, tmp_path, data, mounts=mounts) as container:
        _wait_ready(container, settings)
        client = container.exec_background(
            Container.http_argv(
                "POST", f"http://127.0.0.1:{server.port}/v1/chat/completions", CHAT, timeout=30
            )
        )
        try:
            metrics = f"{_admin(settings)}/metrics"

            def in_flight() -> bool:
                reply = container.http("GET", metrics)
                return reply is not None and "\npromptproxy_requests_in_flight 1.0" in reply.body

            container.wait_until(in_flight, "serving the slow request")
            container.signal(signal.Signals[runtime.stop_signal()])
            container.wait_until(
                lambda: _status(container, f"{_admin(settings)}/readyz") == 503,
                "draining (/readyz 503)",
            )
            out, err = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait(5)
        assert client.returncode == 0, err
        assert '"status": 200' in out, out
        assert container.wait(DOCKER_STOP_TIMEOUT) == 0, container.log_tail()


def test_the_config_comes_from_the_mounted_file_and_the_environment(
    image: Image, runtime: Stage, settings: Settings, data: Path, tmp_path: Path
) -> None:
    config = _mounted_config(tmp_path, registry={"bootstrap_dir": None})
    env = {
        "PROMPTPROXY_STORE": f"embedded:{image.volume}/elsewhere/registry.db",
        "PROMPTPROXY_ADMIN_TOKEN": TOKEN,
    }
    with run_container(
        image, tmp_path, data, env=env, mounts={_config_path(image): config}
    ) as container:
        _wait_ready(container, settings)
        assert _slugs(container, settings) == {}  # the mounted file bootstraps no prompt
        assert _stop(container, runtime) == 0, container.log_tail()
    assert (data / "elsewhere" / "registry.db").is_file()
    assert not (data / "registry.db").exists()


def test_a_moved_admin_port_moves_the_health_check_with_one_variable(
    image: Image, runtime: Stage, data: Path, tmp_path: Path
) -> None:
    config = _mounted_config(tmp_path, server={"admin_port": 9081})
    admin = "http://127.0.0.1:9081"
    env = {"PROMPTPROXY_ADMIN_URL": admin}
    with run_container(
        image, tmp_path, data, env=env, mounts={_config_path(image): config}
    ) as container:
        container.wait_until(lambda: _status(container, f"{admin}/readyz") == 200, "ready")
        health = container.exec(runtime.healthcheck().command)
        assert health.returncode == 0, health.stderr
        # The same variable points `docker exec ... promptproxy` at the moved port.
        listed = container.exec(["promptproxy", "prompts", "list"])
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "summarize" in listed.stdout
        assert _stop(container, runtime) == 0, container.log_tail()


def test_a_volume_the_user_cannot_write_stops_the_start_with_one_line(
    image: Image, settings: Settings, tmp_path: Path
) -> None:
    # The mistake a platform team makes: a volume mounted root-owned (no fsGroup).
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir(mode=0o755)
    with run_container(image, tmp_path, root_owned) as container:
        status = container.wait(DOCKER_STOP_TIMEOUT * 3)
        log = container.log_text()
    assert status == 1, log
    assert f"cannot open the registry at {image.volume}/registry.db" in log, log
    assert "Traceback" not in log, log


def test_the_compose_simulator_stops_on_its_stop_signal(
    image: Image, data: Path, tmp_path: Path
) -> None:
    # `promptproxy simulate` as PID 1 (deploy/compose.yaml's `sim`): the kernel drops a
    # signal PID 1 has no handler for, so a stop signal it ignores costs every
    # `docker compose stop` the whole timeout, then a SIGKILL.
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    sim = compose["services"]["sim"]
    command = [*image.stage.exec_form("ENTRYPOINT"), *sim["command"]]
    port = int(sim["command"][sim["command"].index("--port") + 1])
    with run_container(image, tmp_path, data, command=command) as container:
        container.wait_until(
            lambda: _status(container, f"http://127.0.0.1:{port}/v1/models") == 200,
            "the simulator answers",
        )
        container.signal(signal.Signals[sim.get("stop_signal", "SIGTERM")])
        assert container.wait(DOCKER_STOP_TIMEOUT) == 0, container.log_tail()
