from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_are_valid() -> None:
    settings = load_config(REPO / "config" / "promptproxy.yaml", environ={})
    assert settings.config.simulator.enabled
    assert [p.kind for p in settings.config.provider_list()] == ["anthropic", "openai-compatible"]
    prod = load_config(REPO / "config" / "openai.example.yaml", environ={"OPENAI_API_KEY": "sk-x"})
    assert prod.upstream_api_key == "sk-x"
    both = load_config(
        REPO / "config" / "providers.example.yaml",
        environ={"OPENAI_API_KEY": "sk-x", "ANTHROPIC_API_KEY": "sk-ant-x"},
    )
    assert both.provider_keys == {"openai": "sk-x", "anthropic": "sk-ant-x"}


def test_defaults_without_a_file() -> None:
    settings = load_config(None, environ={})
    assert settings.config.server.port == 8080
    assert settings.config.server.admin_port == 8081
    assert settings.config.upstream.base_url == "https://api.openai.com/v1"
    assert settings.upstream_api_key is None


def test_every_problem_is_listed_by_field_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  port: 99999\n  bogus: 1\nupstream:\n  base_url: ftp://x\n"
        "  api_key_env: sk-live-123\nlogging:\n  level: LOUD\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    problems = "\n".join(info.value.problems)
    for field in (
        "server.port",
        "server.bogus",
        "upstream.base_url",
        "upstream.api_key_env",
        "logging.level",
    ):
        assert field in problems
    assert len(info.value.problems) == 5


def test_a_key_in_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "upstream:\n  api_key: sk-abc\n")
    with pytest.raises(ConfigError, match=r"upstream\.api_key"):
        load_config(path, environ={})


def test_missing_secret_env_var_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "upstream:\n  api_key_env: MY_KEY\n")
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        load_config(path, environ={})
    assert load_config(path, environ={"MY_KEY": "k"}).upstream_api_key == "k"


def test_command_line_overrides_win_and_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "upstream:\n  base_url: http://a/v1/\n")
    settings = load_config(path, environ={}, overrides={"upstream.base_url": "http://b:1/v1"})
    assert settings.config.upstream.base_url == "http://b:1/v1"
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(path, environ={}, overrides={"server.port": -1})


@pytest.mark.parametrize("text", ["- a\n- b\n", "server: [\n"])
def test_bad_yaml_shapes(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text), environ={})


def test_settings_repr_hides_the_key() -> None:
    settings = load_config(None, environ={})
    object.__setattr__(settings, "upstream_api_key", "sk-secret")
    assert "sk-secret" not in repr(settings)


def test_a_redis_pair_sink_needs_a_redis_store() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides={"shadow.sink": {"kind": "redis"}})
    assert "shadow.sink.kind" in str(err.value)
    settings = load_config(
        None,
        environ={},
        overrides={"shadow.sink": {"kind": "redis"}, "registry.store": "redis://127.0.0.1:1/0"},
    )
    assert settings.config.shadow.sink.kind == "redis"


def test_the_eval_calls_key_is_read_from_the_variable_named() -> None:
    settings = load_config(
        None, environ={"EVAL_KEY": "sk-eval"}, overrides={"evals.api_key_env": "EVAL_KEY"}
    )
    assert settings.eval_api_key == "sk-eval"
    assert "sk-eval" not in repr(settings)
    with pytest.raises(ConfigError, match=r"evals\.api_key_env: environment variable EVAL_KEY"):
        load_config(None, environ={}, overrides={"evals.api_key_env": "EVAL_KEY"})


def test_one_token_value_under_two_names_is_refused(tmp_path: Path) -> None:
    # The audit names the token a change was made with, and the role comes with the name:
    # one secret under two names would make both ambiguous.
    path = write(
        tmp_path,
        "admin:\n  tokens:\n"
        "    - {name: alice, env: ALICE_TOKEN, role: admin}\n"
        "    - {name: viewers, env: VIEWERS_TOKEN, role: read}\n",
    )
    with pytest.raises(ConfigError, match="alice and viewers have the same token value"):
        load_config(path, environ={"ALICE_TOKEN": "s3cret-value", "VIEWERS_TOKEN": "s3cret-value"})
    with pytest.raises(ConfigError, match="alice and admin have the same token value"):
        load_config(
            path,
            environ={
                "ALICE_TOKEN": "s3cret-value",
                "VIEWERS_TOKEN": "other-value",
                "PROMPTPROXY_ADMIN_TOKEN": "s3cret-value",
            },
        )
    fine = load_config(path, environ={"ALICE_TOKEN": "one-value", "VIEWERS_TOKEN": "two-value"})
    assert [g.name for g in fine.admin_tokens] == ["alice", "viewers"]
