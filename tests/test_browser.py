"""The app in a real Chromium against `streamlit run` (what a user sees, pixels included).

The test process's shared server (conftest's `server`) serves every test except the fresh-server
ones (a deep link as a server's first request, a killed server), which start their own. Waits use `expect(...)` on test ids, never
sleeps. Screenshots go to test-artifacts/; with CAM_EXPLORER_DOCS_SCREENSHOTS=1 they are also
written (downscaled) to docs/explore.png, docs/deeplab-untrained.png and docs/findings.png.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, CHROMIUM, again_until

from camcore import models
from server_forks import start_server
from ui import router

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
VIEWPORT = {"width": 1400, "height": 1500}
DEMO = "cam-explorer-demo"
EFFICIENTNET = models.MODELS["efficientnet_lite0"].label  # what the Model selectbox shows
DEEPLAB = models.MODELS["deeplabv3"].label
RUN_TIMEOUT = 180_000  # ms: a first model load + pass on two CPU cores
UI_TIMEOUT = 30_000

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no {CHROMIUM}: run `make chromium`", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from playwright.sync_api import Browser, Locator, Page, expect  # noqa: E402


# -- the server ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict[str, str]:
    """The test session's environment (database, CAM_EXPLORER_HOME), offline and with an empty
    torch hub cache, so "no pretrained DeepLabV3 weights" holds on a developer's machine too."""
    home = Path(os.environ.get("CAM_EXPLORER_HOME") or tempfile.mkdtemp(prefix="cam-explorer-browser-"))
    return dict(os.environ, CAM_EXPLORER_OFFLINE="1", TORCH_HOME=str(home / "torch-home"))


def _cpu_seconds(pid: int) -> float:
    """CPU seconds a live process has used (its own and its waited-for children's), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (any of its threads may have started them)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # gone meanwhile
            pass
    return kids


# Each server's CPU (at health, and in all) and life, one file per test process: where the browser
# files' CPU goes (tests/timeline.py prints them; issue 26 item 7).
SERVERS = ARTIFACTS / "timeline" / "servers"


class Server:
    def __init__(self, log: Path):
        self.log = log
        self.started = time.monotonic()
        self.port = _free_port()
        self.url = f"http://localhost:{self.port}"
        log.write_bytes(b"")
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop(); the server appends to it too
        self.proc = start_server(["run", "app.py", "--server.port", str(self.port), "--server.headless", "true"],
                                 _server_env(), log)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_cpu = _cpu_seconds(self.proc.pid)
        self.modules: list[str] = []  # the test modules it served (a shared server serves several)

    def _wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)  # polling a socket, not waiting on the UI
        raise RuntimeError(f"streamlit did not answer on {self.url} within {timeout:.0f}s:\n{self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def serve(self, module: str) -> None:
        """Mark in the log (and the CPU record) that `module`'s tests start on this server."""
        self.modules.append(module)
        self._log.write(f"\n===== {module} starts on this server =====\n".encode())
        self._log.flush()

    def reusable(self, quiet_cpu: float = 0.3, wait: float = 60.0) -> bool:
        """Whether the next module may use this server as a fresh one would be: it is alive, has
        started no process (a FiftyOne App a test launched) and is idle (a closed tab's run can go
        on in the server: wait up to `wait` s for it to end)."""
        if self.proc.poll() is not None or _children(self.proc.pid):
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            before = _cpu_seconds(self.proc.pid)
            time.sleep(1.0)  # measuring a process's CPU over a second, not waiting on the UI
            if _cpu_seconds(self.proc.pid) - before < quiet_cpu:
                return True
        return False

    def _record(self) -> None:
        try:
            total = _cpu_seconds(self.proc.pid)
        except OSError:  # already gone
            return
        SERVERS.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(SERVERS / f"{worker}.tsv", "a") as f:
            modules = ",".join(getattr(self, "modules", []))
            f.write(f"{worker}\t{getattr(self, 'startup_cpu', 0.0):.2f}\t{total:.2f}\t"
                    f"{time.monotonic() - self.started:.1f}\t{self.log.name}\t{modules}\n")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._record()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    p = context.new_page()
    yield p
    context.close()


# -- helpers ------------------------------------------------------------------------------------

def settle(page: Page, timeout: int = RUN_TIMEOUT) -> None:
    """Wait until the script run is over, then check that no exception is on the page."""
    app = page.get_by_test_id("stApp")
    expect(app).to_have_attribute("data-test-script-state", "notRunning", timeout=timeout)
    expect(page.get_by_test_id("stSpinner")).to_have_count(0, timeout=timeout)
    assert_no_exception(page)


def assert_no_exception(page: Page) -> None:
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_test_id("stAlert").filter(has_text="Something went wrong")).to_have_count(0)


def open_app(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.get_by_test_id("stApp")).to_be_visible(timeout=UI_TIMEOUT)
    expect(page.get_by_test_id("stSidebar").get_by_text("Dataset", exact=True)).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)


def widget(page: Page, test_id: str, label: str, scope: Page | Locator | None = None) -> Locator:
    """The widget of this kind whose label is exactly `label`."""
    scope = scope or page
    return scope.get_by_test_id(test_id).filter(
        has=page.get_by_test_id("stWidgetLabel").get_by_text(label, exact=True))


def open_dropdown(page: Page, box: Locator) -> None:
    """Open a selectbox's or multiselect's list of options. Scroll first: the list closes when its
    page scrolls, as a click's own scrolling would do. The mouse leaves first: a widget's help
    tooltip stays up while the mouse is over the widget, and covers the widget below it."""
    box.scroll_into_view_if_needed()
    page.mouse.move(0, 0)
    expect(page.get_by_test_id("stTooltipContent")).to_have_count(0, timeout=UI_TIMEOUT)
    box.get_by_role("button", name="Open").click()


def pick_option(page: Page, box: Locator, option: Locator) -> None:
    """Open `box`'s list and click `option` in it. Under a whole suite's load the list once closed
    before its option showed (test_browser_daily: the sidebar's expander still settling, and a list
    closes when its page moves): then it is opened again (Escape first closes a list still open),
    three times at most. An option that is not there still fails, on the last try."""
    again_until(lambda: open_dropdown(page, box), lambda: option.click(timeout=UI_TIMEOUT),
                between=lambda: page.keyboard.press("Escape"))


def choose(page: Page, label: str, option: str, scope: Page | Locator | None = None) -> None:
    """Pick `option` in the selectbox labelled `label`."""
    box = widget(page, "stSelectbox", label, scope)
    expect(box).to_have_count(1, timeout=RUN_TIMEOUT)
    pick_option(page, box, page.get_by_role("option", name=option, exact=True))
    expect(box.get_by_role("combobox")).to_have_value(option)


def open_sample(page: Page, name: str) -> None:
    """Open a sample as a user does: search its path in the sidebar, pick the one match."""
    sidebar = page.get_by_test_id("stSidebar")
    box = widget(page, "stTextInput", "Find by file path", sidebar).get_by_role("textbox")
    box.fill(name)
    box.press("Enter")
    expect(box).to_have_value("", timeout=RUN_TIMEOUT)  # searched once: its text does not stay to run again
    settle(page)
    opened = sidebar.get_by_test_id("stText").filter(has_text=re.compile(rf"(^|\/){re.escape(name)}$"))
    matches = sidebar.get_by_test_id("stSelectbox").filter(
        has=page.get_by_test_id("stWidgetLabel").get_by_text(re.compile(r"^Matches for ")))
    if matches.count():  # several paths contain it: pick the one (a single match opens at once)
        pick_option(page, matches, page.get_by_role("option", name=re.compile(rf"(^|\/){re.escape(name)}$")).first)
    expect(opened).to_have_count(1, timeout=RUN_TIMEOUT)
    settle(page)


def add_to_multiselect(page: Page, label: str, option: str) -> None:
    box = widget(page, "stMultiSelect", label)
    expect(box).to_have_count(1, timeout=RUN_TIMEOUT)
    pick_option(page, box, page.get_by_role("option", name=option, exact=True))
    page.keyboard.press("Escape")
    # as long as a run: under a whole suite's load the chip was not there after 5 s (test_browser_daily, once)
    chip = box.get_by_role("group", name="Selected values").get_by_role("button", name=f"Remove {option}", exact=True)
    expect(chip).to_have_count(1, timeout=RUN_TIMEOUT)


def remove_from_multiselect(page: Page, label: str, option: str) -> None:
    box = widget(page, "stMultiSelect", label)
    box.scroll_into_view_if_needed()
    page.mouse.move(0, 0)  # as in open_dropdown: no tooltip over the chip
    expect(page.get_by_test_id("stTooltipContent")).to_have_count(0, timeout=UI_TIMEOUT)
    box.get_by_role("button", name=f"Remove {option}", exact=True).click()


def set_input_size(page: Page, px: int) -> None:
    """Move the sidebar's "Input short side (px)" slider down to `px` with the keyboard."""
    size = widget(page, "stSlider", "Input short side (px)", page.get_by_test_id("stSidebar"))
    thumb = size.get_by_role("slider")
    thumb.focus()
    while size.get_by_test_id("stSliderThumbValue").inner_text() != str(px):
        before = size.get_by_test_id("stSliderThumbValue").inner_text()
        assert int(before) > px, before
        thumb.press("ArrowLeft")
        expect(size.get_by_test_id("stSliderThumbValue")).not_to_have_text(before)
    settle(page)


def overlay(page: Page, caption_start: str) -> Locator:
    """The image whose caption starts with `caption_start` (e.g. 'Grad-CAM · head')."""
    return page.get_by_test_id("stImage").filter(
        has=page.get_by_test_id("stImageCaption").get_by_text(re.compile("^" + re.escape(caption_start))))


def screenshot(page: Page, name: str) -> Path:
    """Full-page screenshot into test-artifacts/; also into docs/ when asked (small PNGs)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # Streamlit scrolls inside its own containers, so full_page alone stops at the viewport:
    # grow the viewport to the content first, then put it back.
    height = page.evaluate("""() => Math.max(...['stMain', 'stAppViewContainer', 'stSidebarContent'].map(
        id => document.querySelector(`[data-testid="${id}"]`)?.scrollHeight || 0))""")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height))})
    try:
        settle(page)  # a resize can re-layout (images, charts): wait for the app to be idle again
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(VIEWPORT)
    if os.environ.get("CAM_EXPLORER_DOCS_SCREENSHOTS") == "1":
        _save_small(path, DOCS / f"{name}.png")
    return path


def _save_small(src: Path, dest: Path, limit: int = 400_000) -> None:
    from PIL import Image

    dest.parent.mkdir(exist_ok=True)
    image = Image.open(src).convert("RGB")
    width = image.width
    while True:
        out = image if width == image.width else image.resize(
            (width, round(image.height * width / image.width)), Image.LANCZOS)
        out = out.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        out.save(dest, optimize=True)
        if dest.stat().st_size < limit or width < 500:
            return
        width = int(width * 0.85)


# -- tests --------------------------------------------------------------------------------------

def test_explore_overlay_opacity_and_push(server: Server, page: Page):
    import fiftyone as fo

    sent: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    open_app(page, server.url)
    open_sample(page, "chelsea.png")
    choose(page, "Model", EFFICIENTNET, page.get_by_test_id("stSidebar"))
    settle(page)
    expect(page.get_by_role("heading", name="chelsea.png")).to_be_visible()
    expect(overlay(page, "Grad-CAM · head")).to_be_visible(timeout=RUN_TIMEOUT)
    add_to_multiselect(page, "Layers", "stage5")
    settle(page)
    add_to_multiselect(page, "Methods", "Eigen-CAM")
    settle(page)
    for caption in ("Grad-CAM · head", "Grad-CAM · stage5", "Eigen-CAM · head", "Eigen-CAM · stage5"):
        expect(overlay(page, caption)).to_have_count(1 if caption != "Grad-CAM · head" else 2)  # main + grid
    # control for the check below: sidebar and Methods changes are full reruns (no fragment id)
    assert [r for r in _rerun_requests(sent) if not r.fragment_id], "no full rerun seen: decoding broken?"
    main_image = overlay(page, "Grad-CAM · head").first.locator("img")
    before = main_image.get_attribute("src")

    # Opacity redraws inside the fragment: the image changes, the model does not run again.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {  // a spinner, or st.status saying "Computing…", means the model ran
            if (document.querySelector('[data-testid="stSpinner"]')) window.__seen.push('spinner');
            for (const el of document.querySelectorAll('[data-testid="stExpander"] summary')) {
                if (el.textContent.includes('Computing')) window.__seen.push('status: ' + el.textContent);
            }
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    sent.clear()
    slider = widget(page, "stSlider", "Heatmap opacity")
    thumb = slider.get_by_role("slider")
    thumb.focus()
    thumb.press("ArrowRight")
    thumb.press("ArrowRight")
    expect(slider.get_by_test_id("stSliderThumbValue")).to_have_text("0.60")
    expect(main_image).not_to_have_attribute("src", before or "", timeout=UI_TIMEOUT)
    settle(page)
    assert page.evaluate("window.__seen") == []
    reruns = _rerun_requests(sent)
    assert reruns, "moving the slider sent no rerun request"
    assert all(r.fragment_id for r in reruns), "the slider reran the whole script, not just the fragment"

    screenshot(page, "explore")

    push = page.get_by_role("button", name=re.compile(r"^Push 4 heatmap"))
    push.click()
    # "Replaced fields:" when this database holds chelsea's fields from an earlier run
    success = page.get_by_test_id("stAlert").filter(has_text=re.compile(r"(Saved|Replaced) fields:"))
    expect(success).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    fields = re.findall(r"cam_\w+", success.inner_text())
    assert len(fields) == 4, success.inner_text()

    dataset = fo.load_dataset(DEMO)
    dataset.reload()
    sample = dataset.match({"filepath": {"$regex": "chelsea\\.png$"}}).first()
    sample.reload()
    for field in fields:
        heat = sample[field]
        assert isinstance(heat, fo.Heatmap), (field, heat)
        assert heat.map_path and Path(heat.map_path).is_file(), heat.map_path


def _rerun_requests(frames: list[bytes]) -> list:
    from streamlit.proto.BackMsg_pb2 import BackMsg

    out = []
    for frame in frames:
        if not isinstance(frame, bytes):
            continue
        msg = BackMsg()
        try:
            msg.ParseFromString(frame)
        except Exception:  # not a BackMsg (should not happen): ignore it
            continue
        if msg.WhichOneof("type") == "rerun_script":
            out.append(msg.rerun_script)
    return out


def test_record_a_finding_and_see_it_on_findings(server: Server, page: Page):
    from camcore import store

    note = f"the silhouette is read as a dog (test {uuid.uuid4().hex[:6]})"
    open_app(page, server.url)
    open_sample(page, "horse.png")
    settle(page)
    expect(overlay(page, "Grad-CAM · head")).to_be_visible(timeout=RUN_TIMEOUT)
    form = page.get_by_test_id("stForm")
    choose(page, "Finding", "misclassification", form)
    form.get_by_label("Note").fill(note)
    form.get_by_role("button", name="Save finding").click()
    expect(page.get_by_test_id("stAlert").filter(has_text="Saved finding 'misclassification'")).to_be_visible(
        timeout=RUN_TIMEOUT)
    settle(page)

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Findings").click()
    expect(page.get_by_role("heading", name=f"Findings in {DEMO}")).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    expect(page).to_have_url(re.compile(r"/findings(\?|$)"))  # the query names the state
    expect(page.get_by_test_id("stCaptionContainer").filter(has_text="horse.png: misclassification").first
           ).to_be_visible()
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    screenshot(page, "findings")
    dataset = store.load_dataset(DEMO)
    dataset.reload()  # the server process wrote it: this process's copy may predate the findings field
    rows = store.list_findings(dataset)
    assert any(r["note"] == note and r["tag"] == "misclassification" for r in rows), rows


def test_deeplab_offline_then_untrained(server: Server, page: Page):
    sidebar = page.get_by_test_id("stSidebar")
    open_app(page, server.url)
    open_sample(page, "astronaut.png")
    settle(page)
    choose(page, "Model", DEEPLAB, sidebar)
    error = page.get_by_test_id("stAlert").filter(has_text="No pretrained weights")
    expect(error).to_be_visible(timeout=RUN_TIMEOUT)
    expect(error).to_contain_text("To provide them")
    settle(page)
    set_input_size(page, 256)
    choose(page, "Weights", "untrained (random weights)", sidebar)
    expect(page.get_by_test_id("stAlert").filter(has_text="UNTRAINED weights")).to_be_visible(timeout=RUN_TIMEOUT)
    expect(overlay(page, "Grad-CAM · layer4")).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    expect(page.get_by_text(re.compile(r"input \d+×256|input 256×\d+"))).to_be_visible()
    expect(error).to_have_count(0)
    screenshot(page, "deeplab-untrained")


def test_deep_link_on_a_fresh_server(browser: Browser):
    """The first request a freshly started server gets is /findings: app.py must run."""
    ARTIFACTS.mkdir(exist_ok=True)
    fresh = Server(ARTIFACTS / "streamlit-fresh-server.log")
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(f"{fresh.url}/findings")
        expect(page.get_by_test_id("stApp")).to_be_visible(timeout=UI_TIMEOUT)
        expect(page.get_by_role("heading", name=f"Findings in {DEMO}")).to_be_visible(timeout=90_000)  # no model: the sidebar and a query
        settle(page)
        sidebar = page.get_by_test_id("stSidebar")
        expect(widget(page, "stSelectbox", "Dataset", sidebar)).to_be_visible()
        expect(widget(page, "stSelectbox", "Dataset", sidebar).get_by_role("combobox")).to_have_value(DEMO)
        # the app's own navigation (Explore, ..., Findings), not the legacy listing of app + pages/*.py
        titles = [title for _file, title, _icon, _url in router.PAGES]
        assert titles[0] == "Explore" and "Findings" in titles, titles
        links = page.get_by_test_id("stSidebarNav").get_by_test_id("stSidebarNavLink")
        expect(links).to_have_count(len(titles))
        expect(links).to_have_text([re.compile(rf"{re.escape(t)}$") for t in titles])  # icon name, then title
        expect(page).to_have_url(re.compile(r"/findings(\?|$)"))  # the query names the state
    finally:
        context.close()
        fresh.stop()


def test_compare_grid_scores_and_the_layer_progression_study(server: Server, page: Page):
    sidebar = page.get_by_test_id("stSidebar")
    open_app(page, server.url)
    choose(page, "Model", EFFICIENTNET, sidebar)
    choose(page, "Weights", "pretrained (auto)", sidebar)
    settle(page)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    expect(page.get_by_role("heading", name=re.compile("^Compare layers and methods"))).to_be_visible(
        timeout=RUN_TIMEOUT)
    settle(page)
    add_to_multiselect(page, "Columns: methods", "Grad-CAM++")
    settle(page)
    scores = page.get_by_test_id("stCaptionContainer").filter(has_text="keep Δ")
    expect(scores).to_have_count(2, timeout=RUN_TIMEOUT)  # one faithfulness line under each map

    page.get_by_role("button", name=re.compile("^Layer progression")).click()
    expect(page.get_by_test_id("stAlert").filter(has_text="No pretrained weights")).to_be_visible(
        timeout=RUN_TIMEOUT)
    settle(page)
    set_input_size(page, 256)  # before the weights: DeepLabV3's four layers computed once, at the smallest size
    choose(page, "Weights", "untrained (random weights)", sidebar)
    settle(page)
    expect(widget(page, "stSelectbox", "Model", sidebar).get_by_role("combobox")).to_have_value(DEEPLAB)
    # settle() can return before the rerun that the weights choice asked for has started: wait for
    # the rows themselves (a DeepLabV3 pass over four layers takes seconds on two busy cores).
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        expect(page.get_by_test_id("stMarkdownContainer").get_by_text(layer, exact=True)).to_have_count(
            1, timeout=RUN_TIMEOUT)
    expect(scores).to_have_count(4, timeout=RUN_TIMEOUT)  # four rows x Grad-CAM
    screenshot(page, "compare")


def test_app_killed_mid_batch_loses_nothing(browser: Browser):
    """SIGKILL the Streamlit server while the Batch page is writing: every heatmap it wrote has its
    file, and running the same batch again computes only the rest."""
    import signal

    import fiftyone as fo

    from camcore import batch, demo_data
    from fo_helpers import coded_identity

    files = demo_data.ensure_demo_dataset().values("filepath")
    n = 48  # six chunks of 8 with the default model: the kill lands after the first and before the last
    ds = fo.Dataset(f"killed-{uuid.uuid4().hex[:8]}", persistent=True)  # the server loads it by name
    ds.add_samples([fo.Sample(filepath=files[i % len(files)]) for i in range(n)])
    field = coded_identity(model=models.DEFAULT_MODEL, method="gradcam", layer=models.get_spec(models.DEFAULT_MODEL)
                            .default_layer, target=batch.PREDICTED).field_name
    ARTIFACTS.mkdir(exist_ok=True)
    fresh = Server(ARTIFACTS / "streamlit-killed-server.log")
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        sidebar = page.get_by_test_id("stSidebar")
        open_app(page, fresh.url)
        choose(page, "Dataset", ds.name, sidebar)
        settle(page)
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Batch").click()
        run = page.get_by_role("button", name="Run batch")
        expect(run).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        run.click()
        # progress "done/total · rate · ETA": kill once a chunk is written and before the last one
        expect(page.get_by_text(re.compile(rf"^(8|16|24|32|40)/{n} ·"))).to_be_visible(timeout=RUN_TIMEOUT)
        os.kill(fresh.proc.pid, signal.SIGKILL)
        fresh.proc.wait(timeout=30)
    finally:
        context.close()
        fresh.stop()
    try:
        ds.reload()
        labels = ds.values(field)
        written = [label for label in labels if label is not None]
        assert 8 <= len(written) < n, len(written)
        assert all(os.path.isfile(label.map_path) for label in written), "a label without its file"
        again = batch.run_batch(ds, batch.BatchOptions(models.DEFAULT_MODEL, "auto", ["gradcam"],
                                                       [models.get_spec(models.DEFAULT_MODEL).default_layer],
                                                       batch.PREDICTED))
        assert (again.skipped, again.done, again.failed) == (len(written), n - len(written), [])
        ds.reload()
        assert all(label is not None and os.path.isfile(label.map_path) for label in ds.values(field))
    finally:
        ds.delete()


# -- real datasets: repeated names, positions, the URL as state ---------------------------------

@pytest.fixture
def repeated_names():
    """a/frame.jpg, a/other.jpg, b/frame.jpg (copies of demo images) in a persistent dataset that
    the server process loads by name."""
    import shutil

    import fiftyone as fo

    from camcore import demo_data

    src = demo_data.ensure_demo_dataset().values("filepath")[:3]
    root = Path(tempfile.mkdtemp(prefix="cam-explorer-repeated-"))
    paths = []
    for path, rel in zip(src, ("a/frame.jpg", "a/other.jpg", "b/frame.jpg")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / rel)
        paths.append(str(root / rel))
    ds = fo.Dataset(f"repeated-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    yield ds
    ds.delete()
    shutil.rmtree(root, ignore_errors=True)


def _sidebar_path(page: Page) -> Locator:
    return page.get_by_test_id("stSidebar").get_by_test_id("stText").first


def test_next_reaches_every_sample_with_repeated_names_and_the_url_follows(server: Server, page: Page,
                                                                            repeated_names):
    ids = repeated_names.values("id")
    open_app(page, f"{server.url}/findings?dataset={repeated_names.name}")
    expect(page.get_by_role("heading", name=f"Findings in {repeated_names.name}")).to_be_visible(
        timeout=RUN_TIMEOUT)
    sidebar = page.get_by_test_id("stSidebar")
    seen = []
    for k in range(4):
        expect(page).to_have_url(re.compile(rf"sample={ids[k % 3]}"), timeout=UI_TIMEOUT)  # no lag of one step
        seen.append(_sidebar_path(page).inner_text())
        if k < 3:
            sidebar.get_by_role("button", name="▶").click()
            settle(page)
    assert seen == ["a/frame.jpg", "a/other.jpg", "b/frame.jpg", "a/frame.jpg"], seen
    sidebar.get_by_role("button", name="◀").click()
    settle(page)
    expect(_sidebar_path(page)).to_have_text("b/frame.jpg")
    expect(page).to_have_url(re.compile(rf"sample={ids[2]}"))


def test_a_link_restores_sample_model_and_methods_on_a_fresh_server(browser: Browser, repeated_names):
    ids = repeated_names.values("id")
    ARTIFACTS.mkdir(exist_ok=True)
    fresh = Server(ARTIFACTS / "streamlit-link-server.log")
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(f"{fresh.url}/explore?dataset={repeated_names.name}&sample={ids[2]}"
                  "&model=efficientnet_lite0&methods=gradcam,eigencam&layers=head")
        expect(page.get_by_test_id("stApp")).to_be_visible(timeout=UI_TIMEOUT)
        expect(overlay(page, "Eigen-CAM · head")).to_have_count(1, timeout=RUN_TIMEOUT)
        settle(page)
        expect(_sidebar_path(page)).to_have_text("b/frame.jpg")
        expect(page.get_by_test_id("stText").filter(has_text=f"id {ids[2]}")).to_have_count(1)
        expect(page).to_have_url(re.compile(rf"/(explore)?\?.*sample={ids[2]}"))  # Explore is the default page: /
        expect(page).to_have_url(re.compile(r"methods=gradcam%2Ceigencam|methods=gradcam,eigencam"))
        page.get_by_test_id("stSidebar").get_by_role("button", name="◀").click()
        expect(_sidebar_path(page)).to_have_text("a/other.jpg", timeout=RUN_TIMEOUT)
        settle(page)
        expect(page.get_by_test_id("stText").filter(has_text=f"id {ids[1]}")).to_have_count(1)
        expect(page).to_have_url(re.compile(rf"sample={ids[1]}"))  # the same run wrote it: no lag
        expect(page).to_have_url(re.compile(r"methods=gradcam(%2C|,)eigencam"))
    finally:
        context.close()
        fresh.stop()
