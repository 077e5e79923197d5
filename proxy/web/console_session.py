"""The operator console's session cookie and CSRF value: pure functions of the configured
tokens (``TokenGrant``) and a clock.

The cookie is stateless, so every worker of ``serve --workers N`` and every replica holding
the same tokens accepts it, and nothing is stored: ``base64url(payload).base64url(mac)``,
where the payload (JSON) names the token, an expiry and a random nonce, and the MAC is
HMAC-SHA256 keyed by that token's secret. Changing or removing the token in the config ends
its sessions. The CSRF value is an HMAC of the nonce under the same secret: the page learns
it from ``GET /console/session`` (same origin only) and sends it with every write.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from proxy.config import TokenGrant

COOKIE_NAME: Final = "promptproxy_console"
#: How long a session lasts: a working day. A longer one would outlive the operator's
#: attention; the way to end every session sooner is to rotate the token.
LIFETIME_SECONDS: Final = 12 * 3600
#: A cookie longer than this is not one we made (ours are ~150 characters); refused
#: before decoding anything.
_MAX_COOKIE: Final = 1024
#: The MAC's input is prefixed per purpose so a session MAC can never serve as a CSRF
#: value or the other way round, both being keyed by the same secret.
_SESSION_PURPOSE: Final = b"session:"
_CSRF_PURPOSE: Final = b"csrf:"


class Refusal(StrEnum):
    """Why a cookie is not a session, worded for the 401 the caller reads."""

    MALFORMED = "The console session cookie is not one this proxy made; log in again."
    ENDED = (
        "Console session ended: its token was changed or removed in the config; "
        "log in again with a current token."
    )
    EXPIRED = "Console session expired; log in again."


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: the token it stands for, its nonce and its expiry (Unix s)."""

    grant: TokenGrant
    nonce: str
    expires_at: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _mac(secret: str, purpose: bytes, message: bytes) -> bytes:
    return hmac.new(secret.encode(), purpose + message, hashlib.sha256).digest()


def mint(grant: TokenGrant, now: float, nonce: str | None = None) -> tuple[str, Session]:
    """A new session for ``grant`` starting at ``now``: the cookie value and the session.
    ``nonce``: fixed by tests only; a fresh random one otherwise."""
    session = Session(grant, nonce or secrets.token_urlsafe(16), int(now) + LIFETIME_SECONDS)
    payload = _b64(
        orjson.dumps({"name": grant.name, "exp": session.expires_at, "nonce": session.nonce})
    )
    mac = _b64(_mac(grant.token, _SESSION_PURPOSE, payload.encode("ascii")))
    return f"{payload}.{mac}", session


def _fields(payload: bytes) -> tuple[str, int, str] | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or set(data) != {"name", "exp", "nonce"}:
        return None
    name, expires, nonce = data["name"], data["exp"], data["nonce"]
    if not isinstance(name, str) or not isinstance(nonce, str) or not nonce:
        return None
    if not isinstance(expires, int) or isinstance(expires, bool):
        return None
    return name, expires, nonce


def verify(value: str, grants: tuple[TokenGrant, ...], now: float) -> Session | Refusal:
    """The session ``value`` stands for, or why it is none."""
    if len(value) > _MAX_COOKIE or value.count(".") != 1:
        return Refusal.MALFORMED
    payload_text, mac_text = value.split(".")
    if not payload_text.isascii() or not mac_text.isascii():
        return Refusal.MALFORMED
    payload, mac = _unb64(payload_text), _unb64(mac_text)
    fields = _fields(payload) if payload is not None else None
    if fields is None or mac is None:
        return Refusal.MALFORMED
    name, expires, nonce = fields
    # Names are not secret; the MAC is compared in constant time against every token of
    # that name (the config may give two tokens one name).
    found: TokenGrant | None = None
    for grant in grants:
        if grant.name == name:
            expected = _mac(grant.token, _SESSION_PURPOSE, payload_text.encode("ascii"))
            if hmac.compare_digest(expected, mac):
                found = grant
    if found is None:
        # An unknown name, or a MAC no current token makes: the token was removed or
        # changed (or the cookie was forged, which reads the same to the caller).
        return Refusal.ENDED
    if now >= expires:
        return Refusal.EXPIRED
    return Session(found, nonce, expires)


def csrf_value(session: Session) -> str:
    """The value the page sends as ``X-CSRF-Token`` with a write."""
    return _b64(_mac(session.grant.token, _CSRF_PURPOSE, session.nonce.encode()))


def csrf_matches(session: Session, presented: str) -> bool:
    """Whether ``presented`` is the session's CSRF value (compared in constant time)."""
    if not presented.isascii():
        return False
    return hmac.compare_digest(csrf_value(session).encode(), presented.encode())
