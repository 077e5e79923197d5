"""The `tracing:` section: off by default, the endpoint and headers from OpenTelemetry's
standard variables (or the file), and enabled without the `otel` extra refused in one line
that names the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.config import OTEL_MODULES, ConfigError
from tests.support import make_settings

ON = {"tracing.enabled": True}


def test_off_by_default_reads_nothing() -> None:
    settings = make_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert settings.config.tracing.enabled is False
    assert settings.tracing_endpoint is None
    assert settings.tracing_headers == {}


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4318/"}, None),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces.example/v1/traces",
            },
            "http://traces.example/v1/traces",
        ),
    ],
)
def test_the_endpoint_comes_from_the_standard_variables(
    environ: dict[str, str], endpoint: str | None
) -> None:
    settings = make_settings(environ, **ON)
    assert settings.tracing_endpoint == (endpoint or "https://otel.example:4318/v1/traces")


def test_the_files_endpoint_wins() -> None:
    settings = make_settings(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env/v1/traces"},
        **ON,
        **{"tracing.endpoint": "http://file:4318/v1/traces"},
    )
    assert settings.tracing_endpoint == "http://file:4318/v1/traces"


def test_headers_come_from_the_named_variable_decoded_and_never_shown() -> None:
    environ = {"LANGFUSE_OTLP": "Authorization=Basic%20c2VjcmV0, x-team = core"}
    settings = make_settings(environ, **ON, **{"tracing.headers_env": "LANGFUSE_OTLP"})
    assert settings.tracing_headers == {"Authorization": "Basic c2VjcmV0", "x-team": "core"}
    assert "c2VjcmV0" not in repr(settings)


def test_headers_default_to_the_standard_variables() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_HEADERS": "x-a=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-b=2",
    }
    assert make_settings(environ, **ON).tracing_headers == {"x-b": "2"}


def test_a_malformed_header_is_named_not_repeated() -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(
            {"OTLP_H": "api-key=s3cret,s3cret-without-equals"},
            **ON,
            **{"tracing.headers_env": "OTLP_H"},
        )
    assert caught.value.problems == [
        "tracing: environment variable OTLP_H: entry 2 is not name=value"
    ]
    assert "s3cret" not in str(caught.value)


def test_a_header_value_with_a_control_character_is_refused_not_repeated() -> None:
    """``requests`` refuses such a value on every export, and the exporter's error line
    quotes it: the key would be in the log each time."""
    with pytest.raises(ConfigError) as caught:
        make_settings(
            {"OTLP_H": "x-team=core,Authorization=Basic s3cret%0Ainjected"},
            **ON,
            **{"tracing.headers_env": "OTLP_H"},
        )
    assert caught.value.problems == [
        "tracing: environment variable OTLP_H: entry 2 has a control character in its value"
    ]
    assert "s3cret" not in str(caught.value)


def test_a_named_headers_variable_must_be_set() -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings({}, **ON, **{"tracing.headers_env": "OTLP_H"})
    assert caught.value.problems == [
        "tracing.headers_env: environment variable OTLP_H is not set or empty"
    ]


def test_a_batch_larger_than_the_queue_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_export_batch_size must not exceed"):
        make_settings({}, **{"tracing.max_queue_size": 10, "tracing.max_export_batch_size": 20})


def _without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is what an import finds for a package not installed.
    monkeypatch.setitem(sys.modules, OTEL_MODULES[1], None)


def test_enabled_without_the_extra_is_one_problem_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_the_extra(monkeypatch)
    with pytest.raises(ConfigError) as caught:
        make_settings({}, **ON)
    assert caught.value.problems == [
        "tracing.enabled: OpenTelemetry is not installed: pip install 'promptproxy[otel]'"
    ]
    make_settings({})  # off: nothing is needed


def test_config_check_exits_2_without_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_the_extra(monkeypatch)
    path = tmp_path / "proxy.yaml"
    path.write_text("tracing:\n  enabled: true\n")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "pip install 'promptproxy[otel]'" in result.output
    problems = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert problems == [
        "  - tracing.enabled: OpenTelemetry is not installed: pip install 'promptproxy[otel]'"
    ]


def test_a_bad_endpoint_is_named_with_an_example() -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings({}, **ON, **{"tracing.endpoint": "collector:4318"})
    assert caught.value.problems == [
        "tracing.endpoint: must be an absolute http(s) URL such as http://collector:4318/v1/traces"
    ]


def test_a_bad_endpoint_from_the_environment_is_named_too() -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"}, **ON)
    assert caught.value.problems == [
        "tracing.endpoint (from the environment): must be an absolute http(s) URL such as "
        "http://collector:4318/v1/traces"
    ]


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
)
def test_an_environment_asking_for_grpc_is_refused_not_sent_http(variable: str) -> None:
    """The proxy speaks OTLP over HTTP only: an environment set up for gRPC (its endpoint
    the collector's gRPC port) would lose every span to failed exports."""
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", variable: "grpc"}
    with pytest.raises(ConfigError) as caught:
        make_settings(environ, **ON)
    assert caught.value.problems == [
        f"tracing.endpoint (from the environment): {variable} is grpc, but the proxy exports "
        "OTLP over HTTP: set tracing.endpoint to the collector's HTTP endpoint, such as "
        "http://collector:4318/v1/traces"
    ]
    # The file's endpoint is what is used: the environment's protocol does not apply.
    file = {"tracing.endpoint": "http://collector:4318/v1/traces"}
    assert make_settings(environ, **ON, **file).tracing_endpoint == file["tracing.endpoint"]
    http = {**environ, variable: "http/protobuf"}
    assert make_settings(http, **ON).tracing_endpoint == "http://collector:4317/v1/traces"
