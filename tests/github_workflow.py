"""The GitHub Actions workflow of deploy/github/, read as GitHub reads it (for the unit test
of its shape and the integration test that runs its steps)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "deploy" / "github" / "prompts.yml"
PR_EVALS = REPO / "deploy" / "github" / "pr_evals.py"
_BOOL = "tag:yaml.org,2002:bool"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans (true and false only), as GitHub's parser
    has them: under YAML 1.1 the workflow's `on:` key would be read as the boolean True."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_workflow(path: Path = WORKFLOW) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data
