"""A detector in the Explore page, in a real Chromium at 1280x800 (issue 24): pick a box, see its
map with the boxes drawn (the explained one highlighted), push it, reopen it from the URL."""
from __future__ import annotations

import re
import urllib.parse

import numpy as np
import pytest
from test_browser import ARTIFACTS, RUN_TIMEOUT, UI_TIMEOUT, open_app, overlay, pick_option, settle, widget

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from playwright.sync_api import Browser, Page, expect  # noqa: E402

SSD = "ssdlite320_mobilenet_v3_large"
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def detection_sample(tmp_path_factory):
    """A dataset of one image with a ground_truth box; (dataset name, sample id)."""
    import fiftyone as fo
    from fo_helpers import unique_name
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = (rng.random((240, 320, 3)) * 80).astype(np.uint8)
    rgb[60:180, 90:230] = (230, 200, 60)
    path = tmp_path_factory.mktemp("det-browser") / "shapes.png"
    Image.fromarray(rgb).save(path)
    ds = fo.Dataset(unique_name("det-browser"))
    det = fo.Detection(label="kite", bounding_box=[90 / 320, 60 / 240, 140 / 320, 120 / 240])
    ds.add_sample(fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=[det])))
    yield ds.name, ds.first().id
    ds.delete()


def _wait_for_url(page: Page, fragment: str) -> str:
    for _ in range(100):  # page.url refreshes only while Playwright processes events
        if fragment in urllib.parse.unquote(page.url):
            return page.url
        page.wait_for_timeout(100)
    raise AssertionError(f"{fragment!r} never reached the URL: {page.url}")


def _yellow_pixels(page: Page, src: str, base: str) -> int:
    import io

    from PIL import Image

    body = page.request.get(src if src.startswith("http") else base + src).body()
    rgb = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
    from camcore.overlay import EXPLAINED_COLOR

    return int((np.abs(rgb - np.array(EXPLAINED_COLOR)).sum(axis=-1) < 30).sum())


def test_pick_a_box_see_it_drawn_push_and_reopen_from_the_url(server, browser: Browser, detection_sample):
    import fiftyone as fo

    name, sid = detection_sample
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        # untrained SSDlite scores its boxes low: the link's box rule carries the threshold (@0)
        open_app(page, f"{server.url}/?dataset={name}&sample={sid}&model={SSD}&weights=untrained"
                       "&methods=eigencam&box=top@0")
        expect(overlay(page, "Eigen-CAM · fpn")).to_have_count(1, timeout=RUN_TIMEOUT)
        picker = widget(page, "stSelectbox", "Box to explain")
        expect(picker.get_by_role("combobox")).to_have_value(re.compile(r"^top-scoring box"))
        expect(page.get_by_text("Detections at score ≥ 0:")).to_be_visible()

        # pick the model's second detection: its map, its box named under the map
        pick_option(page, picker, page.get_by_role("option", name=re.compile(r"^#1 ")))
        settle(page)
        main = overlay(page, "Eigen-CAM · fpn").filter(has_text="[det1]")
        expect(main).to_have_count(1, timeout=RUN_TIMEOUT)
        expect(picker.get_by_role("combobox")).to_have_value(re.compile(r"^#1 "))
        url = _wait_for_url(page, "box=det:1@0")
        # another box of the same image: the session's kept forward served it, and Eigen-CAM needs no backward
        expect(page.get_by_text(re.compile(r"forward reused · no backward"))).to_be_attached(timeout=UI_TIMEOUT)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "explore-detection-1280.png"))
        # the explained box is drawn in yellow over the map (the other detections in grey)
        assert _yellow_pixels(page, main.locator("img").get_attribute("src") or "", server.url) > 100

        push = page.get_by_role("button", name=re.compile(r"^Push 1 heatmap"))
        push.click()
        success = page.get_by_test_id("stAlert").filter(has_text=re.compile(r"(Saved|Replaced) fields:"))
        expect(success).to_be_visible(timeout=RUN_TIMEOUT)
        settle(page)
        [field] = re.findall(r"cam_\w+", success.inner_text())
        sample = fo.load_dataset(name)[sid]
        assert sample[field].box_ref == "det1" and sample[field].box_score is not None

        # reopen the link in a fresh session: the same box, its map
        again = context.new_page()
        open_app(again, url)
        picker2 = widget(again, "stSelectbox", "Box to explain")
        expect(picker2.get_by_role("combobox")).to_have_value(re.compile(r"^#1 "), timeout=UI_TIMEOUT)
        expect(overlay(again, "Eigen-CAM · fpn").filter(has_text="[det1]")).to_have_count(1, timeout=RUN_TIMEOUT)

        # Compare takes the same link's box
        compare = context.new_page()
        parts = urllib.parse.urlsplit(url)
        open_app(compare, f"{server.url}/compare?{parts.query}")
        picker3 = widget(compare, "stSelectbox", "Box to explain")
        expect(picker3.get_by_role("combobox")).to_have_value(re.compile(r"^#1 "), timeout=UI_TIMEOUT)
        expect(compare.get_by_text(re.compile(r"Every map: target .* det1 "))
               ).to_have_count(1, timeout=RUN_TIMEOUT)
        # ... and draws the explained box over its maps too (issue 24 item 5)
        cell = compare.get_by_test_id("stImage").filter(has_text="det1").first
        expect(cell).to_be_visible(timeout=RUN_TIMEOUT)
        compare.screenshot(path=str(ARTIFACTS / "compare-detection-1280.png"))
        assert _yellow_pixels(compare, cell.locator("img").get_attribute("src") or "", server.url) > 50
    finally:
        context.close()
