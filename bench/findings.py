"""The Findings page at scale (issue 23, design 5): what its store calls cost on 10^3 vs 10^6 samples.

The page reads the distinct finding labels, builds the view of the chosen labels, counts its
findings and reads one page of 20. Timed on datasets of each size holding the same 60 findings on
60 samples spread over the dataset; ratios against the smallest size in the same run.

    .venv/bin/python bench/findings.py --sizes 1000,1000000 [--db-dir /tmp/findingsdb] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import bench_database, build_dataset  # noqa: E402  (beside this file; sets sys.path)

FINDINGS = 60
TAGS = ("background-bias", "wrong-object", "watermark")


def _with_findings(ds) -> None:
    from camcore.store import findings

    if findings.count_findings(ds) == FINDINGS:
        return
    coll = ds._sample_collection  # at set-up only: every n-th sample (in _id order) gets a finding
    step = max(1, ds.count() // FINDINGS)
    for i in range(FINDINGS):
        [doc] = coll.find({}, {"_id": 1}).sort("_id", 1).skip(i * step).limit(1)
        findings.add_finding(ds, str(doc["_id"]), TAGS[i % len(TAGS)], note=f"note {i}")


def _page_once(ds) -> dict[str, float]:
    """One visit of the Findings page: labels, view, count, first page."""
    from camcore.store import findings

    out = {}
    t0 = time.perf_counter()
    labels = findings.finding_labels(ds)
    out["labels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    view = findings.findings_view(ds, labels[:2])
    total = findings.count_findings(view)
    out["count"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = findings.list_findings(view, skip=0, limit=20)
    out["page"] = time.perf_counter() - t0
    assert total == 2 * FINDINGS // len(TAGS) and len(rows) == 20, (total, len(rows))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,1000000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--db-dir")
    args = ap.parse_args(argv)
    db_dir, mongod = bench_database(args.db_dir, "bench-findings-")
    try:
        results = {}
        for size in (int(s) for s in args.sizes.split(",")):
            t0 = time.perf_counter()
            ds = build_dataset(f"cam-findings-{size}", size, db_dir / "images")
            _with_findings(ds)
            print(f"{size:,} samples with {FINDINGS} findings ready in {time.perf_counter() - t0:.1f} s", flush=True)
            runs = [_page_once(ds) for _ in range(args.repeats)]
            results[size] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"  {size:,}: " + ", ".join(f"{k} {v:.4f} s" for k, v in results[size].items()), flush=True)
        base_size = min(results)
        base = results[base_size]
        print(f"\nmedians of {args.repeats} visits; ratios against {base_size:,} samples")
        for size, got in results.items():
            visit, base_visit = sum(got.values()), sum(base.values())
            print(f"  {size:>9,}: " + "  ".join(f"{k} {v:.4f} s ({v / max(base[k], 1e-6):.2f}x)" for k, v in got.items())
                  + f"  visit {visit:.4f} s ({visit / base_visit:.2f}x)")
    finally:
        if mongod is not None:
            mongod.terminate()


if __name__ == "__main__":
    main()
