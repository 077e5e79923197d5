"""`registry.store` names one backend, and the configuration refuses what that backend cannot
serve: a pair sink it does not provide, and settings only another backend reads. Every
configuration valid before the seam that is not one of those still loads unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from proxy.cli import main
from proxy.config import ConfigError, Settings, load_config

EMBEDDED = "embedded:/tmp/pp/registry.db"
REDIS = "redis://127.0.0.1:6390/0"
SECRET_REDIS = "redis://:hunter2@127.0.0.1:6390/0"
POSTGRES = "postgresql://app:hunter2@db.internal:5432/prompts"


def load(store: str, **sections: Any) -> Settings:
    overrides: dict[str, Any] = {"registry.store": store}
    for dotted, value in sections.items():
        overrides[dotted.replace("__", ".")] = value
    return load_config(None, environ={}, overrides=overrides)


def problems(store: str, **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(store, **sections)
    return err.value.problems


@pytest.mark.parametrize(
    ("store", "sections", "backend", "shared"),
    [
        (EMBEDDED, {}, "embedded", False),
        (
            EMBEDDED,
            {"shadow__sink": {"kind": "files", "dir": "/tmp/pairs", "max_files": 3}},
            "embedded",
            False,
        ),
        (EMBEDDED, {"feedback__max_local_entries": 5000}, "embedded", False),
        (REDIS, {}, "redis", True),
        (REDIS, {"shadow__sink": {"kind": "redis", "redis_max_entries": 500}}, "redis", True),
        (REDIS, {"registry__redis_prefix": "team-a:", "analysis__lease_seconds": 5}, "redis", True),
        ("rediss://cache.internal:6380/1", {}, "redis", True),
        ("unix:///run/redis.sock?db=2", {}, "redis", True),
        (POSTGRES, {"registry__postgres_schema": "team_a"}, "postgresql", True),
        ("postgres://db.internal/prompts", {"analysis__lease_seconds": 30}, "postgresql", True),
        # A setting of another backend at its default value says nothing: accepted.
        (EMBEDDED, {"registry__redis_prefix": "promptproxy:"}, "embedded", False),
        (REDIS, {"shadow__sink": {"dir": ".promptproxy/shadow"}}, "redis", True),
    ],
)
def test_valid_combinations_load(
    store: str, sections: dict[str, Any], backend: str, shared: bool
) -> None:
    kind = load(store, **sections).config.registry.backend
    assert (kind.name, kind.shared) == (backend, shared)


def test_a_files_sink_on_a_shared_store_is_refused() -> None:
    assert problems(REDIS, shadow__sink={"kind": "files"}) == [
        "shadow.sink.kind: `files` keeps each replica's pairs on its own disk (`shadow "
        "tail|export|report` would see one replica's share), but registry.store is "
        f"{REDIS} (Redis), shared by replicas: use `auto` (pairs in Redis)"
    ]
    [line] = problems(POSTGRES, shadow__sink={"kind": "files"})
    assert line.startswith("shadow.sink.kind: `files` keeps each replica's pairs")
    assert line.endswith("use `auto` (pairs in PostgreSQL)")


@pytest.mark.parametrize(
    ("store", "sink", "needs", "use"),
    [
        (EMBEDDED, "redis", "Redis", "use `auto` or `files`"),
        (EMBEDDED, "postgresql", "PostgreSQL", "use `auto` or `files`"),
        (REDIS, "postgresql", "PostgreSQL", "use `auto` (pairs in Redis)"),
        (POSTGRES, "redis", "Redis", "use `auto` (pairs in PostgreSQL)"),
    ],
)
def test_a_sink_the_store_cannot_provide_is_refused(
    store: str, sink: str, needs: str, use: str
) -> None:
    [line] = problems(store, shadow__sink={"kind": sink})
    assert line.startswith(f"shadow.sink.kind: `{sink}` needs a {needs} store, but registry.store")
    assert line.endswith(use)


def test_redis_settings_without_redis_say_the_store_may_be_missing() -> None:
    assert problems(EMBEDDED, registry__redis_prefix="team-a:") == [
        f"registry.redis_prefix: only the Redis backend uses it, but registry.store is {EMBEDDED} "
        "(embedded): remove it, or point registry.store at a Redis store if replicas are to "
        "share it"
    ]


@pytest.mark.parametrize(
    ("sections", "option", "readers"),
    [
        (
            {"registry__postgres_schema": "team_a"},
            "registry.postgres_schema",
            "the PostgreSQL backend uses",
        ),
        (
            {"shadow__sink": {"max_entries": 500}},
            "shadow.sink.max_entries",
            "the Redis and PostgreSQL backends use",
        ),
        (
            {"analysis__lease_seconds": 5},
            "analysis.lease_seconds",
            "the Redis and PostgreSQL backends use",
        ),
    ],
)
def test_shared_backend_settings_under_the_embedded_store_are_refused(
    sections: dict[str, Any], option: str, readers: str
) -> None:
    [line] = problems(EMBEDDED, **sections)
    assert line.startswith(f"{option}: only {readers} it, but registry.store is ")
    assert line.endswith("if replicas are to share it")


@pytest.mark.parametrize(
    ("store", "sections"),
    [
        (REDIS, {"registry__postgres_schema": "team_a"}),
        (POSTGRES, {"registry__redis_prefix": "team-a:"}),
        (POSTGRES, {"shadow__sink": {"redis_max_entries": 500}}),
        (POSTGRES, {"shadow__sink": {"max_entries": 500}}),
        (REDIS, {"shadow__sink": {"dir": "/var/pairs"}}),
        (REDIS, {"shadow__sink": {"max_files": 2}}),
        (POSTGRES, {"shadow__sink": {"max_file_bytes": 8192}}),
        (POSTGRES, {"feedback__max_local_entries": 5000}),
    ],
)
def test_settings_a_shared_store_ignores_are_accepted(store: str, sections: dict[str, Any]) -> None:
    """One config file serves a laptop (embedded) and production (the store overridden by
    PROMPTPROXY_STORE): what only the other backend reads loses nothing by being ignored."""
    assert load(store, **sections).config.registry.backend.shared


def test_every_refusal_is_listed_with_the_other_problems() -> None:
    found = problems(
        EMBEDDED,
        shadow__sink={"kind": "redis"},
        registry__redis_prefix="team-a:",
        analysis__lease_seconds=5,
        upstream__api_key_env="NOT_SET_ANYWHERE",
    )
    assert [line.split(":", 1)[0] for line in found] == [
        "upstream.api_key_env",
        "shadow.sink.kind",
        "registry.redis_prefix",
        "analysis.lease_seconds",
    ]


def test_refusals_never_show_store_credentials() -> None:
    for store in (SECRET_REDIS, POSTGRES):
        found = problems(store, shadow__sink={"kind": "files"})
        assert found
        for line in found:
            assert "hunter2" not in line


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"registry.store": "mysql://db/prompts"},
            "registry.store: must be `embedded:PATH`, `redis://host:6379/0` or "
            "`postgresql://user@host:5432/db`",
        ),
        ({"registry.store": "embedded:"}, "registry.store: must be"),
        ({"registry.redis_prefix": "a{b}:"}, "registry.redis_prefix: must not contain '{' or '}'"),
        ({"registry.postgres_schema": "Team-A"}, "registry.postgres_schema: must be lowercase"),
        (
            {"shadow.sink": {"kind": "kafka"}},
            "shadow.sink.kind: must be one of auto, files, redis, postgresql",
        ),
    ],
)
def test_bad_store_settings_name_their_field(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides=overrides)
    [line] = err.value.problems
    assert line.startswith(expected)


# -- `promptproxy config check` ---------------------------------------------------------------


def config_check(tmp_path: Path, text: str) -> Result:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    return CliRunner().invoke(main, ["config", "check", str(path)], env={"PROMPTPROXY_STORE": ""})


def test_config_check_names_the_backend_and_whether_replicas_share_it(tmp_path: Path) -> None:
    result = config_check(tmp_path, f"registry:\n  store: {EMBEDDED}\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"store {EMBEDDED}: embedded, one process)")
    result = config_check(tmp_path, f"registry:\n  store: {SECRET_REDIS}\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"store {REDIS}: Redis, shared by replicas)")
    assert "hunter2" not in result.output


def test_config_check_lists_each_refusal_and_exits_2(tmp_path: Path) -> None:
    text = (
        f"registry:\n  store: {EMBEDDED}\n"
        "shadow:\n  sink:\n    kind: redis\n"
        "analysis:\n  lease_seconds: 5\n"
    )
    result = config_check(tmp_path, text)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == "invalid configuration:"
    assert [line.split(":", 1)[0] for line in lines[1:]] == [
        "  - shadow.sink.kind",
        "  - analysis.lease_seconds",
    ]
