"""Benchmark: what an open FiftyOne App tab costs the App's server while the user only looks.

The plugin's page check (sync_app) asks the App's server every 2 s while the tab is visible; each
ask is an operator request, and FiftyOne 1.22 rebuilds every plugin's context for each one unless
FIFTYONE_PLUGINS_CACHE_ENABLED is on. Each case is a fresh process: a private mongod, a small
dataset, the App launched as the explorer launches it (camcore.store.launch_app), one Chromium tab
open on the dataset's grid; after the grid shows, the server's CPU (its process and children) is
read over --seconds of doing nothing (and, before that, what the server's start and the tab's first
load cost). Both cases run in this one run; ratio against the first.

    .venv/bin/python bench/app_idle.py --seconds 60 [--cases off,on]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def _server_cpu(child) -> float:
    import psutil

    procs = [child] + child.children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _browser_cpu() -> float:
    """CPU seconds of this process's Chromium processes (Playwright's browser and its renderers)."""
    import psutil

    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name():
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _child(cache: str, seconds: float) -> dict:
    os.environ["FIFTYONE_PLUGINS_CACHE_ENABLED"] = cache
    from scale import bench_database, build_dataset

    db_dir, mongod = bench_database(None, "bench-app-idle-")
    try:
        import fiftyone.core.session.session as fo_session
        from browser_support import APP_CHROMIUM, CHROMIUM_ARGS
        from mongod_support import free_port
        from playwright.sync_api import sync_playwright

        from camcore import store

        ds = build_dataset("cam-app-idle", 20, db_dir / "images")
        port = free_port()
        store.launch_app(ds, port=port)
        server = fo_session._server_services[port].child
        asks = []
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=APP_CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("request", lambda r: asks.append(time.monotonic()) if "operators/execute" in r.url else None)
                page.goto(store.app_url(ds.name, port=port))
                page.locator("[data-cy=fo-grid] canvas").first.wait_for(timeout=120_000)
                page.wait_for_timeout(10_000)  # the page's first checks and its plugin loads done
                start, t0, n0, b0 = _server_cpu(server), time.monotonic(), len(asks), _browser_cpu()
                opened, browser_opened = start, b0  # the server's start and its first page, the tab's load
                page.wait_for_timeout(seconds * 1000)
                cpu, wall, n = _server_cpu(server) - start, time.monotonic() - t0, len(asks) - n0
                browser_cpu = _browser_cpu() - b0
                browser.close()
        finally:
            store.close_app()
        return {"cache": cache, "server_cpu_s": cpu, "wall_s": wall, "operator_requests": n,
                "browser_cpu_s": browser_cpu, "opened_server_cpu_s": opened, "opened_browser_cpu_s": browser_opened}
    finally:
        if mongod is not None:
            mongod.terminate()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--cases", default="off,on", help="FIFTYONE_PLUGINS_CACHE_ENABLED per case: off,on")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.seconds)))
        return
    results = []
    for case in args.cases.split(","):
        value = {"off": "false", "on": "true"}[case]
        out = subprocess.run([sys.executable, __file__, "--child", value, "--seconds", str(args.seconds)],
                             capture_output=True, text=True, check=True)
        got = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
        results.append((case, got))
        print(f"plugins cache {case:>3}: App server {got['server_cpu_s']:.2f} CPU-s over {got['wall_s']:.0f} s "
              f"idle ({got['operator_requests']} operator requests, "
              f"{1000 * got['server_cpu_s'] / max(got['operator_requests'], 1):.0f} ms each); "
              f"the browser {got['browser_cpu_s']:.2f} CPU-s; before that, the server's start and first "
              f"page {got['opened_server_cpu_s']:.2f} CPU-s, the tab's load {got['opened_browser_cpu_s']:.2f}",
              flush=True)
    base = results[0][1]["server_cpu_s"]
    for case, got in results[1:]:
        print(f"  {case} vs {results[0][0]}: {got['server_cpu_s'] / max(base, 1e-6):.2f}x the server's CPU")


if __name__ == "__main__":
    main()
