"""The Explore page in a real Chromium: results in view, slow work that can be confirmed,
followed and cancelled, and one FiftyOne App session known to every page.

Helpers come from test_browser (never its tests or fixtures); this module uses the test
process's shared server (conftest's `server`) and its own browser. With CAM_EXPLORER_DOCS_SCREENSHOTS=1 it writes
docs/explore.png, docs/explore-1280.png and docs/explore-1600.png.
"""
from __future__ import annotations

import os
import re
import socket
import time

import pytest
from test_browser import (
    ARTIFACTS,
    DOCS,
    RUN_TIMEOUT,
    UI_TIMEOUT,
    Server,
    _save_small,
    add_to_multiselect,
    open_app,
    overlay,
    screenshot,
    settle,
    widget,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from playwright.sync_api import Browser, Page, expect  # noqa: E402


def _sample_url(server: Server, name: str, page: str = "") -> str:
    """A link to the demo sample with this file name (the URL is the app's state)."""
    from camcore import demo_data

    dataset = demo_data.ensure_demo_dataset()
    ids, paths = dataset.values(["id", "filepath"])
    [sid] = [i for i, p in zip(ids, paths, strict=True) if os.path.basename(p) == name]
    return f"{server.url}/{page}?dataset={dataset.name}&sample={sid}&model=efficientnet_lite0"


def _page(browser: Browser, width: int, height: int) -> Page:
    return browser.new_context(viewport={"width": width, "height": height}).new_page()


def _viewport_shot(page: Page, name: str, docs: bool = True) -> None:
    """What a user sees without scrolling, into test-artifacts/ (and docs/ when asked)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    if docs and os.environ.get("CAM_EXPLORER_DOCS_SCREENSHOTS") == "1":
        _save_small(path, DOCS / f"{name}.png")


def _main_map(page: Page):
    """The main heatmap's <img> (the first overlay on the page: the grid comes after it)."""
    return overlay(page, "Grad-CAM · head").first.locator("img")


# -- results in view ---------------------------------------------------------------------------

def test_first_map_is_above_the_fold_and_chips_wrap(server: Server, browser: Browser):
    page = _page(browser, 1280, 800)
    try:
        open_app(page, _sample_url(server, "astronaut.png"))  # square: the tallest demo map
        expect(_main_map(page)).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        box = _main_map(page).bounding_box()
        assert box is not None
        assert box["y"] >= 0 and box["y"] + box["height"] <= 800, box  # fully visible, no scrolling
        assert box["height"] >= 250, box  # and not a thumbnail
        _viewport_shot(page, "explore-1280")

        # Chips wrap inside the box: every chosen method stays visible, none shrinks to "×".
        for label in ("Grad-CAM++", "XGrad-CAM", "Eigen-CAM", "Layer-CAM"):
            add_to_multiselect(page, "Methods", label)
            settle(page)
        box = widget(page, "stMultiSelect", "Methods")
        frame = box.locator(".react-aria-ComboBox").bounding_box()
        chips = box.locator(".react-aria-ComboBox").get_by_role("group", name="Selected values").locator("[data-tag]")
        expect(chips).to_have_count(5)
        for i in range(5):
            chip = chips.nth(i).bounding_box()
            assert chip["x"] >= frame["x"] - 1 and chip["x"] + chip["width"] <= frame["x"] + frame["width"] + 1, \
                (i, chip, frame)
            assert chip["width"] > 40, (i, chip)  # the label is shown, not squeezed to its "×"
        page.keyboard.press("Escape")
        expect(_main_map(page)).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        box = _main_map(page).bounding_box()
        assert box["y"] + box["height"] <= 800, box  # still above the fold with five methods
        screenshot(page, "explore")
    finally:
        page.context.close()
    page = _page(browser, 1600, 1000)
    try:
        open_app(page, _sample_url(server, "chelsea.png"))
        expect(_main_map(page)).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        box = _main_map(page).bounding_box()
        assert box["y"] + box["height"] <= 1000, box
        _viewport_shot(page, "explore-1600")
    finally:
        page.context.close()


# -- slow work: a go first, progress with an ETA, Cancel and Stop ---------------------------------

def _progress(page: Page):
    return page.get_by_test_id("stProgress")


def test_scorecam_asks_first_then_cancel_keeps_the_maps(server: Server, browser: Browser):
    page = _page(browser, 1280, 800)
    try:
        open_app(page, _sample_url(server, "coffee.png"))
        expect(_main_map(page)).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        add_to_multiselect(page, "Methods", "Score-CAM  (slow)")
        # The multiselect keeps the focus: its "click outside" swallows the next click (Streamlit's
        # combobox, a user sees it too). Click somewhere neutral first.
        page.get_by_role("heading", name="coffee.png").click()
        # Not started silently: a button says what it costs (1,280 channels on head).
        run = page.get_by_role("button", name=re.compile(r"Run Score-CAM on head \(~\d+ (s|min)\)"))
        expect(run).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        expect(page.get_by_text(re.compile(r"1,280 forwards"))).to_be_visible()
        expect(_main_map(page)).to_be_visible()  # what is computed stays on screen
        push = page.get_by_role("button", name=re.compile(r"^Push 1 heatmap"))
        expect(push).to_be_enabled()

        # Go: progress with an ETA; the Grad-CAM map and the save section stay, fresh (not stale).
        run.click()
        bar = _progress(page).filter(has_text=re.compile(r"Score-CAM on head \(1/1\) · Score-CAM: \d+/1280 channels"))
        expect(bar).to_be_visible(timeout=RUN_TIMEOUT)
        expect(bar).to_contain_text("ETA")
        expect(_main_map(page)).to_be_visible()
        expect(push).to_be_enabled()
        expect(page.locator('[data-stale="true"]').filter(has=push)).to_have_count(0)

        # Streamlit's own Stop: no frozen progress; a note says it stopped; maps and save section stay.
        page.get_by_test_id("stStatusWidget").get_by_role("button", name="Stop").click()
        expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning",
                                                               timeout=RUN_TIMEOUT)
        expect(_progress(page).filter(visible=True)).to_have_count(0)
        expect(page.get_by_test_id("stAlert").filter(has_text="Stopped before the slow heatmaps")).to_be_visible()
        expect(_main_map(page)).to_be_visible()
        expect(push).to_be_visible()

        # The next clicks (full reruns): Score-CAM is cancelled, not restarted behind the user's back.
        smooth = page.get_by_role("switch", name="eigen_smooth")
        for on in (True, False):
            page.get_by_text("eigen_smooth", exact=True).click()  # its label: the input sits under it
            expect(smooth).to_be_checked(checked=on, timeout=UI_TIMEOUT)
            settle(page)
        run = page.get_by_role("button", name=re.compile(r"Run Score-CAM on head \(~"))
        expect(run).to_be_visible(timeout=RUN_TIMEOUT)
        expect(page.get_by_text(re.compile(r"^Cancelled\. Score-CAM on head runs the model"))).to_be_visible()
        expect(_progress(page)).to_have_count(0)
        expect(page.get_by_role("heading", name="coffee.png")).to_be_visible()

        # Cancel: stops within a batch, keeps the maps, says "cancelled", the page goes idle.
        run.click()
        expect(bar).to_be_visible(timeout=RUN_TIMEOUT)
        cancel = page.get_by_role("button", name="Cancel")
        clicked = time.monotonic()
        cancel.click()
        said = page.get_by_test_id("stAlert").filter(has_text=re.compile(r"Cancelled Score-CAM on head at \d+%"))
        expect(said).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        assert time.monotonic() - clicked < 90, "Cancel did not stop within a batch"
        expect(said).to_contain_text("maps already computed are kept")
        expect(_main_map(page)).to_be_visible()
        expect(page.get_by_role("button", name=re.compile(r"^Push 1 heatmap"))).to_be_enabled()
        expect(page.get_by_role("button", name=re.compile(r"Run Score-CAM on head \(~"))).to_be_visible()
        expect(_progress(page)).to_have_count(0)
        _viewport_shot(page, "explore-cancelled", docs=False)
    finally:
        page.context.close()


# -- one FiftyOne App session, known to every page ----------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_in_app_is_enabled_after_a_findings_launch(server: Server, browser: Browser):
    import uuid

    import fiftyone as fo

    from camcore import demo_data, store

    # A dataset of its own: the server caches each dataset's findings for a minute.
    ds = fo.Dataset(f"app-session-{uuid.uuid4().hex[:8]}", persistent=True)
    ds.add_sample(fo.Sample(filepath=demo_data.ensure_demo_dataset().first().filepath))
    store.add_finding(ds, ds.first().id, "background-bias", "the App button test", None)
    port = _free_port()
    page = _page(browser, 1400, 1000)
    try:
        open_app(page, f"{server.url}/findings?dataset={ds.name}")
        expect(page.get_by_role("heading", name=f"Findings in {ds.name}")).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        field = widget(page, "stNumberInput", "App port").get_by_role("spinbutton")
        field.fill(str(port))
        field.press("Enter")
        settle(page)
        page.get_by_role("button", name="Launch the FiftyOne App on these samples").click()
        expect(page.get_by_role("link", name=re.compile(rf"Go to the FiftyOne App \(port {port}\)"))).to_be_visible(
            timeout=RUN_TIMEOUT)
        settle(page)

        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
        link = page.get_by_role("link", name="Open this sample in the FiftyOne App")
        expect(link).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        expect(link).to_have_attribute("href", re.compile(rf"^http://localhost:{port}/datasets/{ds.name}"))
        # Streamlit draws a disabled link button with tabindex -1 and a "disabled" attribute
        expect(link).to_have_attribute("tabindex", "0")
        assert link.get_attribute("disabled") is None
    finally:
        page.context.close()
        ds.delete()
