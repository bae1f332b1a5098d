"""Issue #21 item 1, the sample modal: the project's field names show whole in the real FiftyOne
App's sample sidebar at 1280 px, where a label is cut shorter than in the grid's.

Measured here (Chromium, FiftyOne 1.22): the modal's label box is 204 px wide (the count beside
it takes the rest), and the label's inline wrappers add 14 px after the text, so the App draws an
ellipsis as soon as the text is wider than about 190 px (the box's scroll width exceeds its
client width), not 204: camcore.identity.SIDEBAR_PX is that limit. A name cut to fit
(`cam_eigen_head_effl0_e_6ed`, 197 px) was drawn with an ellipsis before (SIDEBAR_PX was 203.5)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import fiftyone as fo
import numpy as np
import pytest
from fo_helpers import coded_identity
from test_app21_app import ARTIFACTS, CHROMIUM, app_page, grey_dataset  # noqa: F401 (grey_dataset: a fixture)

from camcore import store
from camcore.identity import SIDEBAR_PX, sidebar_px

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Names the project writes that are cut to fit (the widest heads among them), and their spares
CUT = [coded_identity(model="efficientnet_lite0", method=m, layer=layer, target=t)
       for m, layer, t in (("eigencam", "head", "Egyptian cat"), ("shapleycam", "stage6", "German shepherd"),
                           ("gradcamelementwise", "head", "tabby, tabby cat"))]
NAMES = [n for i in CUT for n in (i.field_name, i.spare_field_name)]
FITS = "z" * int(SIDEBAR_PX // 7.0)  # z is 7 px: just within the limit, drawn whole ...
TOO_WIDE = FITS + "z"  # ... and just over it, cut: the limit is the App's own

# The label's ellipsis box: is the text drawn whole (scroll width within the client width)?
_WHOLE = """e => {
  const box = [e, ...e.querySelectorAll('*')].find(c => getComputedStyle(c).textOverflow === 'ellipsis');
  return {whole: box.scrollWidth <= box.clientWidth, scroll: box.scrollWidth, client: box.clientWidth,
          text: box.textContent};
}"""


def _measure(url: str) -> dict:
    from playwright.sync_api import expect

    with app_page(url) as page:
        modal = page.locator("#modal")
        expect(modal.locator("[data-cy=modal-looker-container] canvas[canvas-loaded=true]")).to_be_visible(
            timeout=90_000)
        out = {}
        for name in [*NAMES, FITS, TOO_WIDE]:
            label = modal.locator(f"[data-cy=sidebar-field-{name}]").first
            expect(label).to_be_visible(timeout=60_000)
            out[name] = label.evaluate(_WHOLE)
        page.screenshot(path=str(ARTIFACTS / "app21_modal_names.png"))
    return out


def test_cut_names_show_whole_in_the_sample_modal_at_1280(grey_dataset):  # noqa: F811 (the fixture)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: run `make chromium`")
    pytest.importorskip("playwright.sync_api")
    from mongod_support import free_port

    ARTIFACTS.mkdir(exist_ok=True)
    sample = grey_dataset.first()
    for name in [*NAMES, FITS, TOO_WIDE]:  # a Heatmap each, so the modal lists it with its count
        sample[name] = fo.Heatmap(map=np.zeros((4, 4), np.uint8))
    sample.save()
    port = free_port()
    try:
        store.launch_app(grey_dataset, port=port)
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API wants a thread without a loop
            got = pool.submit(_measure, store.app_url(grey_dataset.name, sample.id, port=port)).result(timeout=600)
    finally:
        store.close_app()
    assert got[FITS]["whole"] and not got[TOO_WIDE]["whole"], (sidebar_px(FITS), got[FITS], got[TOO_WIDE])
    cut = {n: (round(sidebar_px(n), 1), v) for n, v in got.items() if n != TOO_WIDE and not v["whole"]}
    assert not cut, f"names drawn with an ellipsis in the sample's sidebar: {cut}"
