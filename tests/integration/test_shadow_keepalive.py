"""Reliability row S2, the NGINX mirror trap: one keep-alive connection, 1,000 sequential
requests under a 100 % shadow rollout whose upstream takes 10 s to answer. With ``mirror``,
NGINX holds the client connection's next request until the mirror subrequest of the last
one finishes, so each request would cost the shadow's 10 s. The proxy must answer each
request as if there were no shadow. (With the default ``shadow.max_in_flight`` of 64, the
first 64 shadows go out and stay in flight for 10 s; the rest are dropped and counted, as
designed: the point here is that none of that reaches the caller's connection.)

Checked: the same 1,000 requests before (no rollout) and during a 100 % shadow rollout go
over one TCP connection that is never closed, all answer 200 with the same bytes, shadows
were really sent and were still in flight when the primaries had all finished, and no
request waited for its shadow (none took as long as the shadow upstream's 10 s delay; a
trapped run would take 10 s on its very first request). The figures (latency percentiles
with and without the shadow) are printed as one ``FIGURES {json}`` line; they are measured,
not asserted (``python -m loadtest.fault_rows`` repeats the run).
"""

from __future__ import annotations

import http.client
import re
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.processes import ProxyProc, proxy, simulator

pytestmark = pytest.mark.integration

TOKEN = "integration-admin-token"
REQUESTS = 1000
SHADOW_DELAY_S = 10.0
SLUG = "keepalive"


@pytest.fixture(scope="module")
def slow_shadow_sim(procs_dir: Path) -> Iterator[str]:
    delay_ms = str(int(SHADOW_DELAY_S * 1000))
    with simulator(procs_dir, "--first-byte-ms", delay_ms) as (url, _):
        yield url


def config(shadow_url: str, sink_dir: Path) -> str:
    # The shadow timeout is well above the delay, so every sent shadow stays in flight for
    # the full 10 s instead of giving up early.
    return (
        f"shadow:\n  base_url: {shadow_url}\n  timeout_seconds: 30\n  sink:\n    dir: {sink_dir}\n"
    )


def admin(replica: ProxyProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{replica.admin_url}{path}",
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, orjson.loads(resp.read())


def revision(replica: ProxyProc) -> int:
    return int(admin(replica, "GET", "/readyz")[1]["registry"]["revision"])


def until_revision(replica: ProxyProc, wanted: int) -> None:
    deadline = time.monotonic() + 10
    while revision(replica) < wanted:
        assert time.monotonic() < deadline, f"setup: revision {wanted} never served"
        time.sleep(0.02)


def metric(replica: ProxyProc, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"{replica.admin_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        float(m.group(2))
        for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M)
        if labels in (m.group(1) or "")
    )


def body(i: int) -> bytes:
    # A third streamed, as in the guide's baseline mix.
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"question {i}"}],
            "stream": i % 3 == 0,
        }
    )


def sequential(replica: ProxyProc) -> tuple[list[float], list[bytes], float]:
    """REQUESTS requests one after the other on one connection: (latencies, bodies, total)."""
    host, port = replica.url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    latencies: list[float] = []
    bodies: list[bytes] = []
    try:
        conn.connect()
        sock = conn.sock
        local = sock.getsockname()
        began = time.perf_counter()
        for i in range(REQUESTS):
            started = time.perf_counter()
            conn.request(
                "POST",
                f"/p/{SLUG}/v1/chat/completions",
                body=body(i),
                headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
            )
            resp = conn.getresponse()
            data = resp.read()
            latencies.append(time.perf_counter() - started)
            assert resp.status == 200, (i, data[:300])
            # Checked as it happens, so a trapped proxy fails on its first request with this
            # message rather than on the test's timeout. A trapped proxy waits >= 10 s.
            assert latencies[-1] < SHADOW_DELAY_S, f"request {i} waited {latencies[-1]:.1f}s"
            assert not resp.will_close, f"the proxy closed the keep-alive connection at {i}"
            # http.client would silently reconnect; the same socket proves it never had to.
            assert conn.sock is sock, f"reconnected at {i}"
            assert sock.getsockname() == local
            bodies.append(data)
        total = time.perf_counter() - began
    finally:
        conn.close()
    return latencies, bodies, total


def summary(latencies: list[float], total: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "total_s": round(total, 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "p50_ms": round(cuts[49], 3),
        "p90_ms": round(cuts[89], 3),
        "p99_ms": round(cuts[98], 3),
        "max_ms": round(ms[-1], 3),
    }


def test_one_keepalive_connection_never_waits_for_a_slow_shadow(
    procs_dir: Path, sim_url: str, slow_shadow_sim: str, tmp_path: Path
) -> None:
    with proxy(
        procs_dir,
        sim_url,
        config(slow_shadow_sim, tmp_path / "pairs"),
        env={"PROMPTPROXY_ADMIN_TOKEN": TOKEN},
    ) as replica:
        known = revision(replica)
        for text in ("You are the stable prompt.", "You are the candidate prompt."):
            status, answer = admin(
                replica, "POST", f"/admin/v1/prompts/{SLUG}/versions", {"template": text}
            )
            assert status == 201, answer
        status, _ = admin(replica, "POST", f"/admin/v1/prompts/{SLUG}/promote", {"version": 1})
        assert status == 200
        until_revision(replica, known + 3)

        plain, plain_bodies, plain_total = sequential(replica)

        rollout = {"candidate": 2, "mode": "shadow", "percent": 100, "sticky": "none"}
        status, answer = admin(replica, "PUT", f"/admin/v1/prompts/{SLUG}/rollout", rollout)
        assert status == 201, answer
        until_revision(replica, known + 4)

        shadowed, shadowed_bodies, shadowed_total = sequential(replica)
        in_flight_after = metric(replica, "promptproxy_shadow_in_flight")
        sent = metric(replica, "promptproxy_shadow_requests_total", 'outcome="sent"')
        completed = metric(replica, "promptproxy_shadow_requests_total", 'outcome="completed"')
        dropped = metric(replica, "promptproxy_shadow_dropped_total")

    figures = {
        "row": "S2",
        "requests": REQUESTS,
        "shadow_delay_s": SHADOW_DELAY_S,
        "shadow_off": summary(plain, plain_total),
        "shadow_on": summary(shadowed, shadowed_total),
        "shadows_sent": sent,
        "shadows_completed_by_the_end": completed,
        "shadows_dropped": dropped,
        "shadows_in_flight_at_the_end": in_flight_after,
    }
    print("\nFIGURES " + orjson.dumps(figures).decode())

    assert shadowed_bodies == plain_bodies, "shadowing changed what the caller received"
    # The shadows were real and outlived the primaries: the primaries did not wait for them.
    assert sent > 0
    assert in_flight_after > 0
