"""What Chromium's caches save on the explorer's page loads (issue 26 item 7): the same page loaded
N times in fresh contexts of one launched browser (what the browser tests do: no disk cache, so
every load parses and compiles Streamlit's scripts again) against new pages of one persistent
context (a profile folder: HTTP cache and V8's code cache on disk). Chromium's CPU per load, the
browser and its children, alternated rounds.

    .venv/bin/python bench/browser_cache.py [--loads 6] [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import psutil

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def _chromium_cpu() -> float:
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if "chrom" in " ".join(p.info["cmdline"] or [])[:200]:
                t = p.cpu_times()
                total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _load(page, url: str, app: bool) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    if app:
        # the FiftyOne App's grid: its first tile drawn
        expect(page.locator("canvas").first).to_be_visible(timeout=120_000)
        page.wait_for_timeout(3000)
        return
    expect(page.get_by_test_id("stSidebar").get_by_text("Dataset", exact=True)).to_be_visible(timeout=120_000)
    expect(page.get_by_test_id("stImage").first).to_be_visible(timeout=120_000)
    page.wait_for_timeout(1500)  # the page's last reruns


def measure(url: str, loads: int, persistent: bool, app: bool) -> list[float]:
    from playwright.sync_api import sync_playwright

    per = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        if persistent:
            ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                        viewport={"width": 1280, "height": 900})
            new_page, close = ctx.new_page, ctx.close
        else:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            new_page = lambda: browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # noqa: E731
            close = browser.close
        for _ in range(loads):
            before = _chromium_cpu()
            page = new_page()
            _load(page, url, app)
            if persistent:
                page.close()
            else:
                page.context.close()
            per.append(_chromium_cpu() - before)
        close()
    return per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--app", action="store_true", help="the FiftyOne App's page (the demo dataset) instead")
    args = ap.parse_args()
    if args.app:
        from test_browser import _free_port

        from camcore import demo_data, store

        port = _free_port()
        store.launch_app(demo_data.ensure_demo_dataset(), port=port)
        try:
            _rounds(f"http://localhost:{port}/", args)
        finally:
            store.close_app()
        return
    from test_browser import ARTIFACTS, Server

    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(ARTIFACTS / "streamlit-bench-browser-cache.log")
    try:
        _rounds(f"{server.url}/?model=efficientnet_lite0&methods=gradcam&layers=head", args)
    finally:
        server.stop()


def _rounds(url: str, args: argparse.Namespace) -> None:
    measure(url, 1, False, args.app)  # the server's first page (a model's load) outside the measure
    for r in range(args.rounds):
        for persistent in (False, True):
            per = measure(url, args.loads, persistent, args.app)
            name = "persistent profile" if persistent else "fresh contexts"
            print(f"round {r + 1} {name:18s}: first {per[0]:.2f} CPU-s, then "
                  f"{sum(per[1:]) / max(1, len(per) - 1):.2f} a load ({', '.join(f'{x:.2f}' for x in per)})",
                  flush=True)


if __name__ == "__main__":
    main()
