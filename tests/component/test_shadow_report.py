"""`promptproxy shadow report` against the admin app in-process, on pairs in the file sink.

Noise pairs run stable twice; candidate pairs either come from the same generator (a copy
of stable: must pass) or answer something else (must fail).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from proxy.cli import main
from proxy.models import Route
from proxy.prompt_key import PromptKey
from proxy.services import Services
from proxy.shadow.models import ArmResult, ShadowKind
from proxy.shadow.pairs import Pair, PairMeta
from tests.component.test_shadow_cli import cli
from tests.processes import free_port
from tests.support import ADMIN, READER, Clients

SLUG = "support"


@dataclass(frozen=True, slots=True)
class AnnotatedPair(Pair):
    """A pair with the keys the runner may add (``divergence``, ``expect_json``)."""

    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**Pair.to_dict(self), **self.extra}


def stable_answer(rng: random.Random, order: int) -> str:
    """What stable says: the same facts, worded a little differently each run."""
    verb = rng.choice(["ships", "will ship", "is shipping", "leaves"])
    day = rng.choice(["on Monday", "Monday morning", "on Monday, 3 June"])
    place = rng.choice(["from our Lyon warehouse", "from the Lyon depot", "from Lyon"])
    close = rng.choice(["", " Anything else?", " Let me know if I can help further."])
    return f"Your order #{order} {verb} {day} {place}.{close}"


class Seeder:
    def __init__(self, services: Services, seed: int) -> None:
        self.services = services
        self.rng = random.Random(seed)
        self.count = 0
        #: The rollout the pairs belong to (what `shadow report --rollout` selects).
        self.rollout_id = "ro"

    def add(
        self,
        kind: ShadowKind,
        primary: ArmResult | None,
        shadow: ArmResult,
        **extra: Any,
    ) -> None:
        self.count += 1
        n = self.count
        meta = PairMeta(
            f"p{n}", PromptKey(SLUG), self.rollout_id, kind.value, f"r{n}", Route.CHAT.value, False
        )
        base = Pair.build(meta, primary, shadow, time.time() - 600 + n * 0.01)
        if extra:
            values = {f.name: getattr(base, f.name) for f in fields(Pair)}
            base = AnnotatedPair(**values, extra=extra)
        self.services.shadow.sink.add(base)

    def answer(self, version: int, text: str, finish: str = "stop") -> ArmResult:
        return ArmResult(version=version, status=200, text=text, finish_reason=finish)

    def noise(self, n: int) -> None:
        for _ in range(n):
            order = self.rng.randint(1000, 9999)
            self.add(
                ShadowKind.STABLE,
                self.answer(1, stable_answer(self.rng, order)),
                self.answer(1, stable_answer(self.rng, order)),
            )

    def candidate_like_stable(self, n: int) -> None:
        for _ in range(n):
            order = self.rng.randint(1000, 9999)
            self.add(
                ShadowKind.CANDIDATE,
                self.answer(1, stable_answer(self.rng, order)),
                self.answer(2, stable_answer(self.rng, order)),
            )

    def candidate_off_track(self, n: int) -> None:
        for _ in range(n):
            order = self.rng.randint(1000, 9999)
            refusal = self.rng.choice(
                [
                    "I'm sorry, I can't share details about orders here.",
                    "Please contact our support team for delivery information",
                ]
            )
            self.add(
                ShadowKind.CANDIDATE,
                self.answer(1, stable_answer(self.rng, order)),
                self.answer(2, refusal, finish=self.rng.choice(["stop", "length"])),
            )

    async def stored(self) -> None:
        for _ in range(1000):
            if (
                len(await self.services.shadow.sink.read(PromptKey(SLUG), None, 10_000))
                >= self.count
            ):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("pairs not written")


def row(output: str, measure: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(measure + " "))
    return line.split()


async def test_an_off_track_candidate_fails_and_the_report_says_where(clients: Clients) -> None:
    _, admin, services = clients
    seeder = Seeder(services, 1)
    seeder.noise(40)
    seeder.candidate_off_track(40)
    await seeder.stored()

    result = await cli(admin, "report", SLUG, "--rollout", "ro")
    assert result.exit_code == 0, result.output  # a report, whatever the verdict
    assert "40 stable vs stable (noise), 40 stable vs candidate; 0 skipped" in result.output
    text = row(result.output, "text_distance")
    assert text[1] == "40"  # noise n
    assert text[5] == "40"  # candidate n
    assert float(text[2]) < 0.35 < 0.5 < float(text[6])  # means: noise low, candidate high
    assert float(text[9]) < 1e-6  # p-value
    assert text[-1] == "fail"
    assert row(result.output, "finish_reason_changed")[-1] == "fail"
    assert row(result.output, "json_invalid")[-1] == "n/a"  # nobody asked for JSON
    assert result.output.rstrip().splitlines()[-1].startswith("verdict: fail (text_distance")


async def test_a_copy_of_stable_passes(clients: Clients) -> None:
    _, admin, services = clients
    seeder = Seeder(services, 2)
    seeder.noise(40)
    seeder.candidate_like_stable(40)
    await seeder.stored()

    result = await cli(admin, "report", SLUG, "--rollout", "ro")
    assert result.exit_code == 0, result.output
    assert row(result.output, "text_distance")[-1] == "pass"
    assert result.output.rstrip().splitlines()[-1].startswith("verdict: pass")


async def test_json_output_counts_skipped_pairs_and_honours_the_thresholds(
    clients: Clients,
) -> None:
    _, admin, services = clients
    seeder = Seeder(services, 3)
    seeder.noise(12)
    seeder.candidate_off_track(12)
    good = seeder.answer(1, "fine")
    seeder.add(ShadowKind.CANDIDATE, None, seeder.answer(2, "no primary"))
    failed = ArmResult(version=2, status=502, error_class="upstream_5xx")
    seeder.add(ShadowKind.CANDIDATE, good, failed)
    await seeder.stored()

    default = await cli(admin, "-o", "json", "report", SLUG, "--rollout", "ro")
    assert default.exit_code == 0, default.output
    data = orjson.loads(default.output)
    assert data["pairs"] == {"stable": 12, "candidate": 12, "skipped": 2}
    assert data["result"] == "inconclusive"  # 12 < 30 pairs of a kind
    assert "noise_bins" not in data["measures"][0]  # the chart's data stays out of the print
    assert [m["measure"] for m in data["measures"]] == [
        "text_distance",
        "length_drift",
        "json_invalid",
        "tool_calls_differ",
        "finish_reason_changed",
    ]

    relaxed = await cli(admin, "-o", "json", "report", SLUG, "--rollout", "ro", "--min-pairs", "10")
    data = orjson.loads(relaxed.output)
    assert data["result"] == "fail"
    text = data["measures"][0]
    assert text["result"] == "fail"
    assert text["candidate_p50"] > text["noise_p95"]
    assert text["p_value"] < 1e-3

    # A margin of 1 cannot be exceeded: significant, but not by enough to fail.
    lenient = await cli(
        admin, "-o", "json", "report", SLUG, "--rollout", "ro", "--min-pairs", "10", "--margin", "1"
    )
    assert orjson.loads(lenient.output)["result"] == "pass"

    limited = await cli(admin, "-o", "json", "report", SLUG, "--rollout", "ro", "--limit", "12")
    assert orjson.loads(limited.output)["pairs"] == {"stable": 12, "candidate": 0, "skipped": 0}


async def test_a_stored_divergence_is_used_and_json_is_judged_when_the_pair_says_so(
    clients: Clients,
) -> None:
    _, admin, services = clients
    seeder = Seeder(services, 4)
    same = seeder.answer(1, '{"answer": 42}')
    for _ in range(35):
        seeder.add(ShadowKind.STABLE, same, same, expect_json=True)
    for _ in range(35):
        # Same text in both halves, but the runner measured a divergence: that one counts.
        stored = {"text_distance": 0.8, "length_drift": 0.0, "finish_reason_changed": 0.0}
        seeder.add(ShadowKind.CANDIDATE, same, same, divergence=stored)
    for _ in range(35):
        seeder.add(ShadowKind.CANDIDATE, same, seeder.answer(2, "```json"), expect_json=True)
    await seeder.stored()

    data = orjson.loads((await cli(admin, "-o", "json", "report", SLUG, "--rollout", "ro")).output)
    by_name = {m["measure"]: m for m in data["measures"]}
    # Half the candidate pairs at the stored 0.8, half near 0.9 ("```json" against the
    # object); computed from the identical halves, the first half would be 0.
    assert 0.8 <= by_name["text_distance"]["candidate_p50"] <= 0.91
    assert by_name["text_distance"]["result"] == "fail"
    assert by_name["json_invalid"]["candidate_n"] == 35
    assert by_name["json_invalid"]["candidate_mean"] == 1.0
    assert by_name["json_invalid"]["result"] == "fail"


async def test_png_chart_is_written(clients: Clients, tmp_path: Path) -> None:
    _, admin, services = clients
    seeder = Seeder(services, 5)
    seeder.noise(40)
    seeder.candidate_off_track(40)
    await seeder.stored()
    chart = tmp_path / "report.png"

    result = await cli(admin, "report", SLUG, "--rollout", "ro", "--png", str(chart))
    assert result.exit_code == 0, result.output
    assert "verdict: fail" in result.output
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # five panels of plots, not an empty canvas

    unwritable = await cli(
        admin, "report", SLUG, "--rollout", "ro", "--png", str(tmp_path / "no" / "x.png")
    )
    assert unwritable.exit_code == 1
    assert "cannot write" in unwritable.output


def test_png_without_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    env = {"PROMPTPROXY_ADMIN_URL": f"http://127.0.0.1:{free_port()}"}
    result = CliRunner().invoke(
        main, ["shadow", "report", SLUG, "--rollout", "ro", "--png", "x.png"], env=env
    )
    assert result.exit_code == 1
    assert "promptproxy[report]" in result.output
    assert "cannot reach" not in result.output  # refused before fetching anything


async def test_errors_exit_non_zero(clients: Clients) -> None:
    _, admin, _ = clients
    no_token = await cli(admin, "report", SLUG, "--rollout", "ro", token=None)
    assert no_token.exit_code == 1
    bad_since = await cli(admin, "report", SLUG, "--rollout", "ro", "--since", "last tuesday")
    assert bad_since.exit_code == 1
    assert "param: since" in bad_since.output
    bad_alpha = await cli(admin, "report", SLUG, "--rollout", "ro", "--alpha", "0.9")
    assert bad_alpha.exit_code == 2


async def test_the_admin_api_computes_the_report(clients: Clients) -> None:
    _, admin, services = clients
    seeder = Seeder(services, 6)
    seeder.noise(40)
    seeder.candidate_off_track(40)
    await seeder.stored()
    url = f"/admin/v1/prompts/{SLUG}/shadow/report"

    resp = await admin.get(url, params={"rollout": "ro", "min_pairs": "10"}, headers=READER)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert (data["rollout_id"], data["rollout_running"], data["since"]) == ("ro", None, "1h")
    assert data["pairs"] == {"stable": 40, "candidate": 40, "skipped": 0}
    assert (data["min_pairs"], data["result"]) == (10, "fail")
    text = data["measures"][0]
    assert (text["measure"], text["result"]) == ("text_distance", "fail")
    # The counts per bin a chart draws: 50 bins, as many values as pairs on each side.
    assert len(text["noise_bins"]) == len(text["candidate_bins"]) == 50
    assert sum(text["noise_bins"]) == text["noise_n"] == 40
    assert sum(text["candidate_bins"]) == text["candidate_n"] == 40

    bad = await admin.get(url, params={"rollout": "ro", "alpha": "0.9"}, headers=READER)
    assert bad.status == 400
    assert (await bad.json())["error"]["param"] == "alpha"
    # No rollout named, and the prompt never had one: nothing to choose.
    pushed = await admin.post(
        f"/admin/v1/prompts/{SLUG}/versions", json={"template": "hi"}, headers=ADMIN
    )
    assert pushed.status == 201
    latest = await admin.get(url, headers=READER)
    assert latest.status == 404
    assert (await latest.json())["error"]["code"] == "rollout_not_found"
