"""`serve --workers 2` on Redis behind one port: the workers share the data port and act as
replicas (stickiness, one analyser), the admin port reports them together (/metrics summed,
/readyz over both), a killed worker is replaced while the other keeps answering, SIGTERM
drains them all; and what cannot be correct is refused at start (several workers on the
embedded store, a second `serve` on an embedded store already served)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry

from proxy.evals.suite import load_suite_file
from proxy.pipeline.choose import bucket
from proxy.prompt_key import PromptKey
from proxy.workers.supervisor import READY, Supervisor, SupervisorMetrics, worker_command
from tests.processes import (
    ADMIN_ENV,
    ADMIN_TOKEN,
    CHAT,
    STICKY_HEADER,
    ProxyProc,
    admin,
    free_port,
    proxy,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKERS = "server:\n  workers: 2\n"
ANALYSED = WORKERS + "analysis:\n  lease_seconds: 3\n  flush_seconds: 0.5\n"
POLICY: dict[str, Any] = {
    "interval": 1,
    "min_samples": 3,
    "failure_limit": 1000,
    "steps": [],
    "thresholds": {
        "error_rate_increase": 0.5,
        "p95_latency_ratio": 100,
        "p95_ttft_ratio": None,
        "length_finish_increase": None,
        "answer_length_drift": None,
    },
}
REQUESTS = re.compile(
    r'^promptproxy_requests_total\{[^}]*route="chat.completions"[^}]*\} (\S+)$', re.M
)


def sample(text: str, name: str, labels: str = "") -> float | None:
    """The value of ``name{labels}`` in a /metrics text (labels as written there)."""
    series = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def chat_requests(text: str) -> float:
    return sum(float(value) for value in REQUESTS.findall(text))


@pytest.fixture(scope="module")
def workers(procs_dir: Path, sim_url: str, redis_server: RedisServer) -> Iterator[ProxyProc]:
    with proxy(procs_dir, sim_url, ANALYSED, store=redis_server.url, env=ADMIN_ENV) as proc:
        yield proc


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def readiness(proc: ProxyProc) -> tuple[int, dict[str, Any]]:
    status, text = await get(f"{proc.admin_url}/readyz")
    body: dict[str, Any] = orjson.loads(text)
    return status, body


async def worker_metrics(admin_path: str) -> str:
    """One worker's own /metrics, on its private admin socket."""
    connector = aiohttp.UnixConnector(path=admin_path)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://worker/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


async def per_worker(proc: ProxyProc) -> list[str]:
    _, ready = await readiness(proc)
    return [await worker_metrics(w["admin"]) for w in ready["workers"]]


async def until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, f"{what}: not within {limit} s"
        await asyncio.sleep(0.05)


def fresh_connections() -> aiohttp.ClientSession:
    """A new connection per request, so the kernel hands each to whichever worker accepts."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
    )


async def chat(session: aiohttp.ClientSession, proc: ProxyProc) -> int:
    async with session.post(f"{proc.url}/chat/completions", json=CHAT) as resp:
        await resp.read()
        return resp.status


async def seed(proc: ProxyProc, slug: str) -> None:
    for text in ("stable prompt", "candidate prompt"):
        status, _ = await admin(proc, "POST", f"/prompts/{slug}/versions", {"template": text})
        assert status == 201
    status, _ = await admin(proc, "POST", f"/prompts/{slug}/promote", {"version": 1})
    assert status == 200


async def test_both_workers_serve_and_the_admin_port_sums_their_counts(
    workers: ProxyProc,
) -> None:
    status, ready = await readiness(workers)
    assert status == 200, ready
    assert [w["status_code"] for w in ready["workers"]] == [200, 200]
    assert len({w["pid"] for w in ready["workers"]}) == 2
    before = chat_requests((await get(f"{workers.admin_url}/metrics"))[1])
    sent = 0

    async def both_served() -> bool:
        nonlocal sent
        async with fresh_connections() as session:
            for _ in range(10):
                assert await chat(session, workers) == 200
                sent += 1
        counts = [chat_requests(text) for text in await per_worker(workers)]
        return all(count > 0 for count in counts)

    # Which worker accepts a connection is the kernel's choice: send until both did.
    await until(both_served, 30, "requests on both workers")
    counts = [chat_requests(text) for text in await per_worker(workers)]
    merged = (await get(f"{workers.admin_url}/metrics"))[1]
    assert chat_requests(merged) - before == sent
    assert sum(counts) == chat_requests(merged)
    await until(lambda: _ready_workers(workers, 2), 10, "both workers ready in the gauge")
    assert sample(merged, "promptproxy_registry_up") == 1
    # Each worker is a replica on the fleet board.
    status, fleet = await admin(workers, "GET", "/fleet")
    assert status == 200, fleet
    pids = {w["pid"] for w in ready["workers"]}
    assert pids <= {entry["pid"] for entry in fleet["data"] if entry["live"]}


async def test_admin_calls_pass_through_the_front_intact(workers: ProxyProc) -> None:
    """Bodies, statuses, headers and error answers, as one worker gives them."""
    status, created = await admin(workers, "POST", "/prompts/front/versions", {"template": "x"})
    assert (status, created["version"]["version"]) == (201, 1)
    status, missing = await admin(workers, "GET", "/prompts/no-such-prompt")
    assert status == 404
    assert missing["error"]["type"] == "invalid_request_error"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{workers.admin_url}/admin/v1/prompts/front?x=1") as resp,
    ):
        assert resp.status == 401  # the worker's own check: no token sent
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "x-promptproxy-request-id" in resp.headers


async def test_a_caller_keeps_its_arm_whichever_worker_answers(workers: ProxyProc) -> None:
    await seed(workers, "sticky-w")
    body = {"candidate": 2, "mode": "canary", "percent": 30, "sticky": f"header:{STICKY_HEADER}"}
    status, rollout = await admin(workers, "PUT", "/prompts/sticky-w/rollout", body)
    assert status == 201, rollout
    users = [f"user-{i}" for i in range(60)]
    want = {
        u: "canary:2" if bucket(PromptKey("sticky-w"), rollout["id"], u) < 3000 else "stable:1"
        for u in users
    }
    assert 5 < list(want.values()).count("canary:2") < 55

    async def arms() -> dict[str, str]:
        got = {}
        async with fresh_connections() as session:
            for user in users:
                async with session.post(
                    f"{workers.url.removesuffix('/v1')}/p/sticky-w/v1/chat/completions",
                    json=CHAT,
                    headers={STICKY_HEADER: user},
                ) as resp:
                    await resp.read()
                    got[user] = (
                        f"{resp.headers['x-prompt-arm']}:{resp.headers['x-prompt-version']}"
                        if resp.status == 200
                        else f"status:{resp.status}"
                    )
        return got

    # The other worker follows the rollout within its usual second.
    async def settled() -> bool:
        return await arms() == want

    await until(settled, 10, "both workers on the rollout")
    before = [chat_requests(text) for text in await per_worker(workers)]

    # Every caller's arm, again and again, until both workers answered some of them.
    async def both_agree() -> bool:
        assert await arms() == want
        after = [chat_requests(text) for text in await per_worker(workers)]
        return all(a > b for a, b in zip(after, before, strict=True))

    await until(both_agree, 30, "answers from both workers")


async def test_one_worker_analyses_the_rollout(workers: ProxyProc) -> None:
    await seed(workers, "analysed-w")
    body = {"candidate": 2, "mode": "canary", "percent": 50, "analysis": POLICY}
    status, rollout = await admin(workers, "PUT", "/prompts/analysed-w/rollout", body)
    assert status == 201, rollout
    labels = 'slug="analysed-w"'

    async def leaders() -> list[float]:
        return [
            sample(text, "promptproxy_analysis_leader", labels) or 0.0
            for text in await per_worker(workers)
        ]

    async def led() -> bool:
        assert sum(await leaders()) <= 1, "two workers lead"
        return sum(await leaders()) == 1

    await until(led, 10, "a leader")
    _, ready = await readiness(workers)
    pids = [w["pid"] for w in ready["workers"]]

    async def verdicts() -> bool:
        async with fresh_connections() as session:
            for _ in range(10):
                async with session.post(
                    f"{workers.url.removesuffix('/v1')}/p/analysed-w/v1/chat/completions",
                    json=CHAT,
                ) as resp:
                    await resp.read()
        assert sorted(await leaders()) == [0.0, 1.0]
        status, view = await admin(workers, "GET", "/prompts/analysed-w/rollout")
        assert status == 200
        return len(view["analysis_state"]["verdicts"]) >= 2

    await until(verdicts, 20, "two verdicts")
    _, view = await admin(workers, "GET", "/prompts/analysed-w/rollout")
    actors = {int(v["actor"].split(":")[-2]) for v in view["analysis_state"]["verdicts"]}
    [leader] = [pid for pid, g in zip(pids, await leaders(), strict=True) if g == 1.0]
    assert actors == {leader}
    merged = (await get(f"{workers.admin_url}/metrics"))[1]
    assert sample(merged, "promptproxy_analysis_leader", labels) == 1.0


def test_an_eval_run_reaches_its_own_worker(workers: ProxyProc, tmp_path: Path) -> None:
    """An eval run calls the data plane with its process's eval key: every sample must be
    answered by a worker that knows it (with the kernel choosing among the workers of
    the shared port, about half were a 403 invalid_eval_key)."""
    folder = tmp_path / "prompts"
    shutil.copytree(REPO / "config" / "prompts", folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env |= {"PROMPTPROXY_ADMIN_URL": workers.admin_url, "PROMPTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert cli("prompts", "push", str(folder)).returncode == 0
    done = cli(
        "-o",
        "json",
        "eval",
        "classify-ticket",
        "--candidate",
        "1",
        "--baseline",
        "none",
        "--prompts",
        str(folder),
    )
    # The simulator is no classifier: the run may not pass, but every sample is answered.
    assert done.returncode in (0, 3), done.stderr
    run = orjson.loads(done.stdout)
    statuses = [
        sample["status"] for case in run["detail"]["cases"] for sample in case["sides"]["candidate"]
    ]
    suite = load_suite_file(folder / "classify-ticket.eval.yaml")
    assert len(statuses) == sum(
        suite.samples if c.samples is None else c.samples for c in suite.cases
    )
    assert set(statuses) == {200}, statuses


@dataclass
class Traffic:
    """Clients sending one request at a time each, on a new connection per request."""

    ok: int = 0
    failures: list[BaseException] = field(default_factory=list)


async def keep_sending(proc: ProxyProc, traffic: Traffic, stop: asyncio.Event) -> None:
    async with fresh_connections() as session:
        while not stop.is_set():
            try:
                status = await chat(session, proc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                traffic.failures.append(exc)
                continue
            assert status == 200, status
            traffic.ok += 1


def refused(exc: BaseException) -> bool:
    return (
        isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno == errno.ECONNREFUSED
    )


async def test_a_killed_worker_is_replaced_while_the_other_answers(workers: ProxyProc) -> None:
    clients = 4
    _, ready = await readiness(workers)
    victim = ready["workers"][0]["pid"]
    restarts = sample(
        (await get(f"{workers.admin_url}/metrics"))[1], "promptproxy_worker_restarts_total"
    )
    traffic = Traffic()
    stop = asyncio.Event()
    senders = [asyncio.create_task(keep_sending(workers, traffic, stop)) for _ in range(clients)]
    try:
        await until(lambda: _at_least(traffic, 50), 20, "traffic before the kill")
        counted = chat_requests((await get(f"{workers.admin_url}/metrics"))[1])
        os.kill(victim, signal.SIGKILL)
        answered_at_kill = traffic.ok

        async def replaced() -> bool:
            status, body = await readiness(workers)
            pids = [w["pid"] for w in body["workers"]]
            return status == 200 and victim not in pids and None not in pids

        await until(replaced, 30, "a new worker, ready")
        await until(lambda: _at_least(traffic, answered_at_kill + 100), 20, "traffic after")
    finally:
        stop.set()
        await asyncio.gather(*senders)
    # The supervisor marks a worker ready when its own poll (every 0.1 s) sees it, which
    # can come a moment after /readyz, which asks the workers, did.
    await until(lambda: _ready_workers(workers, 2), 10, "both workers ready in the gauge")
    merged = (await get(f"{workers.admin_url}/metrics"))[1]
    assert sample(merged, "promptproxy_worker_restarts_total") == (restarts or 0) + 1
    # The dead worker's counts stay in the sum: a counter never goes down.
    assert chat_requests(merged) >= counted + traffic.ok - answered_at_kill
    # What a caller notices: never a refused connection (the port stays bound, the queue
    # stays with the other worker); at most the requests the killed worker had accepted,
    # one per client as each sends one at a time.
    print(f"\nkill -9 of a worker: {traffic.ok} answered, failed: {traffic.failures}")
    assert not [exc for exc in traffic.failures if refused(exc)], traffic.failures
    assert len(traffic.failures) <= clients, traffic.failures


async def _ready_workers(proc: ProxyProc, count: int) -> bool:
    merged = (await get(f"{proc.admin_url}/metrics"))[1]
    return sample(merged, "promptproxy_workers", 'state="ready"') == count


async def _at_least(traffic: Traffic, count: int) -> bool:
    return traffic.ok >= count


def test_a_worker_that_cannot_start_ends_the_supervisor_with_its_error(
    redis_server: RedisServer,
) -> None:
    closed = free_port()  # nothing listens there: each worker's start-up check fails
    done = serve(
        "--workers",
        "2",
        "--upstream",
        f"http://127.0.0.1:{closed}/v1",
        "--store",
        redis_server.url,
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("promptproxy: ")]
    assert errors
    assert all(f"upstream http://127.0.0.1:{closed}/v1 is unreachable" in e for e in errors)
    assert "exited with 1 at start (its error is above): stopping" in done.stderr


def test_sigterm_drains_every_worker_and_exits_0(
    procs_dir: Path, sim_url: str, redis_server: RedisServer
) -> None:
    with proxy(procs_dir, sim_url, WORKERS, store=redis_server.url) as proc:
        _, ready = asyncio.run(readiness(proc))
        pids = [w["pid"] for w in ready["workers"]]
        # Only the supervisor is signalled: it tells the workers.
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        log = proc.log_path.read_text()
        assert log.count("shutting down: readiness is now 503") == 2
        assert "supervisor exiting with 0" in log


async def test_once_stopping_new_connections_are_refused_while_requests_drain(
    procs_dir: Path, sim_url: str, redis_server: RedisServer
) -> None:
    """As one process does: its listener closes at SIGTERM, so a client (or a balancer)
    is refused at once and goes elsewhere, while the requests in flight finish."""
    config = WORKERS + "  shutdown_grace_seconds: 30\n"
    with proxy(procs_dir, sim_url, config, store=redis_server.url) as proc:
        port = int(proc.url.rsplit(":", 1)[1].split("/")[0])
        slow_headers = {"x-sim-first-byte-ms": "12000"}

        async def slow() -> int:
            async with (
                fresh_connections() as session,
                session.post(
                    f"{proc.url}/chat/completions",
                    json=CHAT,
                    headers=slow_headers,
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as resp,
            ):
                await resp.read()
                return resp.status

        in_flight = asyncio.create_task(slow())

        async def accepted() -> bool:
            text = (await get(f"{proc.admin_url}/metrics"))[1]
            return (sample(text, "promptproxy_requests_in_flight") or 0) >= 1

        await until(accepted, 15, "the slow request in a worker")
        proc.popen.send_signal(signal.SIGTERM)

        async def refused_now() -> bool:
            assert not in_flight.done(), "new connections were taken until the drain ended"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return True
            writer.close()
            return False

        await until(refused_now, 30, "a refused connection")
        assert await in_flight == 200
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0


async def test_a_stop_while_the_workers_start_is_a_clean_exit(tmp_path: Path) -> None:
    """SIGTERM (or Ctrl-C) moments after `serve --workers 2` started, before the workers
    installed their handlers: they die of the signal having served nothing, and the
    supervisor exits 0, not 1 with "workers exited with -15, -15 while stopping". The
    workers here are interpreters that never get that far."""
    stop = asyncio.Event()
    with socket.create_server(("127.0.0.1", 0)) as data:
        supervisor = Supervisor(
            command=[sys.executable, "-c", "import time; time.sleep(60)"],
            count=2,
            data=data,
            runtime_dir=tmp_path,
            metrics=SupervisorMetrics(CollectorRegistry()),
            stop=stop,
            grace=5.0,
        )
        running = asyncio.create_task(supervisor.run())

        async def started() -> bool:
            return all(slot.pid is not None for slot in supervisor.slots)

        await until(started, 10, "both workers started")
        stop.set()
        assert await asyncio.wait_for(running, 30) == 0
        await supervisor.close()
    assert [slot.pid for slot in supervisor.slots] == [None, None]  # exited and reaped


async def test_a_wedged_worker_is_killed_and_replaced(
    tmp_path: Path, sim_url: str, redis_server: RedisServer
) -> None:
    """A worker that is alive but no longer answers (here: stopped with SIGSTOP, as a loop
    stuck in a handler would be) is killed and started again: the supervisor's /healthz,
    which a liveness probe asks, stays 200 whatever its workers do."""
    stop = asyncio.Event()
    metrics = SupervisorMetrics(CollectorRegistry())
    args = ["--host", "127.0.0.1", "--upstream", sim_url, "--store", redis_server.url]
    with socket.create_server(("127.0.0.1", 0)) as data:
        supervisor = Supervisor(
            command=worker_command(args),
            count=2,
            data=data,
            runtime_dir=tmp_path,
            metrics=metrics,
            stop=stop,
            grace=5.0,
            liveness_limit=3.0,
        )
        running = asyncio.create_task(supervisor.run())
        victim = None
        try:

            async def all_ready() -> bool:
                assert not running.done(), running
                return all(slot.state == READY for slot in supervisor.slots)

            await until(all_ready, 30, "both workers ready")
            victim = supervisor.slots[0].pid
            assert victim is not None
            os.kill(victim, signal.SIGSTOP)

            async def replaced() -> bool:
                slot = supervisor.slots[0]
                return slot.pid not in (None, victim) and slot.state == READY

            await until(replaced, 30, "the stopped worker replaced")
            assert metrics.registry.get_sample_value("promptproxy_worker_restarts_total") == 1
        finally:
            stop.set()
            status = await asyncio.wait_for(running, 30)
            await supervisor.close()
            if victim is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
    assert status == 0


async def test_a_killed_supervisor_leaves_no_worker_and_no_private_dir(
    procs_dir: Path, sim_url: str, redis_server: RedisServer
) -> None:
    """SIGKILL of the supervisor (the OOM killer's choice, say): the workers see their
    lifeline close, drain and exit, and remove the private directory it cannot."""
    with proxy(procs_dir, sim_url, WORKERS, store=redis_server.url) as proc:
        _, ready = await readiness(proc)
        pids = [w["pid"] for w in ready["workers"]]
        private = Path(ready["workers"][0]["admin"]).parent
        assert private.is_dir()
        proc.popen.kill()  # the supervisor only, not its process group
        await asyncio.to_thread(proc.popen.wait, 10)

        async def workers_gone() -> bool:
            return await asyncio.to_thread(_all_exited, pids)

        await until(workers_gone, 30, "the workers' exit")
        assert not await asyncio.to_thread(private.exists)


def _all_exited(pids: list[int]) -> bool:
    return all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in pids)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    return True


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_taken_admin_port_is_one_line(redis_server: RedisServer, sim_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = serve(
            "--workers",
            "2",
            "--upstream",
            sim_url,
            "--store",
            redis_server.url,
            "--port",
            str(free_port()),
            "--admin-port",
            str(port),
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"promptproxy: cannot listen on 127.0.0.1:{port} for the admin "
        "endpoints (server.admin_port): the port is already in use (another promptproxy, "
        "or another program)"
    ]


@pytest.mark.parametrize("given", ["0", "-1", "two", "1.5", "300"])
def test_a_bad_worker_count_is_one_clear_line(given: str) -> None:
    done = serve(f"--workers={given}", "--store", "redis://127.0.0.1:1/0", "--port", "0")
    assert done.returncode == 2
    shown = given if given.isdigit() else repr(given)
    assert done.stderr.splitlines() == [
        "invalid configuration:",
        f"  - server.workers: must be a whole number from 1 to 256, or auto; got {shown}",
    ]


def test_several_workers_with_the_in_process_simulator_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("simulator:\n  enabled: true\n")
    done = serve("--workers", "2", "--config", str(config), "--store", "redis://127.0.0.1:1/0")
    assert done.returncode == 2
    problem = done.stderr.strip().splitlines()[-1]
    assert problem.startswith("  - simulator.enabled: each worker would start")
    assert "promptproxy simulate" in problem


def test_several_workers_on_the_embedded_store_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "registry.db"
    done = serve("--workers", "2", "--store", f"embedded:{store}", "--port", str(free_port()))
    assert done.returncode == 2
    problem = done.stderr.strip().splitlines()[-1]
    assert problem.startswith("  - server.workers: 2 worker processes")
    assert "redis://" in problem
    assert "postgresql://" in problem
    assert not store.exists()  # refused before anything started


def test_a_second_serve_on_a_served_embedded_store_is_refused(
    procs_dir: Path, sim_url: str, tmp_path: Path
) -> None:
    store = f"embedded:{tmp_path / 'registry.db'}"
    with proxy(procs_dir, sim_url, store=store) as first:
        done = serve(
            "--upstream",
            sim_url,
            "--store",
            store,
            "--port",
            str(free_port()),
            "--admin-port",
            str(free_port()),
        )
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f"promptproxy: the embedded store {tmp_path / 'registry.db'} is in use by another "
            f"promptproxy (pid {first.pid}): it serves one process only; stop that one, or "
            "point registry.store at redis://... or postgresql://... to run several"
        )
        status, _ = asyncio.run(get(f"{first.admin_url}/readyz"))
        assert status == 200  # the first one is untouched
