"""The FiftyOne App link opens the sample's modal with our heatmap (real App server, real Chromium)."""
from __future__ import annotations

import dataclasses
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from browser_support import ARTIFACTS, APP_CHROMIUM, CHROMIUM_ARGS, shot_on_failure
from fo_app_page import as_returning_user, no_overlapping_redraws, overlapping_redraws, record_lookers, redraw_race
from fo_helpers import make_heatmap, make_result

from camcore import demo_data, store
from camcore.results import Target

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_port():
    port = _free_port()
    yield port
    store.close_app()


def _check_modal(url: str, sample_id: str, field: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=APP_CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            as_returning_user(page)
            record_lookers(page)
            overlaps = overlapping_redraws(page)
            with shot_on_failure(page):
                page.goto(url)
                modal = page.locator("#modal")
                # the sample opened from ?id=, its image drawn, our heatmap field listed and switched on
                canvas = modal.locator("[data-cy=modal-looker-container] canvas[canvas-loaded=true]")
                expect(canvas).to_be_visible(timeout=60_000)
                expect(modal.get_by_text(sample_id).first).to_be_visible(timeout=30_000)
                expect(modal.locator(f"[data-cy=sidebar-field-{field}]")).to_be_visible()
                expect(modal.locator(f"[data-cy=checkbox-{field}] input")).to_be_checked()
                expect(modal.locator("[data-cy=checkbox-ground_truth] input")).to_be_checked()
                page.screenshot(path=str(ARTIFACTS / "fiftyone_app_modal.png"))
                no_overlapping_redraws(overlaps)
                # FiftyOne's looker races, made on demand: a redraw with a copy another load handed over
                # loads again (the plugin posts the looker's own copy), a load while the App's label
                # painting has the maps waits for them, and a destroyed looker's posts nothing
                race = redraw_race(page)
                assert race["lookers"] and race["answered"], f"no looker drew the map: {race}"
                assert race["redrawn"], f"a redraw asked during another load was dropped: {race}, {overlaps}"
                assert race["painted"], f"the App's label painting gave the looker no new copy: {race}"
                assert race["loadedAfterPainting"], \
                    f"a load during the App's label painting was dropped: {race}, {overlaps}"
                no_overlapping_redraws(overlaps)
        finally:
            browser.close()


def test_app_url_opens_the_sample_with_its_heatmap(app_port):
    if not os.access(APP_CHROMIUM, os.X_OK):
        pytest.skip(f"no {APP_CHROMIUM}: run `make chromium`")
    pytest.importorskip("playwright.sync_api")

    dataset = demo_data.ensure_demo_dataset()
    sample = store.get_sample(dataset, "chelsea.png")
    h, w = sample.metadata.height, sample.metadata.width
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - h * 0.4) / (h * 0.2)) ** 2 + ((xx - w * 0.5) / (w * 0.2)) ** 2)).astype(np.float32)
    target = Target(285, "Egyptian cat", "predicted top-1")
    heat = dataclasses.replace(make_heatmap((h, w), target=target), map=blob)
    [field] = store.push_heatmaps(dataset, sample.id, make_result((h, w), [heat], model="efficientnet_lite0"))

    store.launch_app(dataset, port=app_port)
    store.launch_app(dataset, port=app_port)  # a second call retargets the running server
    ARTIFACTS.mkdir(exist_ok=True)
    url = store.app_url(dataset.name, sample.id, port=app_port)
    # Playwright's sync API refuses to start where another test's session-wide Playwright
    # already runs its loop (this thread); a worker thread has none.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_check_modal, url, sample.id, field).result(timeout=240)
