"""Issue #21 item 4 in a real Chromium: a stored finding's link, and an old `/explore?...` link,
open the exact state with no "Page not found" dialog, on a warm server (one that has already
served a page) and on a fresh one; the links the project writes now point at `/?...`.

Helpers come from test_browser; this module uses the test process's shared server (conftest's `server`).
"""
from __future__ import annotations

import re

import pytest
from test_browser import ARTIFACTS, RUN_TIMEOUT, UI_TIMEOUT, Server, open_app, overlay, settle

from camcore import links

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from playwright.sync_api import Browser, Page, expect  # noqa: E402


def _demo_sample(name: str) -> tuple[str, str]:
    """(dataset name, sample id) of the demo sample with this file name."""
    from camcore import demo_data

    dataset = demo_data.ensure_demo_dataset()
    ids, paths = dataset.values("id"), dataset.values("filepath")
    return dataset.name, next(i for i, p in zip(ids, paths, strict=True) if p.endswith("/" + name))


def _record_finding(dataset_name: str, sample_id: str, url: str) -> str:
    """Store a finding with this link (as the Findings page, the plugin or the CLI would) and read
    the link back from the database."""
    from camcore import store

    dataset = store.load_dataset(dataset_name)
    store.add_finding(dataset, sample_id, "links21-test", note="a stored link", url=url)
    dataset.reload()
    rows = [r for r in store.list_findings(dataset) if r["tag"] == "links21-test" and r["url"] == url]
    assert rows, "the finding was not stored"
    return rows[-1]["url"]


def _assert_opened(page: Page, sample_id: str) -> None:
    """The sample of the link is on screen, its map drawn, no "Page not found" dialog, URL at /?."""
    expect(page.get_by_test_id("stApp")).to_be_visible(timeout=UI_TIMEOUT)
    expect(overlay(page, "Eigen-CAM · head")).to_have_count(1, timeout=RUN_TIMEOUT)
    settle(page)
    expect(page.get_by_text("Page not found")).to_have_count(0)
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_test_id("stText").filter(has_text=f"id {sample_id}")).to_have_count(1)
    expect(page).to_have_url(re.compile(rf"^[^?]*/\?.*sample={sample_id}"))  # Explore lives at /


def _follow(page: Page, base: str, link: str, sample_id: str, warm_first: bool) -> None:
    if warm_first:  # the server (and this tab) has already served a page
        open_app(page, base)
    page.goto(link)
    _assert_opened(page, sample_id)


@pytest.mark.parametrize("old", [False, True], ids=["new-link", "old-explore-link"])
def test_a_stored_finding_link_opens_on_a_warm_server(server: Server, browser: Browser, old: bool):
    dataset, sid = _demo_sample("coffee.png")
    state = links.LinkState(dataset=dataset, sample=sid, model="efficientnet_lite0", layers=("head",),
                            methods=("gradcam", "eigencam"))
    url = links.explorer_url(state, base=server.url)
    assert re.match(rf"^{re.escape(server.url)}/\?", url), url  # what the project writes now
    if old:  # a link stored by an older version
        url = url.replace("/?", "/explore?", 1)
    stored = _record_finding(dataset, sid, url)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page = context.new_page()
        _follow(page, server.url, stored, sid, warm_first=True)
        page.screenshot(path=str(ARTIFACTS / f"links21_warm_{'old' if old else 'new'}.png"))
    finally:
        context.close()


def test_an_old_explore_link_opens_on_a_fresh_server(browser: Browser):
    dataset, sid = _demo_sample("coffee.png")
    ARTIFACTS.mkdir(exist_ok=True)
    fresh = Server(ARTIFACTS / "streamlit-links21-fresh.log")
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        state = links.LinkState(dataset=dataset, sample=sid, model="efficientnet_lite0", layers=("head",),
                                methods=("gradcam", "eigencam"))
        old = links.explorer_url(state, base=fresh.url).replace("/?", "/explore?", 1)
        _follow(context.new_page(), fresh.url, old, sid, warm_first=False)
    finally:
        context.close()
        fresh.stop()


def test_the_url_keeps_the_filter_and_sort_as_the_user_walks(server: Server, browser: Browser):
    """Issue 23 bug 3 in Chromium: a link with a file-name filter and a descending sort opens that
    view, and after ▶ the address bar still names them with the next sample of that order (the
    link a user copies reopens the same sequence)."""
    from fiftyone import ViewField as F

    from camcore import demo_data

    dataset = demo_data.ensure_demo_dataset()
    order = dataset.match(F("filepath").contains_str(".png")).sort_by("metadata.size_bytes", reverse=True)
    first, second = order.values("id")[:2]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        open_app(page, f"{server.url}/?dataset={dataset.name}&sample={first}&file=.png&sort=metadata.size_bytes"
                       "&desc=1&model=efficientnet_lite0&methods=gradcam&layers=head")
        expect(page.get_by_test_id("stText").filter(has_text=f"id {first}")).to_have_count(1, timeout=RUN_TIMEOUT)
        page.get_by_test_id("stSidebar").get_by_role("button", name="▶").click()
        settle(page)
        expect(page).to_have_url(re.compile(rf"sample={second}"), timeout=RUN_TIMEOUT)
        for part in ("file=.png", "sort=metadata.size_bytes", "desc=1"):
            assert part in page.url, page.url
    finally:
        context.close()
