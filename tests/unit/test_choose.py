"""Stage 3, choose: sticky, share-accurate, monotone assignment to arms."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest

from proxy.exchange.outcome import Arm
from proxy.models import ParsedRequest, Route
from proxy.pipeline.arms import decide
from proxy.pipeline.choose import (
    ShadowSkip,
    bucket,
    choose,
    shadow_skip,
    sticky_value,
    takes_candidate,
)
from proxy.pipeline.resolve import PromptRef
from proxy.prompt_key import PromptKey
from proxy.registry.models import (
    BASIS_POINTS,
    PromptVersion,
    RegistrySnapshot,
    Rollout,
    RolloutMode,
    RolloutSegment,
    Status,
    StickyKey,
    Tenant,
)

SUPPORT = PromptKey("support")

KEYS = [f"user-{i}" for i in range(100_000)]


def version(n: int, status: Status) -> PromptVersion:
    return PromptVersion(SUPPORT, n, f"v{n}", (), None, {}, "a", "", 1.0, f"sha{n}", status)


def rollout(basis_points: int, mode: RolloutMode = RolloutMode.CANARY, rid: str = "r1") -> Rollout:
    return Rollout(
        key=SUPPORT,
        id=rid,
        candidate=2,
        mode=mode,
        basis_points=basis_points,
        sticky=StickyKey.parse("header:x-user-id"),
        started_at=1.0,
        updated_at=1.0,
        actor="ops",
        restore_status=Status.DRAFT,
    )


def snapshot(r: Rollout | None) -> RegistrySnapshot:
    versions = {1: version(1, Status.PROD), 2: version(2, Status.CANDIDATE)}
    return RegistrySnapshot(
        revision=3,
        versions={SUPPORT: versions},
        prod={SUPPORT: 1},
        rollouts={} if r is None else {SUPPORT: r},
    )


@pytest.mark.parametrize("basis_points", [1, 100, 1000, 2500, 5000, 9000, 9999])
def test_measured_share_is_within_a_third_of_a_point(basis_points: int) -> None:
    r = rollout(basis_points)
    share = sum(takes_candidate(r, key) for key in KEYS) / len(KEYS) * 100
    assert abs(share - basis_points / 100) <= 0.3, share


def test_zero_and_hundred_percent_are_exact() -> None:
    assert not any(takes_candidate(rollout(0), key) for key in KEYS[:10_000])
    assert all(takes_candidate(rollout(10_000), key) for key in KEYS[:10_000])


def test_raising_keeps_every_member_and_lowering_drops_only_the_newest() -> None:
    steps = [100, 500, 1000, 2500, 5000]
    cohorts = [{k for k in KEYS if takes_candidate(rollout(bp), k)} for bp in steps]
    for smaller, larger in itertools.pairwise(cohorts):
        assert smaller < larger
    # Going back down 25 % -> 10 % gives exactly the 10 % cohort again: the callers who
    # leave are the ones who joined last.
    assert {k for k in KEYS if takes_candidate(rollout(1000), k)} == cohorts[2]


def test_a_new_rollout_draws_new_cohorts() -> None:
    first = {k for k in KEYS if takes_candidate(rollout(1000, rid="r1"), k)}
    second = {k for k in KEYS if takes_candidate(rollout(1000, rid="r2"), k)}
    overlap = len(first & second) / len(first)
    assert 0.05 < overlap < 0.15  # independent draws overlap by about the share itself


def test_assignment_is_the_same_in_another_process() -> None:
    """No per-process seed (Python's str hash is salted per process; ours must not be)."""
    code = (
        "from proxy.pipeline.choose import bucket; from proxy.prompt_key import PromptKey;"
        "print([bucket(PromptKey('support'), 'r1', f'user-{i}') for i in range(50)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="."
    ).stdout
    assert out.strip() == str([bucket(SUPPORT, "r1", f"user-{i}") for i in range(50)])


def test_a_plain_key_keeps_the_cohorts_of_its_slug() -> None:
    # Before prompt keys the slug itself was hashed: a running rollout must not reshuffle
    # its callers when replicas upgrade, so a plain key hashes exactly as its slug did.
    def slug_era(slug: str, rollout_id: str, sticky: str) -> int:
        digest = hashlib.blake2b(
            b"\x1f".join((slug.encode(), rollout_id.encode(), sticky.encode())), digest_size=8
        ).digest()
        return (int.from_bytes(digest, "big") * 10_000) >> 64

    for slug in ("support", "a.b-c_d"):
        assert [bucket(PromptKey(slug), "r1", k) for k in KEYS[:500]] == [
            slug_era(slug, "r1", k) for k in KEYS[:500]
        ]


def test_canary_arm_runs_the_candidate() -> None:
    r = rollout(5000)
    stable = version(1, Status.PROD)
    arms = {choose(snapshot(r), stable, key).arm for key in KEYS[:200]}
    assert arms == {Arm.STABLE, Arm.CANARY}
    key = next(k for k in KEYS if takes_candidate(r, k))
    decision = choose(snapshot(r), stable, key)
    assert (decision.arm, decision.version.version, decision.shadow) == (Arm.CANARY, 2, None)


def test_shadow_rollout_serves_stable_and_samples_a_shadow() -> None:
    r = rollout(2500, RolloutMode.SHADOW)
    stable = version(1, Status.PROD)
    decisions = [choose(snapshot(r), stable, key) for key in KEYS[:20_000]]
    assert {d.arm for d in decisions} == {Arm.STABLE}
    assert {d.version.version for d in decisions} == {1}
    sampled = [d for d in decisions if d.shadow is not None]
    assert {d.shadow.version for d in sampled if d.shadow} == {2}
    assert abs(len(sampled) / len(decisions) - 0.25) < 0.01


def test_no_rollout_or_no_key_means_stable() -> None:
    stable = version(1, Status.PROD)
    assert choose(snapshot(None), stable, "user-1").arm is Arm.STABLE
    unkeyed = choose(snapshot(rollout(10_000)), stable, None)
    assert (unkeyed.arm, unkeyed.unkeyed, unkeyed.shadow) == (Arm.STABLE, True, None)


def test_sticky_values() -> None:
    headers = {"x-user-id": "u-7", "authorization": "Bearer sk-secret"}
    payload = {"user": "end-user-1"}
    common = {"tenant_header": "x-tenant-id", "request_id": "req-1"}
    assert sticky_value(StickyKey.parse("header:X-User-Id"), headers, payload, **common) == "u-7"
    assert sticky_value(StickyKey.parse("header:x-other"), headers, payload, **common) is None
    assert sticky_value(StickyKey.parse("user"), headers, payload, **common) == "end-user-1"
    assert (
        sticky_value(StickyKey.parse("user"), {}, {"safety_identifier": "s-1"}, **common) == "s-1"
    )
    assert sticky_value(StickyKey.parse("user"), headers, {"user": 7}, **common) is None
    # The Messages API names its user in `metadata.user_id`.
    claude = {"metadata": {"user_id": "u-42"}}
    assert sticky_value(StickyKey.parse("user"), {}, claude, **common) == "u-42"
    # Anthropic's SDKs send their key as x-api-key: one key, one cohort, as with a bearer.
    anthropic_key = sticky_value(StickyKey.parse("tenant"), {"x-api-key": "sk-ant"}, {}, **common)
    assert anthropic_key is not None
    assert anthropic_key.startswith("k:")
    assert sticky_value(StickyKey.parse("none"), headers, payload, **common) == "req-1"
    by_key = sticky_value(StickyKey.parse("tenant"), headers, payload, **common)
    assert by_key is not None
    assert "sk-secret" not in by_key
    assert by_key == sticky_value(StickyKey.parse("tenant"), dict(headers), {}, **common)
    named = sticky_value(
        StickyKey.parse("tenant"), {**headers, "x-tenant-id": "acme"}, {}, **common
    )
    assert named == "t:acme"
    assert sticky_value(StickyKey.parse("tenant"), {}, {}, **common) is None


def test_bucket_range() -> None:
    values = [bucket(PromptKey("s"), "r", k) for k in KEYS[:5000]]
    assert min(values) >= 0
    assert max(values) < 10_000


@pytest.mark.parametrize(
    ("route", "method", "payload", "size", "expected"),
    [
        (Route.CHAT, "POST", {}, 10, None),
        (Route.CHAT, "POST", {"store": False}, 10, None),
        (Route.CHAT, "POST", {"store": True}, 10, ShadowSkip.SIDE_EFFECTS),
        (Route.RESPONSES, "POST", {}, 10, ShadowSkip.SIDE_EFFECTS),
        (Route.RESPONSES, "POST", {"store": True}, 10, ShadowSkip.SIDE_EFFECTS),
        (Route.RESPONSES, "POST", {"store": False}, 10, None),
        (Route.EMBEDDINGS, "POST", {}, 10, ShadowSkip.NOT_COMPLETION),
        (Route.RESPONSES, "GET", {}, 0, ShadowSkip.NOT_COMPLETION),
        (Route.CHAT, "POST", {}, 2_000_000, ShadowSkip.BODY_TOO_LARGE),
        (Route.MESSAGES, "POST", {}, 10, None),
        # Code execution in the caller's own container: never run twice.
        (Route.MESSAGES, "POST", {"container": "container_1"}, 10, ShadowSkip.SIDE_EFFECTS),
    ],
)
def test_only_side_effect_free_completions_are_shadowed(
    route: Route, method: str, payload: dict[str, object], size: int, expected: ShadowSkip | None
) -> None:
    assert shadow_skip(route, method, payload, size, 1_000_000) is expected


def test_a_segmented_rollout_leaves_callers_outside_it_out_of_the_rollout() -> None:
    """Outside the segment a caller is not on stable *of the rollout* (which its analysis
    would count) but outside it altogether: the decision carries no rollout."""
    segmented = replace(
        rollout(BASIS_POINTS), sticky=StickyKey.parse("none"), segment=RolloutSegment(("pro",))
    )
    snap = snapshot(segmented)
    resources = SimpleNamespace(config=SimpleNamespace(rollouts=SimpleNamespace(tenant_header="x")))
    parsed = ParsedRequest(route=Route.CHAT, body=b"{}", payload={}, stream=False)
    stable = version(1, Status.PROD)
    ref = PromptRef(SUPPORT)
    inside, outside = Tenant("acme", "pro"), Tenant("bolt", "free")
    decisions = [
        decide(resources, snap, ref, stable, {}, parsed, "req", tenant)  # type: ignore[arg-type]
        for tenant in (inside, outside, None)
    ]
    assert [(d.arm, d.rollout) for d in decisions] == [
        (Arm.CANARY, segmented),
        (Arm.STABLE, None),
        (Arm.STABLE, None),
    ]
