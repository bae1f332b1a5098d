"""The explorer's side of bench/scale.py: what one click costs on a big dataset.

- ``interaction``: the server time of one ▶ click (the shared sidebar plus Explore's header and its
  thumbnail strip, no model pass), by AppTest in a fresh process: median over --clicks clicks;
  with the session's own state size (pickled) and the process's RSS growth over those clicks.
- ``click``: a ▶ click in Chromium against `streamlit run`, from the click to the new sample's path
  on screen and the app idle again: median over --clicks clicks (on the Findings page: the sidebar
  is what is measured, not a model).
- ``sessions``: the server's RSS growth per browser session (--sessions sessions opened on the
  dataset, each clicking ▶ once), i.e. per-session memory.

Each returns {name: value}, lower is better; bench/scale.py runs them on every size and prints the
ratios against the smallest.
"""
from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE_APP = Path(__file__).resolve().parent / "ui_probe_app.py"
sys.path[:0] = [str(ROOT / "tests")]

from browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402


def _child(kind: str, dataset_name: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), kind, dataset_name, str(args.clicks), str(args.sessions)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.probe_timeout, cwd=ROOT,
                          env={**os.environ, "CAM_EXPLORER_DEVICE": "cpu"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} on {dataset_name} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def measure_interaction(dataset, args) -> dict[str, float]:
    return _child("interaction", dataset.name, args)


def measure_click(dataset, args) -> dict[str, float]:
    return _child("click", dataset.name, args)


def measure_sessions(dataset, args) -> dict[str, float]:
    return _child("sessions", dataset.name, args)


MEASURES = {"interaction": measure_interaction, "click": measure_click, "sessions": measure_sessions}


# ---------------------------------------------------------------- children (fresh processes)


def _rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def probe_interaction(dataset_name: str, clicks: int) -> dict:
    sys.path[:0] = [str(ROOT)]
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PROBE_APP), default_timeout=600)
    at.query_params["dataset"] = dataset_name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.sidebar.button(key="next_sample").click().run()  # warm: caches, imports
    rss0 = _rss_mib()
    times = []
    for _ in range(clicks):
        t0 = time.perf_counter()
        at.sidebar.button(key="next_sample").click().run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, [e.value for e in at.exception]
    state = {}
    for key in at.session_state:
        try:
            state[key] = pickle.dumps(at.session_state[key])
        except Exception:  # widgets' own objects: not the session's data
            continue
    return {"click_server_ms": round(1000 * statistics.median(times), 1),
            "session_state_kib": round(sum(len(v) for v in state.values()) / 1024, 1),
            "rss_growth_mib": round(_rss_mib() - rss0, 1)}


class _Server:
    def __init__(self):
        import socket
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://localhost:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="bench-streamlit-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port",
                                      str(self.port), "--server.headless", "true"], cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("streamlit did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _open(context, url: str, dataset_name: str):
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{url}/findings?dataset={dataset_name}")
    app = page.get_by_test_id("stApp")
    expect(page.get_by_test_id("stSidebar").get_by_test_id("stText").first).to_be_visible(timeout=600_000)
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=600_000)
    return page


def _click_next(page) -> float:
    from playwright.sync_api import expect

    label = page.get_by_test_id("stSidebar").get_by_test_id("stText").first
    before = label.inner_text()
    t0 = time.perf_counter()
    page.get_by_test_id("stSidebar").get_by_role("button", name="▶").click()
    expect(label).not_to_have_text(before, timeout=600_000)
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning", timeout=600_000)
    return time.perf_counter() - t0


def probe_click(dataset_name: str, clicks: int) -> dict:
    from playwright.sync_api import sync_playwright

    server = _Server()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = _open(browser.new_context(viewport={"width": 1280, "height": 800}), server.url, dataset_name)
            _click_next(page)  # warm
            times = [_click_next(page) for _ in range(clicks)]
            browser.close()
    finally:
        server.stop()
    return {"click_browser_ms": round(1000 * statistics.median(times), 1)}


def probe_sessions(dataset_name: str, sessions: int) -> dict:
    from playwright.sync_api import sync_playwright

    server = _Server()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            first = _open(browser.new_context(), server.url, dataset_name)
            _click_next(first)
            time.sleep(1)
            rss0 = _rss_mib(server.proc.pid)
            pages = []
            for _ in range(sessions):
                p = _open(browser.new_context(), server.url, dataset_name)
                _click_next(p)
                pages.append(p)
            time.sleep(1)
            rss1 = _rss_mib(server.proc.pid)
            browser.close()
    finally:
        server.stop()
    return {"rss_per_session_mib": round((rss1 - rss0) / max(1, sessions), 2)}


if __name__ == "__main__":
    kind, name, clicks, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    result = {"interaction": lambda: probe_interaction(name, clicks), "click": lambda: probe_click(name, clicks),
              "sessions": lambda: probe_sessions(name, sessions)}[kind]()
    print(json.dumps(result))
