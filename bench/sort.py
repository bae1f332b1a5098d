"""A move in a sorted view at scale, without and with the sort's index (issue 23, design 1).

What the sidebar does on each move: read the page of (id, path) at a position of the view
(``views.page``) and find a sample's position (``views.position_of``). Timed on the unsorted view
(the baseline), sorted by a float field without an index, then with the index the sidebar offers
(``views.create_sort_index``), ascending and descending, at random positions. Ratios against the
unsorted view in the same run.

    .venv/bin/python bench/sort.py --size 100000 --moves 20 [--db-dir /tmp/sortdb]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import bench_database, build_dataset  # noqa: E402  (beside this file; sets sys.path)


def _moves(view, spec, total: int, moves: int, seed: int) -> tuple[float, float]:
    """Median seconds of a page read at a random position, and of finding that sample's position."""
    from camcore.store import views

    rng = random.Random(seed)
    reads, finds = [], []
    for _ in range(moves):
        position = rng.randrange(total)
        t0 = time.perf_counter()
        rows = views.page(view, position, 1)
        reads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        found = views.position_of(view, spec, rows[0][0])
        finds.append(time.perf_counter() - t0)
        assert found == position, (found, position)
    return statistics.median(reads), statistics.median(finds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--db-dir")
    args = ap.parse_args(argv)
    db_dir, mongod = bench_database(args.db_dir, "bench-sort-")
    try:
        from camcore.store import views

        t0 = time.perf_counter()
        ds = build_dataset(f"cam-sort-{args.size}", args.size, db_dir / "images")
        coll = ds._sample_collection
        if coll.find_one({"uniqueness": {"$exists": True}}) is None:  # a float per sample, in bulk
            rng = random.Random(1)
            ids = [d["_id"] for d in coll.find({}, {"_id": 1})]
            from pymongo import UpdateOne

            for i in range(0, len(ids), 10_000):
                coll.bulk_write([UpdateOne({"_id": _id}, {"$set": {"uniqueness": rng.random()}})
                                 for _id in ids[i:i + 10_000]], ordered=False)
            ds.add_sample_field("uniqueness", __import__("fiftyone").FloatField)
        if views.sort_index_name("uniqueness") in coll.index_information():
            coll.drop_index(views.sort_index_name("uniqueness"))
        print(f"{args.size:,} samples ready in {time.perf_counter() - t0:.1f} s", flush=True)
        total = views.count(ds)
        cases = {"unsorted": views.ViewSpec(),
                 "sorted asc, no index": views.ViewSpec(sort_field="uniqueness"),
                 "sorted desc, no index": views.ViewSpec(sort_field="uniqueness", sort_reverse=True)}
        results = {}
        for name, spec in cases.items():
            results[name] = _moves(views.build_view(ds, spec), spec, total, args.moves, 7)
            print(f"{name}: page {results[name][0]:.3f} s, position {results[name][1]:.3f} s", flush=True)
        seconds, megabytes = views.sort_index_cost(total)
        t0 = time.perf_counter()
        views.create_sort_index(ds, "uniqueness")
        built = time.perf_counter() - t0
        stats = ds._sample_collection.database.command("collStats", coll.name)
        size_mb = stats["indexSizes"].get(views.sort_index_name("uniqueness"), 0) / 1e6
        print(f"index built in {built:.1f} s (estimated {seconds:.1f} s), {size_mb:.1f} MB (estimated "
              f"{megabytes:.1f} MB)", flush=True)
        for name, spec in (("sorted asc, index", cases["sorted asc, no index"]),
                           ("sorted desc, index", cases["sorted desc, no index"])):
            results[name] = _moves(views.build_view(ds, spec), spec, total, args.moves, 7)
            print(f"{name}: page {results[name][0]:.3f} s, position {results[name][1]:.3f} s", flush=True)
        base = results["unsorted"]
        print(f"\nmedians of {args.moves} moves at random positions of {total:,}; ratios against the unsorted view")
        for name, (read, find) in results.items():
            print(f"  {name:24s} page {read:.3f} s ({read / base[0]:.2f}x)  position {find:.3f} s "
                  f"({find / max(base[1], 1e-6):.2f}x)  move {read + find:.3f} s ({(read + find) / sum(base):.2f}x)")
    finally:
        if mongod is not None:
            mongod.terminate()


if __name__ == "__main__":
    main()
