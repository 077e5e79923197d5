"""A small synchronous client for the admin API, used by the CLI (urllib, no event loop).

Answers come back as the models the server builds them from (``proxy.web.admin_models``),
so the CLI reads attributes the contract defines; request bodies are those models too,
left unvalidated here: the server checks them and names the field it refuses.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from proxy.prompt_key import InvalidPromptKey, Layer, LayerKind, PromptKey
from proxy.web import admin_models as api

M = TypeVar("M", bound=BaseModel)
#: A report reads every pair of its range on the server, which can take a while.
REPORT_TIMEOUT = 120.0


class AdminError(Exception):
    def __init__(self, message: str, status: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def key_of(slug: str, layer: Layer | None = None, variant: str | None = None) -> PromptKey:
    """The prompt key a slug on the command line names (at ``layer``, None: the base; of
    model ``variant``, None: the default one); an invalid slug or variant is refused in the
    admin API's own words, as the server would refuse it."""
    try:
        PromptKey(slug)
    except InvalidPromptKey:
        raise AdminError(
            f"Invalid prompt slug {slug!r}: it must match [A-Za-z0-9._-]{{1,64}}.", 400, "slug"
        ) from None
    try:
        return PromptKey(slug, layer, variant)
    except InvalidPromptKey:
        raise AdminError("`variant` must match [A-Za-z0-9._-]{1,64}.", 400, "variant") from None


def layer_of(kind: LayerKind, name: str) -> Layer:
    """The layer ``--tenant``/``--tier`` names, refused in the admin API's words."""
    try:
        return Layer(kind, name)
    except InvalidPromptKey:
        raise AdminError(f"`{kind}` must match [A-Za-z0-9._-]{{1,64}}.", 400, kind) from None


def layer_query(key: PromptKey) -> dict[str, str]:
    """The query parameters that address ``key``'s version line on a prompt route:
    ``tenant=ID`` or ``tier=NAME`` for an override, ``variant=NAME`` for a model variant
    (with either for that layer's override of the variant); none for the plain slug."""
    query: dict[str, str] = {} if key.layer is None else {key.layer.kind: key.layer.name}
    if key.variant is not None:
        query["variant"] = key.variant
    return query


class _PromptRoute(NamedTuple):
    """A path under one prompt, with the query naming its layer: the path alone would
    address the base, so the two travel together to ``_url``."""

    path: str
    layer: dict[str, str]


def _prompt(key: PromptKey, tail: str = "") -> _PromptRoute:
    """The admin API route of ``key``'s prompt, ``tail`` below it (``/diff``)."""
    return _PromptRoute(f"/prompts/{key.slug}{tail}", layer_query(key))


class AdminClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 10.0) -> None:
        self._base = base_url.rstrip("/") + "/admin/v1"
        self._token = token
        self._timeout = timeout

    def _url(self, path: str | _PromptRoute, query: dict[str, Any] | None) -> str:
        if isinstance(path, _PromptRoute):
            query = {**path.layer, **(query or {})}
            path = path.path
        url = self._base + path
        present = {k: v for k, v in (query or {}).items() if v is not None}
        return url + "?" + urllib.parse.urlencode(present) if present else url

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _error(self, exc: urllib.error.HTTPError, url: str) -> AdminError:
        try:
            error = orjson.loads(exc.read())["error"]
            return AdminError(error["message"], exc.code, error.get("param"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return AdminError(f"HTTP {exc.code} from {url}", exc.code)

    def _unreachable(self, exc: OSError) -> AdminError:
        reason = getattr(exc, "reason", exc)
        return AdminError(f"cannot reach the admin API at {self._base} ({reason})")

    def _call(
        self,
        model: type[M],
        method: str,
        path: str | _PromptRoute,
        body: Any = None,
        query: dict[str, Any] | None = None,
        wait: float | None = None,
        timeout: float | None = None,
    ) -> M:
        """``wait``: seconds the proxy may wait for every replica (writes only); the HTTP
        call then gets that much longer."""
        if wait is not None:
            query = {**(query or {}), "wait": f"{wait:g}"}
        url = self._url(path, query)
        headers = self._headers("application/json")
        data = None
        if body is not None:
            data = orjson.dumps(api.wire(body) if isinstance(body, BaseModel) else body)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            limit = (timeout or self._timeout) + (wait or 0.0)
            with urllib.request.urlopen(request, timeout=limit) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._error(exc, url) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None
        return _parse(model, raw, url)

    # -- the registry store ---------------------------------------------------------------

    def registry_status(self) -> api.RegistryStatus:
        return self._call(api.RegistryStatus, "GET", "/registry")

    def restore_registry(self, reason: str, overwrite: bool = False) -> api.RestoreResult:
        body = api.RestoreIn.model_construct(source="snapshot", reason=reason, overwrite=overwrite)
        return self._call(api.RestoreResult, "POST", "/registry/restore", body)

    def export_registry(self) -> api.RegistryExport:
        return self._call(api.RegistryExport, "GET", "/registry/export")

    def import_registry(
        self, image: Any, reason: str, overwrite: bool = False
    ) -> api.RestoreResult:
        """``image``: an export file's JSON as read (the server checks it field by field)."""
        query = {"reason": reason or None, "overwrite": "true" if overwrite else None}
        return self._call(api.RestoreResult, "POST", "/registry/import", image, query)

    # -- prompts --------------------------------------------------------------------------

    def push(self, key: PromptKey, version: api.VersionIn) -> api.VersionCreated:
        return self._call(api.VersionCreated, "POST", _prompt(key, "/versions"), version)

    def list_prompts(self) -> api.PromptList:
        return self._call(api.PromptList, "GET", "/prompts")

    def get_prompt(self, key: PromptKey) -> api.Prompt:
        return self._call(api.Prompt, "GET", _prompt(key))

    def get_version(self, key: PromptKey, version: int) -> api.Version:
        return self._call(api.Version, "GET", _prompt(key, f"/versions/{version}"))

    def diff(self, key: PromptKey, a: int, b: int) -> api.Diff:
        return self._call(api.Diff, "GET", _prompt(key, "/diff"), query={"from": a, "to": b})

    def explain(
        self,
        key: PromptKey,
        tenant: str | None = None,
        tier: str | None = None,
        version: int | None = None,
        model: str | None = None,
    ) -> api.Explain:
        """What a request of ``tenant`` (or of ``tier``) for ``model`` is composed of over
        the base version ``version`` (None: its prod) of the variant that model selects (no
        model: the default variant). Both tenant and tier given: the tenant as if it had
        that tier (a preview), which is why they are query values here and not ``key``'s
        layer; the variant is the model's to choose, as a request's is, not ``key``'s."""
        if not key.is_plain:
            raise AdminError(
                f"explain composes a slug's base with its overrides for a request's model; "
                f"{key} names one version line (give the slug, and the model)"
            )
        query = {"tenant": tenant, "tier": tier, "version": version, "model": model}
        return self._call(api.Explain, "GET", _prompt(key, "/explain"), query=query)

    def promote(
        self,
        key: PromptKey,
        version: int,
        reason: str,
        wait: float | None = None,
        force: bool = False,
        override_gates: bool = False,
    ) -> api.AuditWritten:
        fields: dict[str, Any] = {"version": version, "reason": reason, "force": force}
        if override_gates:  # sent only when set: a proxy before gates refuses the key
            fields["override_gates"] = True
        body = api.PromoteIn.model_construct(**fields)
        return self._call(api.AuditWritten, "POST", _prompt(key, "/promote"), body, wait=wait)

    def rollback(self, key: PromptKey, reason: str, wait: float | None = None) -> api.AuditWritten:
        body = api.ReasonIn.model_construct(reason=reason)
        return self._call(api.AuditWritten, "POST", _prompt(key, "/rollback"), body, wait=wait)

    def history(self, key: PromptKey) -> api.AuditPage:
        found = self._call(api.History, "GET", _prompt(key, "/history")).root
        return _expect(api.AuditPage, found)

    def served_at(self, key: PromptKey, at: str) -> api.ServedAt:
        """What ``key`` served at the instant ``at`` (ISO-8601)."""
        found = self._call(api.History, "GET", _prompt(key, "/history"), query={"at": at})
        return _expect(api.ServedAt, found.root)

    def audit(self, key: PromptKey | None = None, limit: int = 100) -> api.AuditPage:
        if key is not None and not key.is_plain:
            # `/audit?slug=` takes no layer; a layer's entries are in its `history`.
            raise AdminError(f"the audit log is filtered by a base slug only, not {key}")
        slug = None if key is None else key.slug
        return self._call(api.AuditPage, "GET", "/audit", query={"slug": slug, "limit": limit})

    # -- rollouts -------------------------------------------------------------------------

    def set_rollout(
        self, key: PromptKey, rollout: api.RolloutIn, wait: float | None = None
    ) -> api.RolloutChanged:
        path = _prompt(key, "/rollout")
        return self._call(api.RolloutChanged, "PUT", path, rollout, wait=wait)

    def get_rollout(self, key: PromptKey) -> api.RolloutStatus:
        return self._call(api.RolloutStatus, "GET", _prompt(key, "/rollout"))

    def get_analysis(self, key: PromptKey) -> api.LastAnalysis:
        return self._call(api.LastAnalysis, "GET", _prompt(key, "/analysis"))

    def list_rollouts(self) -> api.RolloutList:
        return self._call(api.RolloutList, "GET", "/rollouts")

    def abort_rollout(
        self, key: PromptKey, reason: str, wait: float | None = None
    ) -> api.AuditWritten:
        body = api.ReasonIn.model_construct(reason=reason)
        path = _prompt(key, "/rollout")
        return self._call(api.AuditWritten, "DELETE", path, body, wait=wait)

    def promote_rollout(
        self, key: PromptKey, reason: str, wait: float | None = None
    ) -> api.AuditWritten:
        body = api.ReasonIn.model_construct(reason=reason)
        path = _prompt(key, "/rollout/promote")
        return self._call(api.AuditWritten, "POST", path, body, wait=wait)

    def fleet(self) -> api.FleetStatus:
        return self._call(api.FleetStatus, "GET", "/fleet")

    # -- tenants ----------------------------------------------------------------------------

    def tenants(self) -> api.TenantList:
        return self._call(api.TenantList, "GET", "/tenants")

    def tenant(self, tenant_id: str) -> api.Tenant:
        return self._call(api.Tenant, "GET", f"/tenants/{urllib.parse.quote(tenant_id, safe='')}")

    def tenant_usage(
        self, tenant_id: str, since: str | None, until: str | None, slug: str | None
    ) -> api.TenantUsage:
        path = f"/tenants/{urllib.parse.quote(tenant_id, safe='')}/usage"
        query = {"since": since, "until": until, "slug": slug}
        return self._call(api.TenantUsage, "GET", path, query=query)

    def put_tenant(
        self, tenant_id: str, body: api.TenantIn, wait: float | None = None
    ) -> api.TenantChanged:
        path = f"/tenants/{urllib.parse.quote(tenant_id, safe='')}"
        return self._call(api.TenantChanged, "PUT", path, body, wait=wait)

    def delete_tenant(
        self, tenant_id: str, reason: str, wait: float | None = None
    ) -> api.AuditWritten:
        body = api.ReasonIn.model_construct(reason=reason)
        path = f"/tenants/{urllib.parse.quote(tenant_id, safe='')}"
        return self._call(api.AuditWritten, "DELETE", path, body, wait=wait)

    # -- shadow pairs ---------------------------------------------------------------------

    def shadow_rollout(self, key: PromptKey) -> api.ShadowRollout:
        return self._call(api.ShadowRollout, "GET", _prompt(key, "/shadow/rollout"))

    def shadow_report(
        self,
        key: PromptKey,
        *,
        since: str,
        limit: int | None,
        rollout: str | None,
        alpha: float,
        margin: float,
        min_pairs: int,
    ) -> api.ShadowReport:
        """Whether one rollout's candidate diverges from stable more than stable from itself
        (``rollout`` None: the running one, else the last)."""
        query = {
            "since": since,
            "limit": limit,
            "rollout": rollout,
            "alpha": repr(alpha),
            "margin": repr(margin),
            "min_pairs": min_pairs,
        }
        path = _prompt(key, "/shadow/report")
        return self._call(api.ShadowReport, "GET", path, query=query, timeout=REPORT_TIMEOUT)

    def _open_lines(
        self, path: _PromptRoute, query: dict[str, Any], timeout: float
    ) -> http.client.HTTPResponse:
        """A JSON-lines (`application/x-ndjson`) GET, open; the caller closes it."""
        url = self._url(path, query)
        request = urllib.request.Request(
            url, method="GET", headers=self._headers("application/x-ndjson")
        )
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise self._error(exc, url) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None
        return response

    def shadow_pairs(
        self,
        key: PromptKey,
        since: str | None = None,
        limit: int | None = None,
        rollout: str | None = None,
    ) -> list[api.ShadowPair]:
        """Recorded shadow pairs of ``key``, oldest first; of one rollout when given."""
        query = {"since": since, "limit": limit, "rollout": rollout}
        with self._open_lines(_prompt(key, "/shadow/pairs"), query, self._timeout) as resp:
            try:
                return [_pair(line) for line in resp if line.strip()]
            except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
                raise AdminError(f"the pair stream broke off ({exc})") from None

    def follow_shadow_pairs(
        self, key: PromptKey, since: str | None = None, idle_timeout: float = 60.0
    ) -> Iterator[api.ShadowPair]:
        """Shadow pairs as they are recorded (after those since ``since``), until the
        server ends the stream. The server sends an empty line every ~15 s while idle, so
        ``idle_timeout`` only fires when the connection is really dead."""
        query = {"since": since, "follow": "true"}
        with self._open_lines(_prompt(key, "/shadow/pairs"), query, idle_timeout) as resp:
            try:
                for line in resp:
                    if line.strip():
                        yield _pair(line)
            except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
                raise AdminError(f"the pair stream broke off ({exc})") from None

    # -- eval runs --------------------------------------------------------------------------

    def run_eval(
        self,
        key: PromptKey,
        body: dict[str, Any],
        idle_timeout: float = 60.0,
        *,
        what: str = "evals",
    ) -> Iterator[dict[str, Any]]:
        """Start an eval run (``what="replays"``: a replay) and follow it: its JSON lines
        (``started``, ``progress``..., then ``finished`` or ``failed``) as they come. The
        server writes a line at least every ~15 s, so ``idle_timeout`` only fires on a dead
        connection."""
        route = _prompt(key, f"/{what}")
        url = self._url(route, None)
        headers = {**self._headers("application/x-ndjson"), "Content-Type": "application/json"}
        request = urllib.request.Request(
            url, data=orjson.dumps(body), method="POST", headers=headers
        )
        try:
            resp = urllib.request.urlopen(request, timeout=idle_timeout)
        except urllib.error.HTTPError as exc:
            raise self._error(exc, url) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._unreachable(exc) from None
        with resp:
            try:
                for line in resp:
                    if line.strip():
                        yield orjson.loads(line)
            except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as exc:
                raise AdminError(
                    f"the eval run's stream broke off ({exc!r}); the run goes on in the proxy "
                    "and is stored: see `promptproxy prompts history`"
                ) from None

    def eval_runs(
        self, key: PromptKey, candidate: int | None = None, limit: int | None = None
    ) -> api.EvalRunList:
        query = {"candidate": candidate, "limit": limit}
        return self._call(api.EvalRunList, "GET", _prompt(key, "/evals"), query=query)

    def eval_run(self, run_id: str) -> api.EvalRunOut:
        return self._call(api.EvalRunOut, "GET", f"/evals/{urllib.parse.quote(run_id)}")


def _pair(line: bytes) -> api.ShadowPair:
    return api.ShadowPair.model_validate(orjson.loads(line))


def _parse(model: type[M], raw: bytes, url: str) -> M:
    try:
        return model.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise AdminError(f"unexpected answer from {url}: {exc}") from None


def _expect(model: type[M], found: BaseModel) -> M:
    if not isinstance(found, model):
        raise AdminError(f"unexpected answer: {type(found).__name__}, not {model.__name__}")
    return found
