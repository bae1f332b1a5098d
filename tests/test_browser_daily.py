"""Issue 23's bugs 1, 4, 5 and 6 in a real Chromium at 1280x800 (AppTest covers them in-process:
tests/test_explore_wait.py, test_apptest_views.py, test_apptest_compare.py).

The test process's shared server and the module's browser (conftest's `server` and `browser`), one small dataset
for the sidebar and ranking tests, the demo dataset for the model ones. Helpers come from
test_browser.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import RUN_TIMEOUT, UI_TIMEOUT, Server, add_to_multiselect, open_app, overlay, settle, widget

from camcore import models
from ui.state import Compare, Compute, Sidebar

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from playwright.sync_api import Browser, Page, expect  # noqa: E402

SMALL = {"width": 1280, "height": 800}
RANKED = 40  # samples the ranking test ranks: 5 batches of 8, long enough to click ▶ in between


@pytest.fixture(scope="module")
def daily() -> Iterator:
    """a/frame.png, a/other.png, b/frame.png (repeated names, two tagged val) and RANKED copies of
    the cat (c/cat_NN.png), every sample with a `objects` box "cat" over most of the image."""
    import fiftyone as fo
    from fo_helpers import unique_name

    from camcore import demo_data

    cat = next(p for p in demo_data.ensure_demo_dataset().values("filepath") if p.endswith("/chelsea.png"))
    root = Path(tempfile.mkdtemp(prefix="cam-explorer-daily-"))
    names = ["a/frame.png", "a/other.png", "b/frame.png"] + [f"c/cat_{i:02d}.png" for i in range(RANKED)]
    for name in names:
        (root / name).parent.mkdir(exist_ok=True)
        shutil.copy(cat, root / name)
    box = fo.Detections(detections=[fo.Detection(label="cat", bounding_box=[0.1, 0.1, 0.8, 0.8])])
    ds = fo.Dataset(unique_name("daily"), persistent=True)
    ds.add_samples([fo.Sample(filepath=str(root / n), objects=box.copy(), tags=["val"] if n in names[1:3] else [])
                    for n in names])
    yield ds
    ds.delete()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=SMALL)
    yield context.new_page()
    context.close()


def _key(page: Page, key: str, inner: str = ""):
    """The element Streamlit draws for a widget key (its class st-key-<key>), or the first such part
    of it (a rerun can briefly show a stale copy beside the new one)."""
    found = page.locator(f".st-key-{key}")
    return found.locator(inner).first if inner else found


def _shown_sample(page: Page):
    return page.get_by_test_id("stSidebar").get_by_test_id("stText")


def _demo_link(server: Server, name: str, **params: str) -> str:
    from camcore import demo_data

    dataset = demo_data.ensure_demo_dataset()
    ids, paths = dataset.values(["id", "filepath"])
    [sid] = [i for i, p in zip(ids, paths, strict=True) if p.endswith("/" + name)]
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{server.url}/?dataset={dataset.name}&sample={sid}&model=efficientnet_lite0&{query}"


# -- bug 1: a named-target link while another session holds the model ----------------------------

def test_a_named_target_link_while_another_tab_holds_the_model_shows_its_map(server: Server, browser: Browser):
    """Tab A runs Score-CAM (it takes the model batch after batch); tab B opens a link with
    target=tabby, whose two shared passes (the prediction, then tabby's) each wait for A. Before the
    fix the second wait box reused the first one's key: StreamlitDuplicateElementKey."""
    holder = browser.new_context(viewport=SMALL).new_page()
    other = browser.new_context(viewport=SMALL).new_page()
    try:
        open_app(holder, _demo_link(server, "coffee.png", methods="scorecam", layers="head"))
        run = holder.get_by_role("button", name=re.compile(r"Run Score-CAM on head \(~"))
        expect(run).to_be_visible(timeout=RUN_TIMEOUT)
        settle(holder)
        run.click()
        expect(holder.get_by_test_id("stProgress").filter(has_text="Score-CAM")).to_be_visible(timeout=RUN_TIMEOUT)

        other.goto(_demo_link(server, "chelsea.png", target="tabby", methods="gradcam", layers="head"))
        # the scenario: B waits on A's model (checked every frame: a wait can last a fraction of a second)
        other.wait_for_function("() => document.body.innerText.includes(\"Waiting for another session's Score-CAM\")",
                                polling="raf", timeout=RUN_TIMEOUT)
        broken = other.get_by_test_id("stAlert").filter(has_text="Something went wrong")
        expect(overlay(other, "Grad-CAM · head").or_(broken)).to_be_visible(timeout=RUN_TIMEOUT)
        expect(broken).to_have_count(0)  # (before the fix: StreamlitDuplicateElementKey, key='cam_wait')
        expect(overlay(other, "Grad-CAM · head")).to_be_visible()
        expect(other.get_by_test_id("stException")).to_have_count(0)
        expect(holder.get_by_test_id("stProgress").filter(has_text="Score-CAM")).to_be_visible()  # A still ran
        settle(other)
        expect(other.get_by_test_id("stMarkdownContainer").filter(has_text="Target: tabby (chosen)")).to_have_count(1)
    finally:
        cancel = _key(holder, Compute.CANCEL_BUTTON, "button")
        if cancel.count():  # free the CPU for the next tests
            cancel.click()
        holder.context.close()
        other.context.close()


# -- bug 4: the path search runs once ------------------------------------------------------------

def test_the_path_search_empties_opens_a_single_match_and_forgets_an_old_view(server: Server, page: Page, daily):
    open_app(page, f"{server.url}/findings?dataset={daily.name}")
    box = _key(page, Sidebar.SEARCH, "input")
    box.fill("other")
    box.press("Enter")
    expect(_shown_sample(page).filter(has_text=re.compile(r"^a/other\.png$"))).to_have_count(1, timeout=RUN_TIMEOUT)
    settle(page)
    expect(box).to_have_value("")  # used once: it does not run again on the next click
    expect(_key(page, Sidebar.SEARCH_PICK)).to_have_count(0)  # one match: opened, no list to pick from

    box.fill("frame")
    box.press("Enter")
    expect(_key(page, Sidebar.SEARCH_PICK)).to_have_count(1, timeout=RUN_TIMEOUT)
    settle(page)
    expect(box).to_have_value("")
    page.get_by_test_id("stSidebar").get_by_text("Filter and sort").click()
    add_to_multiselect(page, "Samples tagged", "val")  # another view: the old matches go
    settle(page)
    expect(_key(page, Sidebar.SEARCH_PICK)).to_have_count(0)
    expect(page.get_by_text("No file path in this view contains")).to_have_count(0)


# -- bug 5: a position past the end; ▶ during a ranking -------------------------------------------

def test_a_position_past_the_end_says_why_in_the_page(server: Server, page: Page, daily):
    open_app(page, f"{server.url}/findings?dataset={daily.name}")
    goto = _key(page, Sidebar.GOTO, "input")
    goto.fill("999")
    goto.press("Enter")
    said = page.get_by_test_id("stAlert").filter(has_text=f"Position 999 is past the end of the view ({len(daily)} "
                                                           "samples): showing the last.")
    expect(said).to_be_visible(timeout=RUN_TIMEOUT)  # in the page, not in a tooltip
    settle(page)
    expect(goto).to_have_value(str(len(daily)))
    expect(_shown_sample(page).filter(has_text=f"c/cat_{RANKED - 1:02d}.png")).to_have_count(1)


def test_next_during_a_ranking_says_the_ranking_stopped(server: Server, page: Page, daily):
    open_app(page, f"{server.url}/compare?dataset={daily.name}&model=efficientnet_lite0&methods=gradcam&layers=head")
    rank = _key(page, Compare.RANK_GO, "button")
    expect(rank).to_have_text(f"Rank {len(daily)} samples", timeout=RUN_TIMEOUT)
    settle(page)
    rank.click()
    expect(page.get_by_test_id("stProgress").filter(has_text="running the model on samples")).to_be_visible(
        timeout=RUN_TIMEOUT)
    page.get_by_test_id("stSidebar").get_by_role("button", name="▶").click()  # ▶ while it ranks
    expect(page.get_by_test_id("stAlert").filter(has_text="The ranking was stopped before it finished")).to_be_visible(
        timeout=RUN_TIMEOUT)
    settle(page)
    expect(_shown_sample(page).filter(has_text=re.compile(r"^a/other\.png$"))).to_have_count(1)  # ▶ was taken
    expect(page.get_by_test_id("stCaptionContainer").filter(has_text=re.compile(r"^Ranked for "))).to_have_count(0)


# -- bug 6: the study's button is the go ---------------------------------------------------------

def test_the_deit_study_button_runs_its_slow_maps_without_a_second_go(server: Server, page: Page):
    """Before the fix the click computed the fast maps and then asked "Run all 2 (~22 s)"."""
    # From EfficientNet's untrained weights (a fast page): the study keeps an untrained choice, and
    # DeiT has no weights offline.
    open_app(page, f"{server.url}/compare?model=efficientnet_lite0&weights=untrained&methods=gradcam&layers=head")
    study = _key(page, Compare.study("all_methods"), "button")
    expect(study).to_be_enabled(timeout=RUN_TIMEOUT)
    settle(page)
    study.click()
    cancel = _key(page, Compute.CANCEL_BUTTON, "button")
    run_all = _key(page, Compute.GO_ALL, "button")
    expect(cancel.or_(run_all)).to_be_visible(timeout=RUN_TIMEOUT)
    expect(run_all).to_have_count(0)  # no second go asked for ...
    expect(page.get_by_test_id("stProgress")).to_be_visible()  # ... the slow maps run, with progress
    model = widget(page, "stSelectbox", "Model", page.get_by_test_id("stSidebar")).get_by_role("combobox")
    expect(model).to_have_value(models.MODELS["deit_tiny"].label)  # the study's model
    cancel.click(timeout=UI_TIMEOUT)
    settle(page)
