"""The instructions of deploy/Dockerfile that make the image's contract, read from the file.

Only what that Dockerfile uses: comments, line continuations, ``FROM ... AS``, exec-form
(JSON) ``ENTRYPOINT``/``CMD``/``HEALTHCHECK CMD``/``VOLUME``, ``ENV`` with ``key=value``
pairs and ``$VAR`` expansion, ``COPY [--from=stage] src... dest``. Anything else it meets in
a form it does not read (a shell-form ``CMD``, ``ENV key value``) is an error, so the tests
that rely on it never check a half-read file.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_stage: str | None


@dataclass(frozen=True)
class Healthcheck:
    options: dict[str, str]
    command: tuple[str, ...]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        if not found:
            raise ValueError(f"the stage FROM {self.base} has no {keyword}")
        return found[-1]

    def exec_form(self, keyword: str) -> tuple[str, ...]:
        return _exec_form(keyword, self.last(keyword).args)

    def env(self, base_env: dict[str, str]) -> dict[str, str]:
        """The environment a process of this stage starts with: ``base_env`` (the base
        image's) updated by every ``ENV``, in order, each value expanded against what came
        before it."""
        env = dict(base_env)
        for instruction in self.all("ENV"):
            for token in shlex.split(instruction.args):
                key, eq, value = token.partition("=")
                if not eq:
                    raise ValueError(f"ENV {instruction.args!r}: only the key=value form is read")
                env[key] = _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)
        return env

    def user(self) -> tuple[int, int]:
        uid, _, gid = self.last("USER").args.strip().partition(":")
        return int(uid), int(gid or uid)

    def workdir(self) -> str:
        return self.last("WORKDIR").args.strip()

    def volumes(self) -> tuple[str, ...]:
        return tuple(v for i in self.all("VOLUME") for v in _exec_form("VOLUME", i.args))

    def exposed(self) -> tuple[int, ...]:
        return tuple(int(p.split("/")[0]) for i in self.all("EXPOSE") for p in i.args.split())

    def stop_signal(self) -> str:
        return self.last("STOPSIGNAL").args.strip()

    def healthcheck(self) -> Healthcheck:
        head, cmd, command = self.last("HEALTHCHECK").args.partition("CMD ")
        if not cmd:
            raise ValueError("HEALTHCHECK: only the CMD form is read")
        options = {}
        for token in head.split():
            key, _, value = token.removeprefix("--").partition("=")
            options[key] = value
        return Healthcheck(options, _exec_form("HEALTHCHECK CMD", command))

    def copies(self) -> list[Copy]:
        found = []
        for instruction in self.all("COPY"):
            tokens = shlex.split(instruction.args)
            from_stage = None
            while tokens[0].startswith("--"):
                key, _, value = tokens.pop(0)[2:].partition("=")
                if key != "from":
                    raise ValueError(f"COPY --{key}: not read by this parser")
                from_stage = value
            found.append(Copy(tuple(tokens[:-1]), tokens[-1], from_stage))
        return found


def _exec_form(keyword: str, args: str) -> tuple[str, ...]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        raise ValueError(f"{keyword} {args!r}: only the exec (JSON array) form is read") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{keyword} {args!r}: must be a JSON array of strings")
    return tuple(value)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comments, also between continued lines, as Docker allows
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            lines.append(line)
    if pending.strip():
        lines.append(pending.strip())
    return lines


def parse_dockerfile(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{keyword} before the first FROM")
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages
