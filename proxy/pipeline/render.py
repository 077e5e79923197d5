"""Stage 4, render: put the chosen prompt version into the request body.

The rendered template replaces the first `system` or `developer` message (or is inserted
first); on the Responses API it becomes `instructions`. A model pin replaces the requested
model; the version's default parameters fill only what the caller left out. Caller values
are data: they are passed to the sandboxed renderer as variables, never as template code.
"""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest
from proxy.models import Route
from proxy.registry.models import PromptVersion
from proxy.registry.templates import PromptRenderer, RenderError

VARIABLES_FIELD = "prompt_variables"
_SYSTEM_ROLES = ("system", "developer")


def _variables(payload: dict[str, Any]) -> dict[str, Any]:
    values = payload.pop(VARIABLES_FIELD, None)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidRequest(
            f"`{VARIABLES_FIELD}` must be a JSON object of variable names to values.",
            param=VARIABLES_FIELD,
        )
    return values


def render_into(
    route: Route, payload: dict[str, Any], version: PromptVersion, renderer: PromptRenderer
) -> None:
    """Rewrite ``payload`` in place for ``version``."""
    values = _variables(payload)
    try:
        text = renderer.render(version.sha256, version.template, version.variables, values)
    except RenderError as exc:
        param = f"{VARIABLES_FIELD}.{exc.variable}" if exc.variable else VARIABLES_FIELD
        raise InvalidRequest(str(exc), param=param, code="invalid_prompt_variables") from None

    if route is Route.RESPONSES:
        payload["instructions"] = text
    else:
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequest("`messages` must be a list.", param="messages")
        for index, message in enumerate(messages):
            if isinstance(message, dict) and message.get("role") in _SYSTEM_ROLES:
                messages[index] = {**message, "content": text}
                break
        else:
            messages.insert(0, {"role": "system", "content": text})
    if version.model:
        payload["model"] = version.model
    for name, value in version.params.items():
        payload.setdefault(name, value)
