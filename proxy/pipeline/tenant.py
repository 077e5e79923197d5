"""Stage 2a, who is calling: the request's tenant, from the configured source, looked up in
the in-process snapshot (never the store).

``tenants.source: header`` reads the tenant id from a header; ``api_key`` hashes the
caller's bearer key (SHA-256, as the records keep it) and looks the digest up, so the key
itself is neither kept nor logged. A request whose tenant is missing or unknown gets the
base prompt, or a 403 when ``tenants.unknown`` is ``refuse``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from proxy.config import TenantsConfig
from proxy.errors import Forbidden
from proxy.registry.models import RegistrySnapshot, Tenant

_BEARER = "bearer "


def request_tenant(
    snapshot: RegistrySnapshot, headers: Mapping[str, str], config: TenantsConfig
) -> Tenant | None:
    if not snapshot.tenants and config.unknown == "base":
        return None  # no tenants: nothing to look up, and nobody is refused
    if config.source == "header":
        named = headers.get(config.header)
        tenant = None if not named else snapshot.tenants.get(named)
    else:
        key = api_key(headers)
        tenant = None if key is None else snapshot.tenant_by_key_hash.get(key_sha256(key))
    if tenant is None and config.unknown == "refuse":
        raise _refused(config, headers)
    return tenant


def api_key(headers: Mapping[str, str]) -> str | None:
    """The caller's key: `Authorization: Bearer KEY` (the OpenAI SDKs), else `api-key`
    (Azure's), else `x-api-key` (Anthropic's)."""
    authorization = headers.get("authorization")
    if authorization and authorization[:7].lower() == _BEARER:
        return authorization[7:].strip() or None
    return headers.get("api-key") or headers.get("x-api-key") or None


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _refused(config: TenantsConfig, headers: Mapping[str, str]) -> Forbidden:
    if config.source == "header":
        named = headers.get(config.header)
        what = (
            f"no {config.header} header"
            if not named
            else f"tenant {named[:64]!r}, which the registry does not know"
        )
        param = config.header
    else:
        # Never the key, nor its hash: a refused key may be someone's typo of a real one.
        what = "an API key that names no tenant" if api_key(headers) else "no API key"
        param = "authorization"
    return Forbidden(
        f"This proxy serves prompts to known tenants only, and the request has {what}.",
        param=param,
        code="unknown_tenant",
    )
