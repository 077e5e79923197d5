"""The bundled simulator and the upstream must agree on the port, or the proxy would start
"ready" and answer every request with 502."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError
from tests.support import make_settings


def test_a_simulator_on_another_port_names_both_fields() -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(
            **{"upstream.base_url": "http://127.0.0.1:8091/v1", "simulator.enabled": True}
        )
    (problem,) = info.value.problems
    assert problem.startswith("simulator.port is 8090"), problem  # no pydantic wrapping
    assert "upstream.base_url (http://127.0.0.1:8091/v1) uses port 8091" in problem


@pytest.mark.parametrize(
    ("base_url", "sim_host"),
    [
        ("http://localhost:8090/v1", "127.0.0.1"),  # two names for this machine, same port
        ("http://127.0.0.1:8090/v1", "0.0.0.0"),
        ("https://api.openai.com/v1", "127.0.0.1"),  # simulator kept for something else
    ],
)
def test_agreeing_or_unrelated_upstreams_are_fine(base_url: str, sim_host: str) -> None:
    make_settings(
        **{"upstream.base_url": base_url, "simulator.enabled": True, "simulator.host": sim_host}
    )


def test_a_local_upstream_with_the_simulator_for_shadows_is_fine() -> None:
    make_settings(
        **{
            "upstream.base_url": "http://127.0.0.1:8000/v1",
            "shadow.base_url": "http://127.0.0.1:8090/v1",
            "simulator.enabled": True,
        }
    )


def test_a_disabled_simulator_is_not_checked() -> None:
    make_settings(**{"upstream.base_url": "http://127.0.0.1:8091/v1"})
