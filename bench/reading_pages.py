"""The explorer's reading pages opened first in a fresh server: this checkout vs a base commit.

For each tree (this checkout, and a git worktree of --base), a fresh `streamlit run app.py` on the
demo dataset (its own mongod and camcore home), then in Chromium each page of PAGES in turn, as a
stored link would open it: seconds until the page is idle, whether the server has loaded torch
(libtorch in its memory map) and its resident memory after it. The trees run one after the other,
--repeats times each.

    .venv/bin/python bench/reading_pages.py --base 6864371 [--repeats 2]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]  # mongod_support

from base_tree import parse_args, worktree  # noqa: E402

PAGES = ("audit", "findings", "runs", "batch", "review")
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _server_state(pid: int) -> tuple[bool, int]:
    """(whether torch is loaded, resident MiB) of the server process."""
    loaded = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS"))
    return loaded, rss // 1024


def _wait_idle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]')
    time.sleep(1.0)  # the script run starts after the page's first paint
    deadline = time.time() + 120
    while page.locator('[data-testid="stStatusWidget"]').count() and time.time() < deadline:
        time.sleep(0.2)


def one_server(tree: Path, work: Path, browser) -> list[tuple[str, float, bool, int]]:
    from mongod_support import free_port, start_mongod, stop_mongod

    mongo, uri = start_mongod(Path(tempfile.mkdtemp(dir=work)))
    port = free_port()
    env = {**os.environ, "FIFTYONE_DATABASE_URI": uri, "FIFTYONE_DATABASE_VALIDATION": "false",
           "FIFTYONE_DO_NOT_TRACK": "true", "CAM_EXPLORER_HOME": tempfile.mkdtemp(dir=work)}
    env.pop("PYTHONPATH", None)
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.headless", "true"], cwd=tree, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name in PAGES:
            start = time.perf_counter()
            page.goto(f"http://localhost:{port}/{name}")
            _wait_idle(page)
            rows.append((name, time.perf_counter() - start, *_server_state(server.pid)))
        page.close()
    finally:
        server.terminate()
        server.wait(30)
        stop_mongod(mongo, disconnect_fiftyone=False)
    return rows


def main() -> None:
    args = parse_args(__doc__, repeats=2)
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="reading-pages-"))
    runs: dict[str, list] = {"base": [], "this": []}
    with worktree(args.base, work / "base") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM)
        for _ in range(args.repeats):
            for name, tree in (("base", base), ("this", ROOT)):
                runs[name].append(one_server(tree, work, browser))
        browser.close()

    print(f"a fresh explorer, each page opened in turn; medians of {args.repeats} servers per tree")
    print(f"{'page':10}{'base s':>9}{'this s':>9}{'ratio':>8}{'base torch, MiB':>18}{'this torch, MiB':>18}")
    for i, page in enumerate(PAGES):
        b, t = (statistics.median(run[i][1] for run in runs[name]) for name in ("base", "this"))
        state = {name: (runs[name][-1][i][2], statistics.median(run[i][3] for run in runs[name])) for name in runs}
        print(f"{page:10}{b:9.1f}{t:9.1f}{b / t:7.1f}x"
              f"{'yes' if state['base'][0] else 'no':>11}{state['base'][1]:7.0f}"
              f"{'yes' if state['this'][0] else 'no':>11}{state['this'][1]:7.0f}")


if __name__ == "__main__":
    main()
