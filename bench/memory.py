"""The server's memory across browser sessions (issue 23, design 4): is a session's memory freed
when its tab closes?

Starts its own mongod (data in a temp folder) and `streamlit run app.py` on the demo dataset, then
in Chromium: one warm-up tab (loads the model, fills the shared caches: models stay cached, that
is intended) that does one ▶ and closes; the server's RSS is then "before". Then --tabs tabs open
at once, each does --clicks ▶ (each ▶ is a new sample: a model pass on Explore), RSS is sampled
all along ("peak"); the tabs close, and after --settle seconds the RSS is "after". Prints
before / peak / after and after/before (goal <= 1.10).

    .venv/bin/python bench/memory.py --tabs 3 --clicks 5
    .venv/bin/python bench/memory.py --tabs 3 --clicks 5 --model deeplabv3 --weights untrained [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # mongod_support, browser_support

from browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

RUN_TIMEOUT = 600_000  # ms: a model pass on a loaded 2-core machine


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """The server's RSS every 0.2 s, keeping the highest."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self.stop.wait(0.2)


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    from mongod_support import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.25)  # polling a socket
    raise RuntimeError("streamlit did not start")


def settle(page) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning",
                                                           timeout=RUN_TIMEOUT)
    expect(page.get_by_test_id("stSpinner")).to_have_count(0, timeout=RUN_TIMEOUT)
    if page.get_by_test_id("stException").count():
        raise RuntimeError(page.get_by_test_id("stException").first.inner_text())


def open_tab(browser, url: str):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(url)
    expect(page.get_by_test_id("stSidebar").get_by_test_id("stText").first).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    return context, page


def click_next(page) -> None:
    from playwright.sync_api import expect

    label = page.get_by_test_id("stSidebar").get_by_test_id("stText").first
    before = label.inner_text()
    page.get_by_test_id("stSidebar").get_by_role("button", name="▶").click()
    expect(label).not_to_have_text(before, timeout=RUN_TIMEOUT)
    settle(page)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tabs", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--weights", default="")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after the tabs close")
    ap.add_argument("--rounds", type=int, default=1, help="open, click and close the tabs this many times: what "
                                                             "a round leaves behind should not add up")
    args = ap.parse_args(argv)
    from mongod_support import start_mongod, stop_mongod
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    mongod, uri = start_mongod(tmp)  # never a shared database
    env = dict(os.environ, FIFTYONE_DATABASE_URI=uri, CAM_EXPLORER_HOME=str(tmp / "home"),
               FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false", CAM_EXPLORER_OFFLINE="1",
               CAM_EXPLORER_DEVICE="cpu", TORCH_HOME=str(tmp / "torch-home"))
    server, base = start_server(env, tmp / "streamlit.log")
    url = f"{base}/?dataset=cam-explorer-demo&model={args.model}" + (f"&weights={args.weights}" if args.weights
                                                                       else "")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            t0 = time.monotonic()
            context, page = open_tab(browser, url)  # warm-up: the model and the shared caches
            click_next(page)
            context.close()
            time.sleep(args.settle)  # the same wait as after the tabs
            before = rss_mib(server.pid)
            print(f"warm-up done in {time.monotonic() - t0:.0f} s; RSS before: {before:.0f} MiB", flush=True)
            sampler = Sampler(server.pid)
            sampler.start()
            afters = []
            for r in range(args.rounds):
                tabs = [open_tab(browser, url) for _ in range(args.tabs)]
                for i in range(args.clicks):
                    for _, p in tabs:
                        click_next(p)
                    print(f"  round {r + 1}, {i + 1} ▶ per tab: {rss_mib(server.pid):.0f} MiB", flush=True)
                with_tabs = rss_mib(server.pid)
                for c, _ in tabs:
                    c.close()
                time.sleep(args.settle)  # the disconnects reach the server; session caches released
                afters.append(rss_mib(server.pid))
                print(f"  round {r + 1}: tabs open {with_tabs:.0f} MiB, closed {afters[-1]:.0f} MiB", flush=True)
            after = afters[-1]
            sampler.stop.set()
            sampler.join()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        stop_mongod(mongod, disconnect_fiftyone=False)
    peak = max(sampler.peak, with_tabs)
    print(f"{args.rounds} x {args.tabs} tabs x {args.clicks} ▶, model {args.model} {args.weights}".rstrip())
    if len(afters) > 1:
        print("RSS after each round: " + ", ".join(f"{a:.0f}" for a in afters) + " MiB")
    print(f"RSS before {before:.0f} MiB, peak {peak:.0f} MiB, with the tabs open {with_tabs:.0f} MiB, "
          f"after closing them (+{args.settle:.0f} s) {after:.0f} MiB")
    print(f"after/before: {after / before:.3f}  (goal <= 1.10); held by the open tabs: "
          f"{with_tabs - before:.0f} MiB, freed at close: {with_tabs - after:.0f} MiB")


if __name__ == "__main__":
    main()
