"""A small synchronous client for the admin API, used by the CLI (stdlib only)."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson


class AdminError(Exception):
    def __init__(self, message: str, status: int | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class AdminClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 10.0) -> None:
        self._base = base_url.rstrip("/") + "/admin/v1"
        self._token = token
        self._timeout = timeout

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        wait: float | None = None,
    ) -> Any:
        """``wait``: seconds the proxy may wait for every replica (writes only); the HTTP
        call then gets that much longer."""
        if wait is not None:
            query = {**(query or {}), "wait": f"{wait:g}"}
        url = self._base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            timeout = self._timeout + (wait or 0.0)
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                error = orjson.loads(payload)["error"]
                raise AdminError(error["message"], exc.code, error.get("param")) from None
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise AdminError(f"HTTP {exc.code} from {url}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self._base} ({reason})") from None

    def registry_status(self) -> Any:
        return self._call("GET", "/registry")

    def restore_registry(self, reason: str, overwrite: bool = False) -> Any:
        body = {"source": "snapshot", "reason": reason, "overwrite": overwrite}
        return self._call("POST", "/registry/restore", body)

    def export_registry(self) -> Any:
        return self._call("GET", "/registry/export")

    def import_registry(self, image: Any, reason: str, overwrite: bool = False) -> Any:
        query = {"reason": reason or None, "overwrite": "true" if overwrite else None}
        return self._call("POST", "/registry/import", image, query)

    def push(self, slug: str, version: dict[str, Any]) -> Any:
        return self._call("POST", f"/prompts/{slug}/versions", version)

    def list_prompts(self) -> Any:
        return self._call("GET", "/prompts")

    def get_prompt(self, slug: str) -> Any:
        return self._call("GET", f"/prompts/{slug}")

    def get_version(self, slug: str, version: int) -> Any:
        return self._call("GET", f"/prompts/{slug}/versions/{version}")

    def diff(self, slug: str, a: int, b: int) -> Any:
        return self._call("GET", f"/prompts/{slug}/diff", query={"from": a, "to": b})

    def promote(self, slug: str, version: int, reason: str, wait: float | None = None) -> Any:
        body = {"version": version, "reason": reason}
        return self._call("POST", f"/prompts/{slug}/promote", body, wait=wait)

    def rollback(self, slug: str, reason: str, wait: float | None = None) -> Any:
        return self._call("POST", f"/prompts/{slug}/rollback", {"reason": reason}, wait=wait)

    def history(self, slug: str, at: str | None = None) -> Any:
        return self._call("GET", f"/prompts/{slug}/history", query={"at": at})

    def audit(self, slug: str | None = None, limit: int = 100) -> Any:
        return self._call("GET", "/audit", query={"slug": slug, "limit": limit})

    # -- rollouts -------------------------------------------------------------------------

    def set_rollout(self, slug: str, rollout: dict[str, Any], wait: float | None = None) -> Any:
        return self._call("PUT", f"/prompts/{slug}/rollout", rollout, wait=wait)

    def get_rollout(self, slug: str) -> Any:
        return self._call("GET", f"/prompts/{slug}/rollout")

    def get_analysis(self, slug: str) -> Any:
        return self._call("GET", f"/prompts/{slug}/analysis")

    def list_rollouts(self) -> Any:
        return self._call("GET", "/rollouts")

    def abort_rollout(self, slug: str, reason: str, wait: float | None = None) -> Any:
        return self._call("DELETE", f"/prompts/{slug}/rollout", {"reason": reason}, wait=wait)

    def promote_rollout(self, slug: str, reason: str, wait: float | None = None) -> Any:
        body = {"reason": reason}
        return self._call("POST", f"/prompts/{slug}/rollout/promote", body, wait=wait)

    def fleet(self) -> Any:
        return self._call("GET", "/fleet")

    # -- shadow pairs ---------------------------------------------------------------------

    def _open_lines(
        self, path: str, query: dict[str, Any], timeout: float
    ) -> http.client.HTTPResponse:
        """A JSON-lines (`application/x-ndjson`) GET, open; the caller closes it."""
        url = (
            self._base
            + path
            + "?"
            + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        )
        headers = {"Accept": "application/x-ndjson"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(url, method="GET", headers=headers)
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                error = orjson.loads(exc.read())["error"]
                raise AdminError(error["message"], exc.code, error.get("param")) from None
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise AdminError(f"HTTP {exc.code} from {url}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self._base} ({reason})") from None
        return response

    def shadow_rollout(self, slug: str) -> Any:
        return self._call("GET", f"/prompts/{slug}/shadow/rollout")

    def shadow_pairs(
        self,
        slug: str,
        since: str | None = None,
        limit: int | None = None,
        rollout: str | None = None,
    ) -> list[Any]:
        """Recorded shadow pairs of ``slug``, oldest first; of one rollout when given."""
        query = {"since": since, "limit": limit, "rollout": rollout}
        with self._open_lines(f"/prompts/{slug}/shadow/pairs", query, self._timeout) as resp:
            try:
                return [orjson.loads(line) for line in resp if line.strip()]
            except (OSError, orjson.JSONDecodeError) as exc:
                raise AdminError(f"the pair stream broke off ({exc})") from None

    def follow_shadow_pairs(
        self, slug: str, since: str | None = None, idle_timeout: float = 60.0
    ) -> Iterator[Any]:
        """Shadow pairs as they are recorded (after those since ``since``), until the
        server ends the stream. The server sends an empty line every ~15 s while idle, so
        ``idle_timeout`` only fires when the connection is really dead."""
        query = {"since": since, "follow": "true"}
        with self._open_lines(f"/prompts/{slug}/shadow/pairs", query, idle_timeout) as resp:
            try:
                for line in resp:
                    if line.strip():
                        yield orjson.loads(line)
            except (OSError, orjson.JSONDecodeError) as exc:
                raise AdminError(f"the pair stream broke off ({exc})") from None
