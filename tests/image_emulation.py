"""The image of deploy/Dockerfile, built and run without a Docker engine (none runs here).

Building runs the builder stage's own COPY and RUN instructions with Debian's Python 3.11
(the interpreter of the base image's Debian, not the repo venv's, which lives under /root where
uid 10001 cannot read) in a mount namespace whose /opt is an overlay, so the venv really is at
/opt/venv and its scripts' shebangs name /opt/venv/bin/python. The runtime stage's COPYs make a
layer on disk; its one RUN (the user and the data directory) is emulated by hand below.

Running assembles a root filesystem the way a container runtime does, in new mount, network and
PID namespaces: this machine's /usr (for Debian's Python), /etc with the image's files layered
over it (an overlay, read-only), the image's directories, a /dev with only the usual devices,
the data directory bind-mounted read-write at its VOLUME path, everything else read-only (as
with `docker run --read-only`, or Kubernetes' readOnlyRootFilesystem). The process is the
namespace's PID 1, as in a container, with the image's ENV, WORKDIR, USER (numeric, no
supplementary groups, no capabilities) and ENTRYPOINT + CMD, and the network namespace has its
own loopback, so the config's ports are the container's. ``exec`` is ``docker exec``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.dockerfile_spec import Stage, parse_dockerfile

#: The environment python:3.11-slim's own ENV sets (Debian's PATH with /usr/local/bin first).
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
#: The interpreter standing in for the base image's python (the same minor version).
DEBIAN_PYTHON = "/usr/bin/python3"
#: How long `docker stop` waits after the stop signal before SIGKILL, by default.
DOCKER_STOP_TIMEOUT = 10.0
_TOOLS = ("unshare", "nsenter", "chroot", "setpriv", "ip", "mount")
#: The devices a container runtime gives a container.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def emulation_unavailable() -> str | None:
    """Why the image cannot be emulated here, or None."""
    if os.geteuid() != 0:
        return "emulating the image needs root (mount namespaces, chroot, dropping to uid 10001)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"emulating the image needs {', '.join(missing)} (util-linux, iproute2)"
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-c", "import sys, venv; print(sys.version_info[:2] == (3, 11))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.stdout.strip() != "True":
        return f"the base image's Python is 3.11 and {DEBIAN_PYTHON} (with venv) is not"
    return _namespaces_refused()


def _namespaces_refused() -> str | None:
    """Why this root may not do what building and running need (root in a container without
    CAP_SYS_ADMIN, overlayfs not available), or None: the same kinds of calls, tried once."""
    with tempfile.TemporaryDirectory(prefix="image-probe-") as tmp:
        dirs = {name: Path(tmp) / name for name in ("lower", "upper", "work", "merged")}
        for path in dirs.values():
            path.mkdir()
        options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
        script = (
            f"mount -t overlay overlay -o {shlex.quote(options)} {shlex.quote(str(dirs['merged']))}"
            " && ip link set lo up"
        )
        unshare = ["unshare", "--mount", "--net", "--pid", "--fork", "--propagation", "private"]
        probe = subprocess.run(
            [*unshare, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    if probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1:] or [f"exit status {probe.returncode}"]
        return (
            "emulating the image needs mount, network and PID namespaces and an overlay "
            f"mount, refused here: {why[0]}"
        )
    return None


@dataclass(frozen=True)
class Image:
    """The built image: its runtime stage and the directories holding its layers."""

    stage: Stage
    #: The runtime stage's COPYs from the build context, laid out from / (app/, etc/...).
    layer: Path
    #: Paths copied from the builder stage: image path -> directory on disk.
    from_builder: dict[str, Path]
    env: dict[str, str]
    user: tuple[int, int]
    workdir: str
    volume: str

    @property
    def command(self) -> tuple[str, ...]:
        return (*self.stage.exec_form("ENTRYPOINT"), *self.stage.exec_form("CMD"))


def _copy_into(repo: Path, sources: Sequence[str], dest: Path, into_dir: bool) -> None:
    """COPY's rules for what this Dockerfile does: a directory's contents go into ``dest``;
    a file goes into ``dest`` when it names a folder (ends in /), else becomes it."""
    for source in sources:
        path = repo / source
        if path.is_dir():
            shutil.copytree(
                path, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            target = dest / path.name if into_dir else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def build_image(repo: Path, dockerfile: Path, tmp: Path) -> Image:
    stages = parse_dockerfile(dockerfile)
    builder = next(s for s in stages if s.name == "builder")
    runtime = stages[-1]

    # The builder stage: its COPYs into a copy of its WORKDIR, then its RUNs, in order.
    src = tmp / "build-src"
    for copy in builder.copies():
        dest = src / copy.dest.removeprefix("./")
        _copy_into(repo, copy.sources, dest, copy.dest.endswith("/"))
    shim = tmp / "build-bin"
    shim.mkdir()
    # A script, not a link: the venv's python must point at Debian's, not at the shim.
    (shim / "python").write_text(f'#!/bin/sh\nexec {DEBIAN_PYTHON} "$@"\n')
    (shim / "python").chmod(0o755)
    upper, work = tmp / "opt-upper", tmp / "opt-work"
    upper.mkdir()
    work.mkdir()
    build_env = builder.env(BASE_ENV)
    build_env["PATH"] = f"{shim}:{build_env['PATH']}"
    # The build machine's pip settings (its index and wheel mirrors), as a build secret would.
    build_env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    build_env.pop("PIP_NO_CACHE_DIR", None)  # pip's cache makes a rebuild per session fast
    script = [
        "set -eu",
        f"mount -t overlay overlay -o lowerdir=/opt,upperdir={upper},workdir={work} /opt",
        f"cd {shlex.quote(str(src))}",
        *(f"( {run.args} )" for run in builder.all("RUN")),
    ]
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
        env=build_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the builder stage failed:\n{result.stdout}\n{result.stderr}")

    # The runtime stage's COPYs.
    layer = tmp / "layer"
    from_builder: dict[str, Path] = {}
    for copy in runtime.copies():
        if not copy.dest.startswith("/"):
            raise ValueError(f"COPY to {copy.dest}: only absolute destinations are emulated")
        if copy.from_stage is not None:
            for source in copy.sources:
                if not source.startswith("/opt/"):
                    raise ValueError(f"COPY --from {source}: only /opt of the builder is emulated")
                from_builder[copy.dest] = upper / source.removeprefix("/opt/")
            continue
        _copy_into(repo, copy.sources, layer / copy.dest.lstrip("/"), copy.dest.endswith("/"))
    uid, gid = runtime.user()
    # The runtime stage's RUN (groupadd, useradd, install -d of the data directory).
    etc = layer / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    home = runtime.env(BASE_ENV).get("HOME", "/")
    (etc / "passwd").write_text(
        Path("/etc/passwd").read_text() + f"promptproxy:x:{uid}:{gid}::{home}:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(Path("/etc/group").read_text() + f"promptproxy:x:{gid}:\n")
    (volume,) = runtime.volumes()
    return Image(
        stage=runtime,
        layer=layer,
        from_builder=from_builder,
        env=runtime.env(BASE_ENV),
        user=(uid, gid),
        workdir=runtime.workdir(),
        volume=volume,
    )


def new_data_dir(image: Image, path: Path) -> Path:
    """A fresh volume as Docker makes it from the image's directory: owned by the user."""
    path.mkdir(mode=0o750)
    os.chown(path, *image.user)
    return path


_HTTP_CLIENT = """
import json, os, sys, urllib.error, urllib.request
method, url, body, timeout = sys.argv[1:5]
request = urllib.request.Request(url, data=body.encode() or None, method=method)
request.add_header("Content-Type", "application/json")
token = os.environ.get("TEST_TOKEN")
if token:
    request.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(request, timeout=float(timeout)) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as exc:
    status, text = exc.code, exc.read().decode()
print(json.dumps({"status": status, "body": text}))
"""


@dataclass
class Reply:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Container:
    """One run of the image (``docker run``), its namespaces alive while PID 1 is."""

    image: Image
    root: Path
    data: Path
    log_path: Path
    popen: subprocess.Popen[bytes]
    #: PID 1 of the container, as this machine sees it.
    pid: int
    env: dict[str, str] = field(default_factory=dict)

    def _enter(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        uid, gid = self.image.user
        assigns = [f"{k}={v}" for k, v in {**self.env, **env}.items()]
        return [
            "nsenter",
            f"--target={self.pid}",
            "--mount",
            "--net",
            "--",
            "chroot",
            str(self.root),
            *_drop_privileges(uid, gid),
            "/usr/bin/env",
            "-i",
            f"--chdir={self.image.workdir}",
            *assigns,
            *argv,
        ]

    def exec(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """``docker exec``: a command in the container, as its user, with its environment."""
        return subprocess.run(
            self._enter(argv, env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def exec_background(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._enter(argv, env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def http_argv(method: str, url: str, body: Any = None, timeout: float = 5) -> list[str]:
        payload = "" if body is None else json.dumps(body)
        return ["python", "-c", _HTTP_CLIENT, method, url, payload, str(timeout)]

    def http(
        self, method: str, url: str, body: Any = None, *, token: str | None = None
    ) -> Reply | None:
        """One HTTP call from inside the container (its loopback); None: no answer."""
        done = self.exec(
            self.http_argv(method, url, body), env={"TEST_TOKEN": token} if token else None
        )
        if done.returncode != 0:
            return None
        return Reply(**json.loads(done.stdout))

    def wait_until(self, check: Callable[[], bool], what: str, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"the container exited with {self.popen.returncode} before {what}; its log:\n"
                    + self.log_tail()
                )
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"not {what} after {timeout}s; the container's log:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        """The container's exit status (its PID 1's), or None while it still runs."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.popen.poll() is None:
            # PID 1's death ends its namespace's every process; unshare then exits with it.
            self.signal(signal.SIGKILL)
            self.popen.wait(10)


def _drop_privileges(uid: int, gid: int) -> list[str]:
    return [
        "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
    ]


def _mount_script(image: Image, root: Path, data: Path, mounts: Mapping[str, Path]) -> list[str]:
    def q(path: Path | str) -> str:
        return shlex.quote(str(path))

    def ro_bind(source: Path | str, target: Path | str) -> list[str]:
        return [f"mount --bind {q(source)} {q(target)}", f"mount -o remount,bind,ro {q(target)}"]

    lines = ["set -eu", f"mount --bind {q(root)} {q(root)}"]
    lines += ro_bind("/usr", root / "usr")
    # The image's /etc: its files over the base's (this machine's Debian), read-only.
    lower = f"lowerdir={image.layer / 'etc'}:/etc"
    lines.append(f"mount -t overlay overlay -o {q(lower)} {q(root / 'etc')}")
    for top in sorted(p.name for p in image.layer.iterdir() if p.name != "etc"):
        lines += ro_bind(image.layer / top, root / top)
    for target, source in image.from_builder.items():
        lines += ro_bind(source, root / target.lstrip("/"))
    for target, source in mounts.items():  # `docker run -v source:target:ro`
        lines += ro_bind(source, root / target.lstrip("/"))
    lines.append(f"mount -t tmpfs -o mode=755,nosuid tmpfs {q(root / 'dev')}")
    for device in _DEVICES:
        lines.append(f"touch {q(root / 'dev' / device)}")
        lines.append(f"mount --bind /dev/{device} {q(root / 'dev' / device)}")
    lines.append(f"mount -o remount,bind,ro {q(root / 'dev')}")
    lines.append(f"mount -t proc proc {q(root / 'proc')}")
    lines.append(f"mount --bind {q(data)} {q(root / image.volume.lstrip('/'))}")
    lines.append(f"mount -o remount,bind,ro {q(root)}")
    lines.append("ip link set lo up")
    return lines


def _root_skeleton(image: Image, root: Path, mounts: Mapping[str, Path]) -> None:
    """The empty root: the base's top-level links and a mount point for everything mounted."""
    root.mkdir()
    for top in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / top
        if host.is_symlink():
            (root / top).symlink_to(os.readlink(host))
    for top in ("usr", "etc", "dev", "proc", "tmp"):
        (root / top).mkdir()
    (root / "tmp").chmod(0o1777)
    for top in image.layer.iterdir():
        if top.name != "etc":
            (root / top.name).mkdir()
    for target in [*image.from_builder, image.volume]:
        (root / target.lstrip("/")).mkdir(parents=True)
    for target, source in mounts.items():
        path = root / target.lstrip("/")
        if source.is_dir():
            path.mkdir(parents=True, exist_ok=True)
        elif not (image.layer / target.lstrip("/")).exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def _pid_one(unshare_pid: int, timeout: float = 10) -> int:
    """The forked child of `unshare --fork`: the container's PID 1 on this machine."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            found = children.read_text().split()
            if found:
                return int(found[0])
        time.sleep(0.02)
    raise TimeoutError("unshare did not fork the container's process")


@contextlib.contextmanager
def run_container(
    image: Image,
    tmp: Path,
    data: Path,
    *,
    env: Mapping[str, str] | None = None,
    mounts: Mapping[str, Path] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[Container]:
    """``docker run --read-only -v data:VOLUME [-v source:target:ro ...] [-e K=V ...] image``.

    Yields once the process is started (not ready: see ``Container.wait_until``); kills it on
    exit if it still runs."""
    mounts = dict(mounts or {})
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    root = run_dir / "root"
    _root_skeleton(image, root, mounts)
    script = run_dir / "start.sh"
    uid, gid = image.user
    container_env = {**image.env, **(env or {})}
    script.write_text(
        "\n".join(
            [
                *_mount_script(image, root, data, mounts),
                f"exec chroot {shlex.quote(str(root))} "
                + " ".join(_drop_privileges(uid, gid))
                + ' "$@"',
            ]
        )
        + "\n"
    )
    log_path = run_dir / "container.log"
    argv = [
        "unshare",
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "sh",
        str(script),
        "/usr/bin/env",
        "-i",
        f"--chdir={image.workdir}",
        *(f"{k}={v}" for k, v in container_env.items()),
        *(command or image.command),
    ]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    container = Container(image, root, data, log_path, popen, _pid_one(popen.pid), container_env)
    try:
        yield container
    finally:
        container.kill()
