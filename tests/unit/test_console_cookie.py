"""The console's session cookie and CSRF value (``proxy.web.console_session``): what it
accepts and refuses, against a clock the tests set."""

from __future__ import annotations

import base64

import orjson
import pytest

from proxy.config import TokenGrant
from proxy.web.console_session import (
    LIFETIME_SECONDS,
    Refusal,
    Session,
    csrf_matches,
    csrf_value,
    mint,
    verify,
)

ALICE = TokenGrant("alice", "alice-secret-0123456789", "admin")
BOB = TokenGrant("bob", "bob-secret-0123456789", "read")
GRANTS = (ALICE, BOB)
NOW = 1_767_000_000.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _payload(cookie: str) -> dict[str, object]:
    text = cookie.split(".")[0]
    loaded = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    assert isinstance(loaded, dict)
    return loaded


def test_a_minted_cookie_is_the_session_until_it_expires() -> None:
    cookie, session = mint(ALICE, NOW)
    assert session.expires_at == int(NOW) + LIFETIME_SECONDS
    assert verify(cookie, GRANTS, NOW) == session
    assert verify(cookie, GRANTS, NOW + LIFETIME_SECONDS - 1) == session
    assert verify(cookie, GRANTS, NOW + LIFETIME_SECONDS) is Refusal.EXPIRED


def test_the_cookie_holds_the_name_and_never_the_token() -> None:
    cookie, session = mint(BOB, NOW)
    assert _payload(cookie) == {"name": "bob", "exp": session.expires_at, "nonce": session.nonce}
    assert BOB.token not in cookie
    assert BOB.token not in csrf_value(session)


def test_each_login_gets_its_own_nonce_and_csrf_value() -> None:
    (_, first), (_, second) = mint(ALICE, NOW), mint(ALICE, NOW)
    assert first.nonce != second.nonce
    assert csrf_value(first) != csrf_value(second)
    assert not csrf_matches(first, csrf_value(second))
    assert csrf_matches(first, csrf_value(first))


def test_a_payload_renamed_to_another_token_is_refused() -> None:
    """A read-only token's holder rewrites the payload to name the admin token."""
    cookie, _session = mint(BOB, NOW)
    forged = dict(_payload(cookie), name="alice")
    altered = _b64(orjson.dumps(forged)) + "." + cookie.split(".")[1]
    assert verify(altered, GRANTS, NOW) is Refusal.ENDED


def test_a_payload_with_a_later_expiry_is_refused() -> None:
    cookie, session = mint(ALICE, NOW)
    later = dict(_payload(cookie), exp=session.expires_at + 10 * LIFETIME_SECONDS)
    altered = _b64(orjson.dumps(later)) + "." + cookie.split(".")[1]
    assert verify(altered, GRANTS, NOW + LIFETIME_SECONDS) is Refusal.ENDED


def test_a_changed_or_removed_token_ends_its_sessions() -> None:
    cookie, _ = mint(ALICE, NOW)
    rotated = TokenGrant("alice", "a-new-secret-9876543210", "admin")
    assert verify(cookie, (rotated, BOB), NOW) is Refusal.ENDED
    assert verify(cookie, (BOB,), NOW) is Refusal.ENDED
    assert verify(cookie, (), NOW) is Refusal.ENDED


def test_two_tokens_of_one_name_each_keep_their_sessions() -> None:
    other = TokenGrant("alice", "another-alice-secret-42", "read")
    cookie, _session = mint(other, NOW)
    found = verify(cookie, (ALICE, other), NOW)
    assert isinstance(found, Session)
    assert found.grant.role == "read"


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "abc",
        "a.b.c",
        "not base64!.AAAA",
        _b64(b"not json") + ".AAAA",
        _b64(b"[1, 2]") + ".AAAA",
        _b64(orjson.dumps({"name": "alice", "exp": "soon", "nonce": "n"})) + ".AAAA",
        _b64(orjson.dumps({"name": "alice", "exp": True, "nonce": "n"})) + ".AAAA",
        _b64(orjson.dumps({"name": "alice", "exp": 1, "nonce": "n", "role": "admin"})) + ".AA",
        "é" * 10 + ".AAAA",
        "A" * 5000 + ".AAAA",
    ],
)
def test_malformed_values_are_refused(value: str) -> None:
    assert verify(value, GRANTS, NOW) is Refusal.MALFORMED


def test_a_csrf_value_is_bound_to_the_token() -> None:
    """The same nonce under another token's secret gives another value."""
    _, session = mint(ALICE, NOW, nonce="fixed")
    _, other = mint(BOB, NOW, nonce="fixed")
    assert csrf_value(session) != csrf_value(other)
    assert not csrf_matches(session, csrf_value(other))
    assert not csrf_matches(session, "")
    assert not csrf_matches(session, "é")


def test_two_names_of_one_secret_keep_their_own_sessions() -> None:
    """One value configured twice (a read name and an admin name): a cookie stands for the
    name it was minted for, and renaming its payload fails even though the secret is the
    same, because the name is under the MAC."""
    reader = TokenGrant("readers", "one-shared-secret-0123456789", "read")
    admin = TokenGrant("ops", "one-shared-secret-0123456789", "admin")
    cookie, _ = mint(reader, NOW)
    found = verify(cookie, (reader, admin), NOW)
    assert isinstance(found, Session)
    assert (found.grant.name, found.grant.role) == ("readers", "read")
    renamed = _b64(orjson.dumps(dict(_payload(cookie), name="ops"))) + "." + cookie.split(".")[1]
    assert verify(renamed, (reader, admin), NOW) is Refusal.ENDED
