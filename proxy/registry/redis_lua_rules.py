"""Lua refusals generated from the ``lifecycle`` checks, for the Redis store's scripts.

A check is run with placeholder arguments; the message it refuses with becomes a Lua
function ``function(a, b) return <message> end`` in which each placeholder is a Lua name
again (``PKEY`` of the script prelude, the key's text, or the parameters ``a`` and ``b``).
Where a check depends on a status, it is run for every status, so the generated table also
decides which statuses are refused: both the rule and its wording come from Python, and the
Redis store cannot drift from the embedded one, which calls the same checks directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

from proxy.prompt_key import PromptKey
from proxy.registry.models import Status
from proxy.registry.store import InvalidTransition

#: Placeholders to call a check with. The numbers are version numbers no registry reaches,
#: the strings cannot occur in a message by accident (the key is a valid one, as the checks
#: take keys, but no message says anything like it).
KEY = PromptKey("_0_lua-placeholder-key_0_")
A, B = 1_000_000_001, 1_000_000_002
A_ID, B_ID = "\x00a\x00", "\x00b\x00"

_LUA_NAMES = {KEY.text: "PKEY", str(A): "a", str(B): "b", A_ID: "a", B_ID: "b"}
_PLACEHOLDER = re.compile("|".join(re.escape(name) for name in _LUA_NAMES))


def _lua_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def lua_text(message: str) -> str:
    """A Lua expression for ``message`` with its placeholders turned into Lua names."""
    parts: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(message):
        if match.start() > pos:
            parts.append(_lua_string(message[pos : match.start()]))
        parts.append(_LUA_NAMES[match.group()])
        pos = match.end()
    if pos < len(message):
        parts.append(_lua_string(message[pos:]))
    return " .. ".join(parts) or "''"


def _refusal(check: Callable[[], object]) -> str | None:
    try:
        check()
    except InvalidTransition as exc:
        return f"function(a, b) return {lua_text(str(exc))} end"
    return None


def lua_refusal(check: Callable[[], object]) -> str:
    """Lua ``function(a, b)`` returning the message ``check`` refuses with."""
    refusal = _refusal(check)
    if refusal is None:
        raise AssertionError("the check did not refuse its placeholder arguments")
    return refusal


def lua_status_refusals(check: Callable[[Status], object]) -> str:
    """Lua table status -> refusal function, holding only the statuses ``check`` refuses."""
    rows = [
        f"['{status.value}'] = {refusal}"
        for status in Status
        if (refusal := _refusal(partial(check, status))) is not None
    ]
    return "{" + ", ".join(rows) + "}"


def lua_move_refusals(check: Callable[[Status, Status], object]) -> str:
    """Lua table current status -> target status -> refusal function."""
    rows = [
        f"['{current.value}'] = " + lua_status_refusals(partial(check, current))
        for current in Status
    ]
    return "{" + ", ".join(rows) + "}"
