"""What one start of the FiftyOne App's server costs: FiftyOne's own service vs camcore's.

FiftyOne (1.22) starts the server (`main.py --port`) under a supervisor script that imports the
whole library first; camcore.store.app_server runs the same script without that import. Both are
started alternately, REPEATS times each, in this process; for each start: seconds until the port
listens, and the CPU seconds of the supervisor and of the server 6 s later (its start-up goes on
after it listens).

    .venv/bin/python bench/app_start.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # camcore; mongod_support

import psutil  # noqa: E402


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """(the supervisor's CPU seconds, its children's: the server)"""
    own = process.cpu_times()
    kids = 0.0
    for child in process.children(recursive=True):
        try:
            t = child.cpu_times()
            kids += t.user + t.system
        except psutil.Error:
            pass
    return own.user + own.system, kids


def one_start(kind: type) -> dict[str, float]:
    """One start of `kind` (a FiftyOne ServerService class) on a free port, then its stop."""
    from mongod_support import free_port

    port = free_port()
    started = time.perf_counter()
    service = kind(port, address="localhost", do_not_track=True)
    listening = time.perf_counter() - started
    time.sleep(6)  # the server finishing its start-up after it listens
    supervisor, server = _cpu(service.child)
    service.stop()
    return {"listen_s": listening, "supervisor_cpu": supervisor, "server_cpu": server}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from scale import bench_database  # beside this file

    # a private mongod, as the tests and a team's shared one (FiftyOne would start its own
    # otherwise); its URI set before FiftyOne is imported
    _, mongod = bench_database(None, "bench-app-start-")
    import fiftyone.core.service as fo_service

    from camcore.store import app_server

    kinds = {"fiftyone": fo_service.ServerService, "camcore": app_server._PatientServerService}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in kinds}
    try:
        one_start(fo_service.ServerService)  # warm the disk cache: the first start reads every file
        for _ in range(args.repeats):
            for name, kind in kinds.items():
                rows[name].append(one_start(kind))
    finally:
        if mongod is not None:
            mongod.terminate()
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
    for name, m in medians.items():
        print(f"{name:9s}: listening after {m['listen_s']:.2f} s; CPU supervisor {m['supervisor_cpu']:.2f} s, "
              f"server {m['server_cpu']:.2f} s (median of {args.repeats})")
    total = {name: m["supervisor_cpu"] + m["server_cpu"] for name, m in medians.items()}
    print(f"ratio camcore/fiftyone: CPU {total['camcore'] / total['fiftyone']:.2f}, "
          f"time to listen {medians['camcore']['listen_s'] / medians['fiftyone']['listen_s']:.2f}")


if __name__ == "__main__":
    main()
