"""`promptproxy registry export|import|status` against real proxy processes: a backup of
one registry loaded into a new, empty one serves the same prompts with the same numbers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.processes import ProxyProc, proxy

pytestmark = pytest.mark.integration

TOKEN = "registry-admin-token"
REPO = Path(__file__).resolve().parents[2]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def cli(proc: ProxyProc, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTPROXY_")}
    env["PROMPTPROXY_ADMIN_URL"] = proc.admin_url
    env["PROMPTPROXY_ADMIN_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, env=env, timeout=30
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


async def served(proc: ProxyProc, slug: str) -> str | None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proc.url.removesuffix('/v1')}/p/{slug}/v1/chat/completions", json=CHAT
        ) as r,
    ):
        await r.read()
        return r.headers.get("x-prompt-version") if r.status == 200 else None


async def test_export_then_import_into_a_new_registry(
    procs_dir: Path, sim_url: str, tmp_path: Path
) -> None:
    env = {"PROMPTPROXY_ADMIN_TOKEN": TOKEN}
    folder = tmp_path / "prompts"
    shutil.copytree(REPO / "config" / "prompts", folder)
    backup = tmp_path / "registry.json"
    with proxy(procs_dir, sim_url, env=env) as source:
        ok(cli(source, "prompts", "push", str(folder)))
        ok(cli(source, "prompts", "promote", "summarize", "1"))
        (folder / "summarize.md").write_text("---\nauthor: ops\n---\nSummarize tersely.\n")
        ok(cli(source, "prompts", "push", str(folder / "summarize.md")))
        ok(cli(source, "prompts", "promote", "summarize", "2"))
        assert "exported 5 versions" in ok(cli(source, "registry", "export", str(backup)))
        status: Any = orjson.loads(ok(cli(source, "registry", "-o", "json", "status")))
        assert status["state"] == "ok"

    image = orjson.loads(backup.read_bytes())
    assert image["format"] == "promptproxy-registry/1"
    assert [e["action"] for e in image["audit"]].count("promote") == 2

    with proxy(procs_dir, sim_url, env=env) as target:
        out = ok(cli(target, "registry", "import", str(backup), "--reason", "drill"))
        assert "restored 4 prompts (5 versions)" in out
        assert "unchanged" in ok(cli(target, "registry", "import", str(backup)))
        versions: Any = orjson.loads(ok(cli(target, "prompts", "-o", "json", "show", "summarize")))
        assert [v["status"] for v in versions["data"]] == ["deprecated", "prod"]
        # The rollback history came along with the audit log.
        ok(cli(target, "prompts", "rollback", "summarize"))
        refused = cli(target, "registry", "import", str(backup))
        assert refused.returncode == 1
        assert "already holds" in refused.stderr
        assert "--overwrite" in refused.stderr
        # An embedded file keeps its history even when asked to overwrite it.
        refused = cli(target, "registry", "import", str(backup), "--overwrite")
        assert refused.returncode == 1
        assert "move the file away" in refused.stderr
