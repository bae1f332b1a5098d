"""The Audit and Review pages in a real Chromium at 1280x800: the charts drawn, and the review
queue driven by its keyboard shortcuts (j / k / f), with its place in the URL and a finding
recorded in the database."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from audit_support import audited_dataset
from test_browser import ARTIFACTS, RUN_TIMEOUT, UI_TIMEOUT, Server, settle

from camcore.store import audit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from playwright.sync_api import Browser, Page, expect  # noqa: E402

SMALL = {"width": 1280, "height": 800}


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=SMALL)
    p = context.new_page()
    yield p
    context.close()


@pytest.fixture
def audited(tmp_path):
    ds, fields = audited_dataset(tmp_path, n=12)
    ds.persistent = True
    yield ds, fields
    ds.delete()


def _wait_url(page: Page, part: str, timeout_ms: int = 15_000) -> None:
    waited = 0
    while part not in page.url and waited < timeout_ms:
        page.wait_for_timeout(200)  # page.url is refreshed only while Playwright processes events
        waited += 200
    assert part in page.url, page.url


def test_audit_charts_and_the_review_queue_by_keyboard(server: Server, page: Page, audited):
    ds, fields = audited
    page.goto(f"{server.url}/audit?dataset={ds.name}")
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(2, timeout=RUN_TIMEOUT)
    settle(page)
    expect(page.get_by_text("share of heatmap mass on the object (0–1)").first).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "audit-1280.png"))

    page.goto(f"{server.url}/review?dataset={ds.name}&reviewed=1")
    expect(page.get_by_text("Reviewed 1 of 12")).to_be_visible(timeout=RUN_TIMEOUT)
    settle(page)
    expect(page.get_by_text("next sample")).to_be_visible()  # the shortcuts are shown on the page
    page.get_by_text("Review queue").click()  # focus on the page, not in a field
    page.keyboard.press("j")
    expect(page.get_by_text("Reviewed 2 of 12")).to_be_visible(timeout=UI_TIMEOUT)
    _wait_url(page, "reviewed=2")
    page.keyboard.press("j")
    expect(page.get_by_text("Reviewed 3 of 12")).to_be_visible(timeout=UI_TIMEOUT)
    page.keyboard.press("k")
    expect(page.get_by_text("Reviewed 2 of 12")).to_be_visible(timeout=UI_TIMEOUT)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "review-1280.png"))
    page.keyboard.press("f")
    expect(page.get_by_text("Recorded 'background bias' on this sample.")).to_be_visible(timeout=UI_TIMEOUT)
    (run,) = audit.runs(ds)
    second, _path = audit.worst_first(ds, run, 1, 1)[0]
    ds.reload()
    assert "cam:background-bias" in ds[second].tags
