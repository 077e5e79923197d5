"""The tenancy issue's registry at scale, in one process: how long a replica takes to load
it, how much memory the snapshot holds, what composing costs, and how long checking a base
against every tenant's override takes.

    python -m loadtest.registry_scale [--tenants 200] [--slugs 15] [--variants 2] [--rounds 5]

Figures go to ``loadtest/results/registry-scale.json``. CPU per request with composition,
against the plain swap-in path in the same run, is measured by ``loadtest.instructions``
(targets ``promptproxy_swap`` and ``promptproxy_tenants``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `python loadtest/registry_scale.py`: make `loadtest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import tracemalloc
from typing import Any

import orjson

from loadtest.fleet_image import BENCH_SLUG, fleet_image, tenant_id
from proxy.registry.composition import carry_over, composition
from proxy.registry.embedded_store import EmbeddedStore
from proxy.registry.models import RegistrySnapshot
from proxy.registry.override_fit import fit_report

RESULTS = Path(__file__).resolve().parent / "results" / "registry-scale.json"


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


async def measure(tenants: int, slugs: int, variants: int, rounds: int) -> dict[str, Any]:
    image = fleet_image(tenants, slugs, variants)
    with tempfile.TemporaryDirectory(prefix="promptproxy-scale-") as scratch:
        store = await EmbeddedStore.open(Path(scratch) / "registry.db")
        try:
            started = time.perf_counter()
            await store.restore(image, await store.generation(), 0, "bench", "scale", time.time())
            restore_s = time.perf_counter() - started
            loads = []
            snapshot: RegistrySnapshot | None = None
            for _ in range(rounds):
                started = time.perf_counter()
                snapshot = await store.snapshot()
                loads.append(time.perf_counter() - started)
        finally:
            await store.close()
    assert snapshot is not None
    del snapshot
    gc.collect()
    # The snapshot's own memory: built again from the same rows under tracemalloc.
    with tempfile.TemporaryDirectory(prefix="promptproxy-scale-") as scratch:
        store = await EmbeddedStore.open(Path(scratch) / "registry.db")
        try:
            await store.restore(image, await store.generation(), 0, "bench", "scale", time.time())
            gc.collect()
            tracemalloc.start()
            snapshot = await store.snapshot()
            held, _peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            await store.close()

    bases = [
        versions[1]
        for key, versions in sorted(snapshot.versions.items())
        if key.layer is None and 1 in versions
    ]
    records = list(snapshot.tenants.values())
    started = time.perf_counter()
    for base in bases:
        for tenant in records:
            composition(snapshot, base, tenant)
    compose_all_s = time.perf_counter() - started
    # An admin write makes a new snapshot; the compositions it still serves carry over.
    with tempfile.TemporaryDirectory(prefix="promptproxy-scale-") as scratch:
        store = await EmbeddedStore.open(Path(scratch) / "registry.db")
        try:
            await store.restore(image, await store.generation(), 0, "bench", "scale", time.time())
            reloaded = await store.snapshot()
        finally:
            await store.close()
    started = time.perf_counter()
    carried = carry_over(snapshot, reloaded)
    carry_s = time.perf_counter() - started
    bench = snapshot.versions[snapshot.plain_keys[BENCH_SLUG]][1]
    one = snapshot.tenants[tenant_id(7)]
    lookups = 100_000
    started = time.perf_counter()
    for _ in range(lookups):
        composition(snapshot, bench, one)
    lookup_us = (time.perf_counter() - started) / lookups * 1e6
    fits = []
    for _ in range(rounds):
        started = time.perf_counter()
        report = fit_report(snapshot, bench)
        fits.append(time.perf_counter() - started)
    return {
        "tenants": tenants,
        "slugs": slugs,
        "variants": variants,
        "versions": sum(len(v) for v in snapshot.versions.values()),
        "restore_s": round(restore_s, 3),
        "snapshot_load_ms_median": _median_ms(loads),
        "snapshot_load_ms": [round(x * 1000, 1) for x in loads],
        "snapshot_memory_mib": round(held / 2**20, 1),
        "compositions": len(snapshot.compositions),
        "compose_all_s": round(compose_all_s, 3),
        "compose_each_us": round(compose_all_s / max(1, len(snapshot.compositions)) * 1e6, 1),
        "composition_lookup_us": round(lookup_us, 3),
        "compositions_carried_to_next_snapshot": carried,
        "carry_over_ms": round(carry_s * 1000, 2),
        "fit_overrides_checked": report.checked,
        "fit_ms_median": _median_ms(fits),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--slugs", type=int, default=15)
    parser.add_argument("--variants", type=int, choices=(1, 2), default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args.tenants, args.slugs, args.variants, args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    for name, value in figures.items():
        print(f"{name:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
