"""Issue #21 item 8, in the real App: record_finding with a sample open shows all it wrote on that
sample in the open modal at once, never reloaded: the new tag in the tag count and the finding in
the sample's `cam_findings` (a field the first finding creates). FiftyOne 1.22 keeps the modal's
copy of the sample through reload_samples and reload_dataset, so the finding showed only on the
next open (0 findings in the modal) until the plugin's set_sample_tags handed it every field
record_finding wrote (camcore.store.finding_fields_for_app)."""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_app21_app import APP_CHROMIUM, ARTIFACTS, app_page, grey_dataset  # noqa: F401 (grey_dataset: a fixture)

from camcore import store
from camcore.store.datasets import FINDINGS_FIELD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The page runs record_finding as its form's Execute does (with the page's context: the open
# sample), once the App has listed the plugin's Python operators (not found until then).
_RECORD = """async () => {
  for (let i = 0; i < 240; i++) {
    try {
      await window.__foo__.executeOperator("@cam-explorer/cam/record_finding", {tag: "good focus", note: "n"});
      return true;
    } catch (e) {
      await new Promise(r => setTimeout(r, 500));
    }
  }
  return false;
}"""


def _count(modal, cy: str, want: str) -> str:
    """The count the modal's sidebar entry `cy` (a data-cy) shows beside its name once it is
    `want` (or what it shows after 30 s)."""
    from playwright.sync_api import expect

    entry = modal.locator(f'[data-cy="{cy}"]').first
    try:
        expect(entry).to_have_text(re.compile(rf"(^|\s){want}$"), timeout=30_000)
    except AssertionError:
        pass  # said by the test's assertion, with the count shown
    try:
        entry.scroll_into_view_if_needed(timeout=10_000)
        return entry.inner_text(timeout=10_000).split()[-1]
    except Exception as exc:  # the modal lists no such entry (the URL says whether a sample is open)
        modal.page.screenshot(path=str(ARTIFACTS / f"app21_modal_no_{cy}.png"))
        return f"no entry: {str(exc).splitlines()[0]} (page at {modal.page.url})"


def _record_in_open_modal(url: str) -> dict:
    from playwright.sync_api import expect

    with app_page(url) as page:
        modal = page.locator("#modal")
        expect(modal.locator("[data-cy=modal-looker-container] canvas[canvas-loaded=true]")).to_be_visible(
            timeout=90_000)
        out = {"tags before": _count(modal, "sidebar-entry-tags", "0")}
        assert page.evaluate(_RECORD), "record_finding was never listed by the App"
        out["tags"] = _count(modal, "sidebar-entry-tags", "1")
        out["findings"] = _count(modal, f"{FINDINGS_FIELD}-field", "1")  # its name, then its count
        page.screenshot(path=str(ARTIFACTS / "app21_modal_finding_fields.png"))
    return out


def test_record_finding_shows_the_finding_in_the_open_modal(grey_dataset):  # noqa: F811 (the fixture)
    if not os.access(APP_CHROMIUM, os.X_OK):
        pytest.skip(f"no {APP_CHROMIUM}: run `make chromium`")
    pytest.importorskip("playwright.sync_api")
    from mongod_support import free_port

    ARTIFACTS.mkdir(exist_ok=True)
    sample = grey_dataset.first()
    port = free_port()
    try:
        store.launch_app(grey_dataset, port=port)
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API wants a thread without a loop
            got = pool.submit(_record_in_open_modal,
                              store.app_url(grey_dataset.name, sample.id, port=port)).result(timeout=600)
    finally:
        store.close_app()
    assert grey_dataset.first()[FINDINGS_FIELD] is not None  # written: the App's view of it is the point
    assert got == {"tags before": "0", "tags": "1", "findings": "1"}, got
