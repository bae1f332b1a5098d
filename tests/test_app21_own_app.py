"""Issue #21: an App the explorer did NOT launch (a user's own `fo.launch_app`, `fiftyone app
launch`) with the plugin loaded, open before another process pushes a map: the page, never
reloaded, draws the map in its colour scale (jet: many hues, red among them) with the field in the
CAM group, and so does the page after a tab reload (its session still holds the launch scheme).
The plugin's page-side check does it (sync_app, camcore.store.appwatch.page_updates)."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import fiftyone as fo
import pytest
from test_app21_app import (  # noqa: F401 (grey_dataset is a fixture)
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    _grid_in_colour,
    _group,
    app_page,
    grey_dataset,
    hue_shares,
)

from camcore import store

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _in_jet(png: bytes) -> bool:
    shares, saturated = hue_shares(png)
    return saturated > 0.05 and (shares >= 0.02).sum() >= 3 and shares[0] >= 0.02


def _drive(url: str, push) -> dict:
    from playwright.sync_api import expect

    out: dict = {}
    with app_page(url) as page:
        page.wait_for_timeout(5_000)  # the page's check has run once: it knows the saved version
        push()
        out["grid"] = _grid_in_colour(page)
        try:
            expect(_group(page)).to_be_visible(timeout=30_000)
            out["group"] = True
        except AssertionError:
            out["group"] = False
        page.screenshot(path=str(ARTIFACTS / "app21_own_app_pushed.png"))
        page.reload()
        expect(page.locator("[data-cy=fo-grid]").first).to_be_visible(timeout=90_000)
        out["reloaded"] = _grid_in_colour(page)
        page.screenshot(path=str(ARTIFACTS / "app21_own_app_reloaded.png"))
    return out


def test_an_app_the_explorer_did_not_launch_draws_another_processs_push_in_its_scale(grey_dataset, monkeypatch):  # noqa: F811
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: run `make chromium`")
    pytest.importorskip("playwright.sync_api")
    from mongod_support import free_port

    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", str(ROOT / "plugins"))
    monkeypatch.delenv("CAM_EXPLORER_APP_WATCHED", raising=False)  # appwatch.WATCHED_ENV: not the explorer's App
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    sid = grey_dataset.first().id
    session = fo.launch_app(grey_dataset, port=port, address="localhost", remote=True, auto=False)

    def push() -> None:
        run = subprocess.run([sys.executable, "-m", "camcore", "push", "--dataset", grey_dataset.name,
                              "--sample", sid, "--method", "eigencam", "-q"],
                             cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert run.returncode == 0, run.stderr[-2000:]

    try:
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API wants a thread without a loop
            got = pool.submit(_drive, store.app_url(grey_dataset.name, port=port), push).result(timeout=900)
    finally:
        session.close()
    assert _in_jet(got["grid"]), f"the open page draws the pushed map without its scale: {hue_shares(got['grid'])}"
    assert got["group"], "no CAM group on the open page"
    assert _in_jet(got["reloaded"]), f"after a tab reload: {hue_shares(got['reloaded'])}"
