"""Compare and Batch in a real Chromium (#17 items 1, 3, 7, 9): what a user sees at 1280x800.

The helpers (server, waits, widgets) come from test_browser; this module uses the test process's
shared server (conftest's `server`) and its own browser. Screenshots go to test-artifacts/; with
CAM_EXPLORER_DOCS_SCREENSHOTS=1 also (small) to docs/compare-1280.png, docs/compare-1600.png,
docs/batch-1280.png and docs/batch-1600.png.
"""
from __future__ import annotations

import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import again_until
from test_browser import (
    ARTIFACTS,
    DOCS,
    RUN_TIMEOUT,
    UI_TIMEOUT,
    Server,
    _save_small,
    add_to_multiselect,
    choose,
    open_app,
    remove_from_multiselect,
    settle,
    widget,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from playwright.sync_api import Browser, Page, expect  # noqa: E402

SMALL = {"width": 1280, "height": 800}
LARGE = {"width": 1600, "height": 1000}
# Eight methods that one pass feeds (no Score-CAM: minutes on a small CPU), on two layers.
EIGHT = ("gradcam", "gradcam++", "xgradcam", "layercam", "eigencam", "eigengradcam", "hirescam",
         "gradcamelementwise")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=SMALL)
    p = context.new_page()
    yield p
    context.close()


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot at the page's own viewport width (test-artifacts/, and docs/ when asked)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(...['stMain', 'stAppViewContainer', 'stSidebarContent'].map(
        id => document.querySelector(`[data-testid="${id}"]`)?.scrollHeight || 0))""")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], int(height))})
    try:
        settle(page)
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)
    if os.environ.get("CAM_EXPLORER_DOCS_SCREENSHOTS") == "1":
        _save_small(path, DOCS / f"{name}.png")
    return path


def _toggle(page: Page, label: str):
    return widget(page, "stCheckbox", label).locator("input")


def _nav(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()


# -- #17 items 1 and 3: a study leaves every widget showing what it computes --------------------

def test_the_all_methods_study_turns_both_switches_on_and_offers_untrained_weights(server: Server,
                                                                                    page: Page):
    open_app(page, f"{server.url}/compare")
    expect(page.get_by_role("heading", name=re.compile("^Compare layers and methods"))).to_be_visible(
        timeout=RUN_TIMEOUT)
    settle(page)
    expect(_toggle(page, "eigen_smooth")).not_to_be_checked()
    expect(_toggle(page, "aug_smooth (slow)")).not_to_be_checked()
    page.get_by_role("button", name=re.compile("^All methods")).click()
    # offline: no DeiT weights; one button to untrained ones
    expect(page.get_by_test_id("stAlert").filter(has_text="No pretrained weights")).to_be_visible(
        timeout=RUN_TIMEOUT)
    untrained = page.get_by_role("button", name=re.compile("Use untrained weights"))
    expect(untrained).to_be_visible()
    untrained.click()
    sidebar = page.get_by_test_id("stSidebar")
    expect(widget(page, "stSelectbox", "Weights", sidebar).get_by_role("combobox")).to_have_value(
        "untrained (random weights)", timeout=RUN_TIMEOUT)
    # The study's switches and methods, shown as soon as the page draws them (the eight maps with
    # aug_smooth then take minutes on a small CPU: not waited for here).
    expect(_toggle(page, "eigen_smooth")).to_be_checked(timeout=RUN_TIMEOUT)
    expect(_toggle(page, "aug_smooth (slow)")).to_be_checked()
    chips = widget(page, "stMultiSelect", "Columns: methods").get_by_role("group", name="Selected values")
    expect(chips.get_by_role("button", name=re.compile("^Remove "))).to_have_count(8)
    expect(page.get_by_test_id("stAlert").filter(has_text="No pretrained weights")).to_have_count(0)


# -- #17 item 9: readable cells at 8 methods, fixed row labels, click to enlarge ------------------

def test_compare_cells_are_readable_with_eight_methods_at_1280(server: Server, page: Page):
    methods = urllib.parse.quote(",".join(EIGHT))  # "+" in a query string would read as a space
    open_app(page, f"{server.url}/compare?model=efficientnet_lite0&methods={methods}&layers=head,stage5")
    expect(page.get_by_role("heading", name=re.compile("^Compare layers and methods"))).to_be_visible(
        timeout=RUN_TIMEOUT)
    maps = page.get_by_test_id("stImage").filter(has=page.get_by_test_id("stImageCaption").get_by_text(
        re.compile(r" · (head|stage5) · no smoothing · pretrained weights · target ")))
    expect(maps).to_have_count(16, timeout=RUN_TIMEOUT)
    settle(page)
    go = page.get_by_role("button", name=re.compile(r"Compute scores \(~"))  # (its icon's name comes first)
    if go.count():  # a busy machine: scores past the page's budget wait for their go
        go.click()
        settle(page)
    scores = page.get_by_test_id("stCaptionContainer").filter(has_text=re.compile(
        r"keep Δ [+-]\d+% · remove Δ [+-]\d+% of the score"))
    expect(scores).to_have_count(16, timeout=RUN_TIMEOUT)
    for i in range(16):
        box = maps.nth(i).locator("img").bounding_box()
        assert box is not None and box["width"] >= 150 and box["height"] >= 100, (i, box)
    for layer in ("head", "stage5"):  # the row labels: one line, never "bl/oc/k1/1"
        label = page.get_by_test_id("stMarkdownContainer").get_by_text(layer, exact=True)
        expect(label).to_have_count(1)
        box = label.bounding_box()
        first_map = maps.first.locator("img").bounding_box()
        assert box is not None and box["height"] < 40, (layer, box)  # one line
        assert box["x"] + box["width"] < first_map["x"], (layer, box, first_map)  # in its own column
    shot(page, "compare-1280")

    # Click to enlarge: a dialog with the full-size map and how it was made.
    page.get_by_test_id("stButton").filter(has_text="Enlarge").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible(timeout=RUN_TIMEOUT)
    big = dialog.get_by_test_id("stImage").locator("img")
    expect(big).to_be_visible()
    expect(dialog.get_by_test_id("stImageCaption")).to_contain_text("Grad-CAM · head · no smoothing")
    assert big.bounding_box()["width"] >= 400, big.bounding_box()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0, timeout=UI_TIMEOUT)

    # #17 item 10: the ROAD curve's expander stays open when its curve is ready.
    road = page.get_by_test_id("stExpander").filter(has_text="ROAD curve")
    road.get_by_text("ROAD curve", exact=False).first.click()
    settle(page)  # opening it reruns the page (on_change): a click during that rerun was lost once, under load
    done = road.get_by_test_id("stCaptionContainer").filter(has_text="ROAD combined")
    # and once more after that settle (a whole run, 2026-12-06): as a user would, again
    again_until(lambda: road.get_by_role("button", name="Compute ROAD").click(),
                lambda: expect(road.get_by_test_id("stProgress").or_(done).first).to_be_visible(timeout=UI_TIMEOUT),
                between=lambda: settle(page))
    expect(done).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    expect(road.get_by_test_id("stCaptionContainer").filter(has_text="ROAD combined")).to_be_visible()
    expect(road.get_by_test_id("stProgress")).to_have_count(0)
    expect(road.locator("[data-testid=stVegaLiteChart], [data-testid=stArrowVegaLiteChart]")).to_have_count(1)

    page.set_viewport_size(LARGE)
    settle(page)
    box = maps.first.locator("img").bounding_box()
    assert box is not None and box["width"] >= 150, box
    shot(page, "compare-1600")
    road.scroll_into_view_if_needed()
    road.screenshot(path=str(ARTIFACTS / "compare-road.png"))


# -- #17 item 7: Batch's Cancel says what was saved; the rerun says what it skips ------------------

@pytest.fixture
def four_samples():
    import fiftyone as fo

    from camcore import demo_data

    files = demo_data.ensure_demo_dataset().values("filepath")[:4]
    ds = fo.Dataset(f"cancel-{uuid.uuid4().hex[:8]}", persistent=True)  # the server loads it by name
    ds.add_samples([fo.Sample(filepath=f) for f in files])
    yield ds
    ds.delete()


def test_batch_cancel_says_what_was_saved_and_the_rerun_what_it_skips(server: Server, page: Page,
                                                                       four_samples):
    sidebar = page.get_by_test_id("stSidebar")
    open_app(page, server.url)
    choose(page, "Dataset", four_samples.name, sidebar)
    settle(page)
    _nav(page, "Batch")
    run = page.get_by_role("button", name="Run batch")
    expect(run).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    # Score-CAM (marked slow) on a 112-channel layer: seconds per sample, time to cancel.
    add_to_multiselect(page, "Methods", "Score-CAM (slow)")
    settle(page)
    add_to_multiselect(page, "Layers", "stage4")
    settle(page)
    remove_from_multiselect(page, "Layers", "head")
    settle(page)
    run.click()
    progress = page.get_by_test_id("stProgress")
    expect(progress.filter(has_text="ETA: estimating")).to_have_count(1, timeout=RUN_TIMEOUT)
    expect(progress.filter(has_text=re.compile(r"^[1-3]/4 ·"))).to_have_count(1, timeout=RUN_TIMEOUT)
    page.get_by_role("button", name="Cancel").click()
    cancelled = page.get_by_test_id("stAlert").filter(has_text=re.compile(
        r"Cancelled: [1-3] of 4 saved, run again to resume"))
    expect(cancelled).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    saved = int(re.search(r"Cancelled: (\d) of 4", cancelled.inner_text()).group(1))
    shot(page, "batch-1280")

    run.click()
    done = page.get_by_test_id("stAlert").filter(
        has_text=f"{4 - saved} computed, {saved} skipped (already done)")
    expect(done).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    expect(progress.filter(has_text=f"{saved} skipped (already done)")).to_have_count(1)
    expect(page.get_by_text(re.compile(r"\b0/0\b"))).to_have_count(0)
    page.set_viewport_size(LARGE)
    settle(page)
    shot(page, "batch-1600")
