"""Stage 4, render: put the chosen prompt version into the request body.

The platform's guardrails (the prod version of `_guardrails`) come first, as a system
message of their own, then the rendered template; the caller's own `system` and `developer`
messages are dropped, or kept after both when the version says `caller_system: after`, so
a caller's "ignore the rules above" never comes before the rules. On the Responses API the
two texts become `instructions`, in the same order; on the Messages API, the text blocks of
`system` (the caller's own `system` dropped, or kept after them). A model pin replaces the requested
model; the version's default parameters (with its overrides', for a composed prompt) fill
only what the caller left out. Caller values
are data: they are passed to the sandboxed renderer as variables, never as template code.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, NamedTuple

from proxy.errors import InvalidRequest, ServiceUnavailable
from proxy.log import APP_LOGGER
from proxy.models import Route
from proxy.prompt_key import GUARDRAILS_SLUG
from proxy.registry.composition import Composition, compose, layer_label
from proxy.registry.models import CALLER_SYSTEM_AFTER, PromptVersion
from proxy.registry.templates import PromptRenderer, RenderError, TemplateProblem

_log = logging.getLogger(APP_LOGGER)

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


class Rendered(NamedTuple):
    #: The composition sent: the base's own when the overrides' would not render.
    composed: Composition | None
    #: The guardrails' text and the prompt's, as rendered: what the model was told.
    rules: str | None
    text: str

    @property
    def prompt_hash(self) -> str:
        """What the model was told, as a short digest: the same for every request whose
        guardrails, template, fills and variables rendered the same text, so a log line or
        a captured call names the exact prompt without carrying it. Computed when asked
        (the primary's log line), never for a shadow copy."""
        return prompt_hash(self.rules, self.text)


def prompt_hash(rules: str | None, text: str) -> str:
    """The first 16 hex digits of SHA-256 over the guardrails' text and the prompt's."""
    digest = hashlib.sha256((rules or "").encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()[:16]


def render_into(
    route: Route,
    payload: dict[str, Any],
    version: PromptVersion,
    renderer: PromptRenderer,
    guardrails: PromptVersion | None = None,
    composed: Composition | None = None,
) -> Rendered:
    """Rewrite ``payload`` in place for ``version``, under ``guardrails`` if there are any,
    as ``composed`` with the caller's tier's and tenant's overrides when there are any."""
    values = _variables(payload)
    try:
        text = _text(renderer, version, composed, values)
    except RenderError as exc:
        if composed is None or not composed.overrides:
            raise _caller_error(exc) from None
        # The overrides passed their checks, yet with these values they fail (a default
        # the template indexes, a forced base): the tenant gets the base's own text rather
        # than an error blamed on the caller, if that renders.
        composed = compose(version) if version.blocks else None
        try:
            text = _text(renderer, version, composed, values)
        except RenderError:
            raise _caller_error(exc) from None
        if renderer.first_failure(composed.render_key if composed else version.sha256):
            _log.warning(
                "the overrides of %s v%d do not render (%s); serving the base's own text",
                version.key,
                version.version,
                exc,
            )
    # The platform's text: never the caller's values (a push gives every variable a default).
    rules = None if guardrails is None else _render_guardrails(guardrails, renderer)
    keep_caller_system = version.caller_system == CALLER_SYSTEM_AFTER

    if route is Route.MESSAGES:
        # The Messages API has no system turn: its top-level `system`, as text blocks.
        system = [] if rules is None else [{"type": "text", "text": rules}]
        system.append({"type": "text", "text": text})
        if keep_caller_system:
            system += _caller_system_blocks(payload.get("system"))
        payload["system"] = system
    elif route is Route.RESPONSES:
        payload["instructions"] = text if rules is None else f"{rules}\n\n{text}"
        items = payload.get("input")
        if isinstance(items, list) and not keep_caller_system:
            payload["input"] = [item for item in items if not _is_system(item)]
    else:
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise InvalidRequest("`messages` must be a list.", param="messages")
        role: str | None = None
        rest: list[Any] = []
        for message in messages:
            if _is_system(message):
                if role is None:
                    role = message["role"]  # a client that speaks `developer` gets it back
                if not keep_caller_system:
                    continue
            rest.append(message)
        role = role or "system"
        prompt = [{"role": role, "content": text}]
        if rules is not None:
            prompt.insert(0, {"role": role, "content": rules})
        payload["messages"] = prompt + rest
    if version.model:
        payload["model"] = version.model
    for name, value in (version.params if composed is None else composed.params).items():
        payload.setdefault(name, value)
    return Rendered(composed, rules, text)


def _text(
    renderer: PromptRenderer,
    version: PromptVersion,
    composed: Composition | None,
    values: dict[str, Any],
) -> str:
    if composed is None:
        return renderer.render(version.sha256, version.template, version.variables, values)
    return renderer.render(
        composed.render_key,
        version.template,
        composed.variables,
        values,
        composed.blocks,
        template_key=version.sha256,
    )


def _caller_error(exc: RenderError) -> InvalidRequest:
    param = f"{VARIABLES_FIELD}.{exc.variable}" if exc.variable else VARIABLES_FIELD
    return InvalidRequest(str(exc), param=param, code="invalid_prompt_variables")


def _render_guardrails(guardrails: PromptVersion, renderer: PromptRenderer) -> str:
    try:
        return renderer.render(guardrails.sha256, guardrails.template, guardrails.variables, {})
    except (RenderError, TemplateProblem) as exc:
        # A push or an import refuses such a version; one stored by an older promptproxy
        # must still never reach a provider without its rules.
        raise ServiceUnavailable(
            f"The platform's guardrails ({GUARDRAILS_SLUG} v{guardrails.version}) cannot be "
            f"rendered ({exc}), and no prompt is served without them: roll them back.",
            code="guardrails_unavailable",
        ) from None


def _caller_system_blocks(system: Any) -> list[Any]:
    """A Messages request's own ``system`` (a string or text blocks) as blocks."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    if isinstance(system, list):
        return system  # the provider checks its blocks, as it would without the proxy
    raise InvalidRequest("`system` must be a string or a list of text blocks.", param="system")


def _is_system(item: Any) -> bool:
    return isinstance(item, dict) and item.get("role") in _SYSTEM_ROLES


def layers(
    version: PromptVersion, guardrails: PromptVersion | None, composed: Composition | None = None
) -> str:
    """What composed a prompt, in order: the ``x-prompt-layers`` header and log field."""
    base = layer_label(version) if composed is None else composed.layers
    return base if guardrails is None else f"guardrails@{guardrails.version},{base}"
