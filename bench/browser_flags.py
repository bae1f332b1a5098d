"""What Chromium flags save on the explorer's page loads (issue 26 item 7): for each set of flags,
one browser launched with the tests' arguments plus those flags, the same pages (Explore and Compare,
alternated) loaded in fresh contexts as the browser tests do, Chromium's CPU per load (the browser
and its children). Sets alternate round by round; the first load of each browser is not counted.

    .venv/bin/python bench/browser_flags.py [--rounds 2] [--loads 4] \
        [--set 'no-opt=--js-flags="--no-opt --no-maglev"' ...]

Without --set: none, V8 without its optimising compilers, without Sparkplug too, and jitless.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from browser_cache import _chromium_cpu  # noqa: E402
from browser_support import CHROMIUM, CHROMIUM_ARGS, hold_still  # noqa: E402

DEFAULT_SETS = {
    "none": [],
    "no-opt": ["--js-flags=--no-opt --no-maglev"],
    "no-sparkplug": ["--js-flags=--no-opt --no-maglev --no-sparkplug"],
    "jitless": ["--js-flags=--jitless"],
}


def _parse_sets(given: list[str] | None) -> dict[str, list[str]]:
    if not given:
        return DEFAULT_SETS
    sets = {"none": []}
    for item in given:
        name, _, flags = item.partition("=")
        sets[name] = shlex.split(flags)  # '--js-flags="--no-opt --no-maglev"' stays one argument
    return sets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loads", type=int, default=4, help="loads per browser, the first not counted")
    ap.add_argument("--set", action="append", help="NAME=FLAGS, e.g. 'no-opt=--js-flags=\"--no-opt --no-maglev\"'")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    from test_browser import ARTIFACTS, Server, open_app

    sets = _parse_sets(args.set)
    ARTIFACTS.mkdir(exist_ok=True)
    server = Server(ARTIFACTS / "streamlit-bench-browser-flags.log")
    url = f"{server.url}/{{page}}?model=efficientnet_lite0&methods=gradcam&layers=head"
    per: dict[str, list[float]] = {name: [] for name in sets}
    try:
        with sync_playwright() as pw:
            for r in range(args.rounds):
                for name, extra in sets.items():
                    browser = hold_still(pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + extra))
                    for i in range(args.loads):
                        context = browser.new_context(viewport={"width": 1280, "height": 800})
                        before = _chromium_cpu()
                        open_app(context.new_page(), url.format(page="compare" if i % 2 else ""))
                        context.pages[0].wait_for_timeout(1500)  # the page's last reruns
                        context.close()
                        if i:
                            per[name].append(_chromium_cpu() - before)
                    browser.close()
                    print(f"round {r + 1} {name:14s}: " + ", ".join(f"{x:.2f}" for x in per[name][-(args.loads - 1):]),
                          flush=True)
    finally:
        server.stop()
    for name, loads in per.items():
        print(f"{name:14s} {statistics.mean(loads):.2f} CPU-s a load ({len(loads)} loads)")


if __name__ == "__main__":
    main()
