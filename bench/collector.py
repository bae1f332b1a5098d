"""Benchmark: a full collection of the cyclic garbage collector in the app's server process, with and
without ui.session_memory.freeze_startup_heap (what app.py calls once, after its imports).

Each case is a fresh process that imports what app.py imports, freezes there (or not: the baseline,
as before the change), then loads a model and makes one Explainer with a heatmap (a session's objects,
made after the freeze as in the app), and times --repeats full collections (`gc.collect()`: what
every closed tab runs, session_memory.give_back_to_os, and what Python runs by itself as objects
pile up). Both cases run in this one run.

    .venv/bin/python bench/collector.py --repeats 5
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(freeze: bool, repeats: int) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from ui import router, session_memory, sidebar, text, urlstate  # noqa: F401  app.py's imports

    if freeze:
        session_memory.freeze_startup_heap()
    from cam_support import chelsea_crop

    from camcore.engine import Explainer
    from camcore.models import load_model

    model = load_model("efficientnet_lite0", "untrained", "cpu")
    explainer = Explainer(model, chelsea_crop(224), None, ("head",))
    explainer.heatmap("gradcam", "head")
    times = []
    for _ in range(repeats):
        start = time.process_time()
        gc.collect()
        times.append((time.process_time() - start) * 1000)
    return {"ms": statistics.median(times), "tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["frozen", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child == "frozen", args.repeats)))
        return
    out = {}
    for case in ("baseline", "frozen"):
        proc = subprocess.run([sys.executable, __file__, "--child", case, "--repeats", str(args.repeats)],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        out[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case:8s}: full collection {out[case]['ms']:7.1f} ms (median of {args.repeats}); objects "
              f"the collector walks {out[case]['tracked']}, set aside {out[case]['frozen']}")
    print(f"ratio frozen/baseline: {out['frozen']['ms'] / out['baseline']['ms']:.3f}")


if __name__ == "__main__":
    main()
