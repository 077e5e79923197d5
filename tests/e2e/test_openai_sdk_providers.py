"""Two providers behind one base URL, through the real openai SDK: two simulator processes,
each demanding its own key (401 otherwise), and a proxy process routing by model. A key
sent to the wrong provider would be refused, so every answer below proves the routing and
the key isolation end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.processes import ProxyProc, proxy, simulator

pytestmark = pytest.mark.e2e

OPENAI_KEY = "sk-provider-openai"
CLIENT_KEY = "sk-the-callers-own"


@pytest.fixture(scope="module")
def routed(procs_dir: Path) -> Iterator[ProxyProc]:
    with (
        simulator(procs_dir, "--api-key", OPENAI_KEY) as (openai_url, _),
        simulator(procs_dir, "--api-key", CLIENT_KEY) as (local_url, _),
    ):
        config = f"""
providers:
  - name: openai
    kind: openai
    base_url: {openai_url}
    api_key_env: E2E_OPENAI_KEY
    models: ["gpt-*"]
  - name: local
    base_url: {local_url}
    models: ["llama-*", "mistral-large"]
"""
        with proxy(procs_dir, None, config, env={"E2E_OPENAI_KEY": OPENAI_KEY}) as proc:
            yield proc


@pytest.fixture
def client(routed: ProxyProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=routed.url, api_key=CLIENT_KEY, max_retries=0)


def test_each_model_reaches_its_provider_with_the_right_key(client: openai.OpenAI) -> None:
    for model in ("gpt-4o", "llama-3.1-70b"):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content
    streamed = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert chunks[-1].usage is not None


def test_a_model_no_provider_serves_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(
            model="claude-3-5-sonnet", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.code == "model_not_found"


def test_the_model_list_merges_both_providers(client: openai.OpenAI) -> None:
    owners = {model.id: model.owned_by for model in client.models.list()}
    # Named literally in the config, though its provider lists no such model.
    assert owners.get("mistral-large") == "local"
    # Each provider's own list, kept to the models routed to it: both simulators list the
    # same gpt and embedding models; the gpt ones appear once, from `openai`, the others
    # (served by no provider) not at all.
    assert sorted(owners) == ["gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "mistral-large"]
