"""An eval run's calls go through the request path like a caller's, marked by this
process's eval key (``PipelineResources.eval_key``, random per process, never logged).

The mark makes the call an ``eval`` arm: it must pin a version, it may run as any tenant the
registry knows (``x-promptproxy-eval-tenant``: a case's overrides apply as that tenant's
callers get them, without its API key), and it is kept out of the metrics, the rollout
analysis and the tenant's usage. A request carrying the header with any other value is
refused: a caller cannot pass for an eval.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from proxy.errors import Forbidden, InvalidRequest, NotFound
from proxy.pipeline.resolve import EVAL_HEADER, EVAL_TENANT_HEADER, VERSION_HEADER, PromptRef
from proxy.registry.models import RegistrySnapshot, Tenant


def is_eval_call(headers: Mapping[str, str], eval_key: str) -> bool:
    """Whether the request is this process's eval runner's; a wrong key is a 403."""
    sent = headers.get(EVAL_HEADER)
    if sent is None:
        return False
    if not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), eval_key.encode()):
        raise Forbidden(
            f"{EVAL_HEADER} is this proxy's own eval runner's header; the value sent is not "
            "its key.",
            param=EVAL_HEADER,
            code="invalid_eval_key",
        )
    return True


def eval_tenant(snapshot: RegistrySnapshot, headers: Mapping[str, str]) -> Tenant | None:
    named = headers.get(EVAL_TENANT_HEADER)
    if not named:
        return None
    tenant = snapshot.tenants.get(named)
    if tenant is None:
        raise NotFound(
            f"Tenant {named[:64]!r} is not one the registry knows.",
            param=EVAL_TENANT_HEADER,
            code="tenant_not_found",
        )
    return tenant


def check_eval_pin(ref: PromptRef) -> None:
    if ref.pinned_version is None:
        raise InvalidRequest(
            f"An eval call runs one version: it needs {VERSION_HEADER}.",
            param=VERSION_HEADER,
            code="eval_needs_version",
        )
