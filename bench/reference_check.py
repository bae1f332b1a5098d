"""Benchmark: the check that no label of any dataset points at a replaced heatmap file, as the
number of CAM fields grows (camcore.store.heatmaps.referenced_paths).

A dataset of 3 samples with --fields CAM fields each (declared as our pushes declare them, a label
in each on every sample: tests/test_push_scale.py's set-up), then medians of --repeats checks:

- ``recent``: the check as an overwrite makes it (the documents written since the old label);
- ``full``: the check over every document (a label without a time, a dead writer's journal, or most
  of the collection written since): as the code runs it (its plan named);
- ``query_hinted`` and ``query_unhinted``: the full check's query on this dataset alone, with its
  plan named as the code names it, and as it was before (MongoDB plans each of the $or's branches
  against every index: SUBPLAN) — the baseline, measured in the same run.

    .venv/bin/python bench/reference_check.py --fields 5,500
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def _measure(ds, repeats: int) -> dict[str, float]:
    """Median milliseconds of each way of checking, on a database holding `ds`."""
    import fiftyone.core.odm as foo

    from camcore import store
    from camcore.store import heatmaps

    since = datetime.now(UTC)
    fields = heatmaps._heatmap_paths_in_schema(
        foo.get_db_conn().datasets.find_one({"_id": ds._doc.id})["sample_fields"])
    query = {"$or": [{f"{f}.map_path": {"$in": ["/nowhere/old.png"]}} for f in fields]}
    projection = {f"{f}.map_path": 1 for f in fields}
    coll = ds._sample_collection
    return {
        "recent_ms": _median_ms(lambda: store.referenced_paths(["/nowhere/old.png"], since), repeats),
        "full_ms": _median_ms(lambda: store.referenced_paths(["/nowhere/old.png"]), repeats),
        "query_hinted_ms": _median_ms(lambda: list(coll.find(query, projection).hint([("$natural", 1)])), repeats),
        "query_unhinted_ms": _median_ms(lambda: list(coll.find(query, projection)), repeats),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", default="5,500", help="CAM field counts")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--db-dir", help="mongod data folder (a temporary one by default)")
    args = ap.parse_args()
    import scale

    folder, mongod = scale.bench_database(args.db_dir, "bench-refcheck-")
    try:
        import fiftyone as fo
        from fo_helpers import write_images
        from test_push_scale import _fill

        files = write_images(folder / "img", [f"{i}.png" for i in range(3)], size=(24, 32))
        rows = {}
        for n in [int(c) for c in args.fields.split(",")]:
            ds = fo.Dataset(f"bench-refcheck-{n}-{time.time_ns()}")
            ds.add_samples([fo.Sample(filepath=p) for p in files])
            ds.compute_metadata()
            _fill(ds, n)
            rows[n] = _measure(ds, args.repeats)
            print(f"{n} CAM fields: {rows[n]}", flush=True)
            ds.delete()
        base = min(rows)
        for key in rows[base]:
            cells = "  ".join(f"{n}: {r[key]} ms ({r[key] / max(rows[base][key], 1e-9):.2f}x)" for n, r in rows.items())
            print(f"{key}: {cells}")
        for n, r in rows.items():
            print(f"{n} fields: the query {r['query_hinted_ms']} ms, unhinted {r['query_unhinted_ms']} ms "
                  f"(ratio {r['query_unhinted_ms'] / max(r['query_hinted_ms'], 1e-9):.1f}x)")
    finally:
        if mongod is not None:
            from mongod_support import stop_mongod

            stop_mongod(mongod)


if __name__ == "__main__":
    main()
