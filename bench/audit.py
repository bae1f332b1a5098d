"""Benchmark: the Audit page at 10^3 vs 10^6 samples with stored measures (issue 25), in one run.

Per size: a dataset whose samples carry a heatmap label and the seven measure fields (built with
raw inserts from a few real samples: only the measures matter here), its whole-dataset summary
stored as a measuring batch leaves it; then the real app in-process (Streamlit AppTest, app.py
with the Audit page): the page's first draw in a new session, and narrowing clicks (a histogram
bin: what a click sets, then the rerun the click causes). Sizes are interleaved (small, big,
small, big) and the better of the two rounds is kept. Also printed: the aggregation alone
(camcore.store.audit.summarise, no stored summary: what a filtered view costs) and the process's
RSS after each size (the server's memory must not grow with the view).

    .venv/bin/python bench/audit.py --sizes 1000,100000        # quick
    .venv/bin/python bench/audit.py --sizes 1000,1000000       # the issue's sizes (a few minutes)

Starts a private mongod unless FIFTYONE_DATABASE_URI is set. Last line:
audit_first_draw_ratio=<big/small> audit_click_ratio=<big/small> sizes=<a,b>
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # camcore; mongod_support, audit_support


def build(n: int, tmp: Path):
    """A persistent dataset of n samples with measures, and its stored summary."""
    from audit_support import audited_dataset

    from camcore.store import audit

    ds, fields = audited_dataset(tmp / f"media-{n}", n=min(n, 100), seed=n)
    ds.persistent = True
    docs = list(ds._sample_collection.find({}, {"_id": 0}))
    started = time.perf_counter()
    left, i = n - len(docs), 0
    while left > 0:
        batch = [dict(docs[(i + k) % len(docs)]) for k in range(min(20_000, left))]
        ds._sample_collection.insert_many(batch, ordered=False)
        left -= len(batch)
        i += len(batch)
    (run,) = audit.runs(ds)
    audit.store_summary(ds, run)
    print(f"built {n:,} samples in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return ds, run


def first_draw(name: str, charts: bool = True, cold: bool = False):
    """A new session opening the Audit page: (seconds, the AppTest). The page's own summary cache is
    always cleared first; cold: every cache of the process too (the sidebar's distinct tags, counts...,
    which a running server keeps for a minute per dataset)."""
    import streamlit as st
    from app_support import APP
    from streamlit.testing.v1 import AppTest

    from ui import audit as ui_audit

    ui_audit.summary.clear()
    if cold:
        st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=600)
    at.query_params["dataset"] = name
    at.switch_page("pages/audit.py")
    started = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    assert not charts or at.get("plotly_chart"), "the Audit page drew no chart"
    return seconds, at


def click(at, run, lo: float, hi: float) -> float:
    """A histogram bin clicked: the narrowing it sets, and the rerun (sidebar, count, page)."""
    from camcore.store import audit
    from ui.state import Sidebar

    at.session_state[Sidebar.NARROW] = audit.bin_narrow(run, lo, hi)
    started = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - started
    assert not at.exception, [e.value for e in at.exception]
    return seconds


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--clicks", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ["CAM_EXPLORER_HOME"] = str(tmp / "home")
    from mongod_support import private_mongod

    proc = private_mongod(tmp)
    try:
        run(sizes, args.clicks, tmp)
    finally:
        if proc is not None:
            from mongod_support import stop_mongod

            stop_mongod(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def run(sizes: list[int], clicks: int, tmp: Path) -> None:
    from camcore import demo_data
    from camcore.store import audit

    demo_data.ensure_demo_dataset()
    built = {n: build(n, tmp) for n in sizes}
    first_draw(demo_data.DEMO_DATASET_NAME, charts=False)  # warm-up: imports, the demo, Streamlit's first run
    draws: dict[int, list[float]] = {n: [] for n in sizes}
    colds: dict[int, list[float]] = {n: [] for n in sizes}
    narrows: dict[int, list[float]] = {n: [] for n in sizes}
    aggregations: dict[int, list[float]] = {n: [] for n in sizes}
    rss: dict[int, float] = {}
    for _round in range(2):
        for n in sizes:
            ds, run_ = built[n]
            colds[n].append(first_draw(ds.name, cold=True)[0])
            seconds, at = first_draw(ds.name)
            draws[n].append(seconds)
            bins = [(k / 20, (k + 1) / 20) for k in range(0, 20, max(1, 20 // clicks))][:clicks]
            narrows[n].append(statistics.median(click(at, run_, lo, hi) for lo, hi in bins))
            started = time.perf_counter()
            audit.summarise(ds, run_)
            aggregations[n].append(time.perf_counter() - started)
            rss[n] = rss_mib()
    small, big = sizes[0], sizes[-1]
    for n in sizes:
        print(f"{n:>9,} samples: first draw {min(draws[n]) * 1000:7.0f} ms (all caches cold "
              f"{min(colds[n]) * 1000:6.0f} ms) · narrowing click "
              f"{min(narrows[n]) * 1000:6.0f} ms · aggregation alone {min(aggregations[n]) * 1000:7.0f} ms · "
              f"peak RSS so far {rss[n]:.0f} MiB")
    d = min(draws[big]) / min(draws[small])
    c = min(narrows[big]) / min(narrows[small])
    a = min(aggregations[big]) / min(aggregations[small])
    cold = min(colds[big]) / min(colds[small])
    print(f"audit_first_draw_ratio={d:.2f} cold_first_draw_ratio={cold:.2f} audit_click_ratio={c:.2f} "
          f"aggregation_ratio={a:.1f} "
          f"sizes={small},{big}")


if __name__ == "__main__":
    main()
