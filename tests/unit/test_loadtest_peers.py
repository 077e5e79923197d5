"""The benchmark's peers (nginx, LiteLLM) and wrk: generated configuration and scripts, the
parsing of wrk's result, and target selection. None of the tools is needed; one test runs
the generated Lua script through wrk when wrk is installed."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import yaml
from aiohttp import web

from loadtest import aggregate, bench, peers, report
from loadtest.loadgen import chat_request
from loadtest.measure import MIN_BUDGET_REQUESTS, budget_requests
from loadtest.targets import LITELLM, NGINX, TARGETS
from loadtest.wrk import RESULT_MARK, Wrk, lua_script, lua_string, parse_output

# --- wrk --------------------------------------------------------------------------------


def test_lua_string_escapes_quotes_backslashes_controls_and_non_ascii() -> None:
    assert lua_string('a"b\\c') == '"a\\"b\\\\c"'
    assert lua_string("line\r\n") == '"line\\013\\010"'
    assert lua_string("é") == '"\\195\\169"'


def test_the_script_carries_the_loadgen_request_and_its_checks() -> None:
    spec = chat_request(
        "http://127.0.0.1:1/v1/chat/completions",
        stream=True,
        extra_headers={"x-sim-chunks": "20"},
        expected_events=23,
    )
    script = lua_script(spec, count=3000, max_errors=300)
    assert f"wrk.body = {lua_string(spec.body.decode())}" in script
    for name, value in spec.headers.items():
        assert f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" in script
    assert "local STREAM = true" in script
    assert "local EXPECTED_EVENTS = 23" in script
    assert "local COUNT = 3000" in script
    assert "local MAX_ERRORS = 300" in script


def test_a_call_script_checks_no_event_count() -> None:
    spec = chat_request("http://127.0.0.1:1/v1/chat/completions", stream=False)
    script = lua_script(spec, count=10, max_errors=100)
    assert "local STREAM = false" in script
    assert "local EXPECTED_EVENTS = nil" in script


def _result_line(**changes: object) -> str:
    data: dict[str, object] = {
        "ok": 3000,
        "invalid": 0,
        "elapsed_s": 1.5,
        "duration_us": 9_000_000,
        "responses": 3000,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "latency_us": {"p50": 4100.0, "p90": 6000.0, "p99": 9800.0, "mean": 4200.0, "max": 31000.0},
        "stopped": "",
        "samples": "",
    }
    data.update(changes)
    return RESULT_MARK + orjson.dumps(data).decode()


def test_parse_output_reads_counts_time_and_percentiles_in_ms() -> None:
    stdout = "Running 180s test @ http://x\n  1 threads\nwrk-phase-done\n" + _result_line()
    result = parse_output(stdout, requested=3000)
    assert (result.ok, result.errors, result.stopped_early) == (3000, 0, None)
    assert result.elapsed_s == 1.5
    assert result.rps == 2000
    assert result.latency_ms == {"p50": 4.1, "p90": 6.0, "p99": 9.8, "mean": 4.2, "max": 31.0}
    # wrk reads whole responses: no time to first byte, rather than a zero.
    assert result.ttfbs_s == []


def test_parse_output_when_the_time_bound_ended_the_phase() -> None:
    line = _result_line(ok=120, responses=120, elapsed_s=-1, duration_us=180_000_000)
    result = parse_output(line, requested=3000)
    assert result.stopped_early == "deadline"
    assert result.elapsed_s == 180.0


def test_parse_output_counts_invalid_answers_and_socket_errors() -> None:
    line = _result_line(
        ok=10,
        invalid=100,
        stopped="100 errors",
        samples="status 500: oops\n7 SSE events, expected 23\n",
        socket_errors={"connect": 0, "read": 2, "write": 0, "timeout": 1},
    )
    result = parse_output(line, requested=3000)
    assert result.errors == 103
    assert result.stopped_early == "100 errors"
    assert result.error_samples == [
        "status 500: oops",
        "7 SSE events, expected 23",
        "wrk: 2 read errors",
        "wrk: 1 timeout errors",
    ]


def test_parse_output_without_answers_has_no_percentiles() -> None:
    result = parse_output(_result_line(ok=0, responses=0, elapsed_s=-1), requested=5)
    assert result.latency_ms is None


def test_parse_output_without_a_result_line_says_so() -> None:
    with pytest.raises(ValueError, match="wrk-result"):
        parse_output("Running 10s test\nunable to connect", requested=5)


# --- nginx ------------------------------------------------------------------------------


def test_nginx_version_is_read_from_its_banner() -> None:
    assert peers.parse_nginx_version("nginx version: nginx/1.22.1\n") == "1.22.1"
    assert peers.parse_nginx_version("something else") is None


def test_nginx_config_is_one_foreground_worker_with_everything_in_scratch(tmp_path: Path) -> None:
    text = peers.nginx_config(
        port=8081, upstream_host="127.0.0.1", upstream_port=8090, scratch=tmp_path, user=None
    )
    lines = {line.strip() for line in text.splitlines()}
    for directive in (
        "worker_processes 1;",
        "daemon off;",
        "listen 127.0.0.1:8081;",
        "server 127.0.0.1:8090;",
        "proxy_pass http://provider;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        f"pid {tmp_path}/nginx.pid;",
        f"access_log {tmp_path}/access.log;",
    ):
        assert directive in lines, directive
    assert any(line.startswith("keepalive ") for line in lines)
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert any(line.startswith(temp) and str(tmp_path) in line for line in lines), temp
    assert not any(line.startswith("user ") for line in lines)
    assert text.count("{") == text.count("}")


def test_root_keeps_nginx_workers_as_itself() -> None:
    assert peers.nginx_user(1000, 1000) is None
    assert peers.nginx_user(0, 0) == "root root"
    text = peers.nginx_config(
        port=1, upstream_host="h", upstream_port=2, scratch=Path("/s"), user="root root"
    )
    assert "user root root;" in text.splitlines()


def test_nginx_gets_its_early_error_log_on_stderr_where_it_can() -> None:
    old = peers.nginx_command("nginx", Path("/s"), Path("/s/nginx.conf"), "1.18.0")
    new = peers.nginx_command("nginx", Path("/s"), Path("/s/nginx.conf"), "1.22.1")
    assert old == ["nginx", "-p", "/s/", "-c", "/s/nginx.conf"]
    assert new == [*old, "-e", "stderr"]


def test_a_missing_nginx_is_a_reason_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    assert "not found" in str(peers.resolve(NGINX, nginx=None, litellm_venv=None))
    assert "--nginx /nope" in str(peers.resolve(NGINX, nginx="/nope", litellm_venv=None))


# --- LiteLLM ----------------------------------------------------------------------------


def test_litellm_config_maps_the_bench_model_to_the_simulator() -> None:
    settings = peers.litellm_config(
        model=peers.bench_model(), api_base="http://127.0.0.1:8090/v1", master_key="sk-x"
    )
    loaded = yaml.safe_load(yaml.safe_dump(settings, sort_keys=False))
    (entry,) = loaded["model_list"]
    assert entry["model_name"] == "gpt-4o-mini"
    assert entry["litellm_params"]["model"] == "openai/gpt-4o-mini"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:8090/v1"
    assert entry["litellm_params"]["api_key"]
    assert loaded["general_settings"] == {
        "master_key": "sk-x",
        "forward_client_headers_to_llm_api": True,
    }


def test_the_load_generator_token_is_litellm_master_key() -> None:
    token = peers.bench_token()
    assert token.startswith("sk-")
    spec = chat_request("http://x/v1/chat/completions", stream=False)
    assert spec.headers["Authorization"] == f"Bearer {token}"


def test_litellm_gets_a_short_environment_that_fetches_nothing() -> None:
    env = peers.litellm_env(
        {"PATH": "/bin", "HOME": "/h", "DATABASE_URL": "postgres://x", "OPENAI_API_KEY": "k"}
    )
    assert env["PATH"] == "/bin"
    assert "DATABASE_URL" not in env
    assert "OPENAI_API_KEY" not in env
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_litellm_without_a_venv_is_skipped_with_the_reason(tmp_path: Path) -> None:
    assert "--litellm-venv" in str(peers.resolve(LITELLM, nginx=None, litellm_venv=None))
    assert "bin/litellm" in str(peers.resolve(LITELLM, nginx=None, litellm_venv=tmp_path))


def test_a_slow_target_measures_its_warm_up_rate_times_the_budget() -> None:
    assert budget_requests(12000, warm_rps=61.0, budget_s=20) == 1220
    assert budget_requests(500, warm_rps=61.0, budget_s=20) == 500
    assert budget_requests(12000, warm_rps=2.0, budget_s=20) == MIN_BUDGET_REQUESTS
    assert budget_requests(12000, warm_rps=0.0, budget_s=20) == MIN_BUDGET_REQUESTS


# --- selection and report ---------------------------------------------------------------


def test_without_the_new_flags_the_targets_are_as_before() -> None:
    args = bench.parse_args([])
    assert args.targets == list(TARGETS)
    assert args.loadgen == "python"
    assert bench._tool_facts(args) == {}


def test_peers_join_by_flag_or_by_name() -> None:
    assert bench.parse_args(["--peers"]).targets == [*TARGETS, NGINX, LITELLM]
    assert bench.parse_args(["--litellm-venv", "/v"]).targets[-1] == LITELLM
    assert bench.parse_args(["--nginx", "/n"]).targets[-1] == NGINX
    named = bench.parse_args(["--targets", "direct", "litellm", "promptproxy"])
    assert named.targets == ["direct", "promptproxy", LITELLM]


def test_missing_tools_are_dropped_with_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    args = bench.parse_args(["--targets", "direct", "promptproxy", "--peers", "--loadgen", "wrk"])
    bench.resolve_tools(args)
    assert args.targets == ["direct", "promptproxy"]
    assert set(args.skipped_peers) == {NGINX, LITELLM}
    assert args.wrk_binary is None
    err = capsys.readouterr().err
    assert "nginx: skipped" in err
    assert "litellm: skipped" in err
    assert "using the Python load generator" in err


def _cell(target: str, cpu: float | None, round_: int = 0) -> dict[str, object]:
    return {
        "scenario": "nonstream_0ms",
        "target": target,
        "round": round_,
        "rps": 100.0,
        "cpu_us_per_req": {"target": cpu},
        "added_ms": None if target == "direct" else {"p50": 0.5, "p99": 1.0},
        "peak_rss_mib": None if cpu is None else 10.0,
    }


def test_peer_comparison_puts_each_peer_against_promptproxy() -> None:
    cells = [
        _cell("direct", None),
        _cell("promptproxy", 200.0),
        _cell("nginx", 30.0),
        _cell("litellm", 10000.0),
    ]
    table = aggregate.peer_comparison(cells)["nonstream_0ms"]
    assert list(table) == ["promptproxy", "nginx", "litellm"]
    assert table["nginx"]["cpu_vs_promptproxy"] == pytest.approx(0.15)
    assert table["litellm"]["cpu_vs_promptproxy"] == pytest.approx(50.0)
    printed = report.peers_table(cells)
    assert "50.00x" in printed
    assert "0.15x" in printed


def test_budgets_are_said_in_the_output() -> None:
    runs = [
        {**_cell("litellm", 1.0, r), "request_budget": {"seconds": 20.0, "measured": n}}
        for r, n in enumerate((1217, 1190))
    ]
    budgets = aggregate.request_budgets(runs)
    assert budgets == {"litellm": {"seconds": 20.0, "measured": {"nonstream_0ms": [1217, 1190]}}}
    meta = {
        "loadgen": {"name": "wrk", "path": "/usr/bin/wrk", "version": "wrk 4.1.0"},
        "peers": {"nginx": {"path": "/usr/sbin/nginx", "version": "1.22.1", "note": "C"}},
        "skipped_targets": {"litellm": "no --litellm-venv given"},
    }
    lines = report.tool_lines(meta, budgets)
    assert any("time to first byte is not measured" in line for line in lines)
    assert "peer nginx: 1.22.1 (C)" in lines
    assert "skipped litellm: no --litellm-venv given" in lines
    assert any("~20 s" in line and "1217/1190" in line for line in lines)
    assert report.tool_lines({}, None) == []


# --- the generated script, run by wrk when it is installed ------------------------------


@pytest.fixture
async def chat_server() -> AsyncIterator[str]:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.headers.get("x-test") == "bad":
            return web.Response(status=500, text="no")
        return web.Response(body=b'{"choices": []}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}/v1/chat/completions"
    await runner.cleanup()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_wrk_sends_exactly_the_requests_asked_for(chat_server: str) -> None:
    spec = chat_request(chat_server, stream=False)
    async with Wrk(spec, clients=4, binary="wrk") as gen:
        result = await asyncio.wait_for(gen.run(50, max_seconds=20), 30)
    bad = chat_request(chat_server, stream=False, extra_headers={"x-test": "bad"})
    async with Wrk(bad, clients=4, binary="wrk") as gen:
        failed = await asyncio.wait_for(gen.run(20, max_seconds=20, max_errors=5), 30)
    assert (result.ok, result.errors, result.stopped_early) == (50, 0, None)
    assert result.elapsed_s < 10
    assert result.latency_ms is not None
    assert failed.ok == 0
    assert failed.stopped_early == "5 errors"
    assert failed.error_samples[0].startswith("status 500")
