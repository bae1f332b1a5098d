"""The Audit and Review pages in a real Chromium at 1280x800: the charts drawn, and the review
queue driven by its keyboard shortcuts (j / k / f), with its place in the URL and a finding
recorded in the database."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from audit_support import audited_dataset
from browser_support import again_until
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


def _wait_url(page: Page, part: str, timeout_ms: int = 60_000, unlike: str | None = None) -> None:
    """Until the page's URL holds `part` (and is no longer `unlike`: a narrowing replacing another
    of the same field, whose URL arrives after the sidebar's count on loaded cores)."""
    waited = 0
    while (part not in page.url or page.url == unlike) and waited < timeout_ms:
        page.wait_for_timeout(200)  # page.url is refreshed only while Playwright processes events
        waited += 200
    assert part in page.url and page.url != unlike, page.url


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
    total = len(ds)
    _press_until(page, "j", 1, 2, total)
    _wait_url(page, "reviewed=2")
    _press_until(page, "j", 2, 3, total)
    _press_until(page, "k", 3, 2, total)
    settle(page)
    page.screenshot(path=str(ARTIFACTS / "review-1280.png"))
    page.keyboard.press("f")
    expect(page.get_by_text("Recorded 'background bias' on this sample.")).to_be_visible(timeout=UI_TIMEOUT)
    (run,) = audit.runs(ds)
    second, _path = audit.worst_first(ds, run, 1, 1)[0]
    ds.reload()
    assert "cam:background-bias" in ds[second].tags


def _press_until(page: Page, key: str, at: int, to: int, total: int) -> None:
    """Press a review shortcut on the queue's position `at` until it shows `to`. Under a whole
    suite's load a press once changed nothing in 30 s: a user presses again, once the page is idle
    and still at `at` (a press that came late is not doubled)."""
    def press() -> None:
        if page.get_by_text(f"Reviewed {at} of {total}").count():
            page.keyboard.press(key)

    again_until(press, lambda: expect(page.get_by_text(f"Reviewed {to} of {total}")).to_be_visible(timeout=15_000),
                between=lambda: settle(page))


def _sidebar_count(page: Page, n: int) -> None:
    """The sidebar's sample stepper says "of n": the view it walks has n samples."""
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text(f"of {n}", exact=True)).to_be_visible(timeout=RUN_TIMEOUT)


def _hovered(chart) -> None:
    """Plotly shows the hover label: the point under the mouse is the one a click picks."""
    expect(chart.locator(".hoverlayer .hovertext")).to_have_count(1, timeout=UI_TIMEOUT)


def _click_to_narrow(page: Page, chart, x: float, y: float, part: str) -> None:
    """Hover (until Plotly shows the label of what is under the mouse) and click at (x, y) until the
    URL names the narrowing `part`. Under a whole suite's load a click once came while the chart
    was still redrawing after the last narrowing and was lost (nothing changed in 60 s): a user then
    clicks again. Three clicks at most, 20 s apart; a click that narrows nothing still fails."""
    def hover_and_click() -> None:
        page.mouse.move(x, y)
        _hovered(chart)
        page.mouse.click(x, y)

    # between: off the chart, so that its hover label goes and the next hover shows it again
    again_until(hover_and_click, lambda: _wait_url(page, part, timeout_ms=20_000),
                between=lambda: page.mouse.move(0, 0))


def _narrowed(page: Page, part: str, n: int, unlike: str | None = None) -> None:
    """The click narrowed the view: the URL names it, the sidebar walks n samples, the page says so."""
    _wait_url(page, part, unlike=unlike)
    settle(page)
    _sidebar_count(page, n)
    expect(page.get_by_text(f"{n} samples", exact=True)).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_text("Narrowed by the Audit page:")).to_be_visible()


def test_a_mouse_click_on_a_bar_or_a_point_and_a_box_narrow_the_view(server: Server, page: Page, audited):
    """A real mouse on the rendered Plotly charts: a click on the first bar of the histogram, a click
    on one point of the scatter plot, and a box dragged over the scatter plot (Box Select picked in
    its toolbar) each narrow the sidebar's view and the URL; the URL opened afresh shows the same
    narrowed view."""
    ds, fields = audited
    share, conf = fields["share"], fields["conf"]
    page.goto(f"{server.url}/audit?dataset={ds.name}")
    charts = page.get_by_test_id("stPlotlyChart")
    expect(charts).to_have_count(2, timeout=RUN_TIMEOUT)
    settle(page)
    _sidebar_count(page, 12)
    _fits(charts.nth(0))
    _fits(charts.nth(1))
    ARTIFACTS.mkdir(exist_ok=True)

    # The first bar (share 0-0.05): its samples only.
    low = ds.match({share: {"$gte": 0, "$lt": 0.05}}).count()
    assert 0 < low < 12
    bar = charts.nth(0).locator(".barlayer .point path").first
    expect(bar).to_be_visible()
    b = bar.bounding_box()
    _click_to_narrow(page, charts.nth(0), b["x"] + b["width"] / 2, b["y"] + b["height"] / 2,
                     f"narrow={share}%3A0%3A0.05")
    _narrowed(page, f"narrow={share}%3A0%3A0.05", low)
    expect(page.get_by_test_id("stSidebar").get_by_text("Narrowed by the Audit page: share 0–0.05")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "audit-bar-click-1280.png"))

    area = charts.nth(1).locator(".nsewdrag").first.bounding_box()
    assert area, "the scatter plot has no plot area"

    def at(x: float, y: float) -> tuple[float, float]:  # data -> page pixels (both axes span 0..1.02)
        return area["x"] + area["width"] * x / 1.02, area["y"] + area["height"] * (1 - y / 1.02)

    # One point: the sample with the highest share (alone at its place on the plot).
    top_id = ds.sort_by(share, reverse=True).first().id
    c, s_ = ds[top_id][conf], ds[top_id][share]
    _click_to_narrow(page, charts.nth(1), *at(c, s_), f"narrow={conf}")
    _narrowed(page, f"narrow={conf}", 1)
    point_url = page.url
    sidebar_ids = ds.match({conf: {"$gte": c - 1e-5, "$lte": c + 1e-5}}).values("id")
    assert top_id in sidebar_ids

    # A box over the scatter plot's upper left (confidence < 0.5, share > 0.5), Box Select first.
    expected = ds.match({conf: {"$lt": 0.5}, share: {"$gt": 0.5}}).count()
    assert 1 < expected < 12 and expected != low
    page.mouse.move(*at(0.5, 0.5))
    box_select = charts.nth(1).locator('.modebar-btn[data-title="Box Select"]')
    expect(box_select).to_be_visible()
    box_select.click()
    page.mouse.move(*at(0.0, 1.01))
    page.mouse.down()
    page.mouse.move(*at(0.25, 0.75), steps=5)
    page.mouse.move(*at(0.5, 0.5), steps=5)
    page.mouse.up()
    _narrowed(page, f"narrow={conf}", expected, unlike=point_url)
    page.screenshot(path=str(ARTIFACTS / "audit-box-select-1280.png"))

    # The URL is the narrowed view: a new session opened at it shows the same samples.
    fresh = page.context.new_page()
    fresh.goto(page.url)
    _sidebar_count(fresh, expected)
    fresh.close()


def test_two_runs_page_at_1280(server: Server, page: Page, audited):
    """The Two runs page drawn at 1280x800: the per-class plot with its axis titles, the tables and
    both maps (screenshot in test-artifacts/ to look at)."""
    import dataclasses

    from audit_support import IDENTITY, add_run

    ds, _fields = audited
    add_run(ds, dataclasses.replace(IDENTITY, pretrained=False), seed=5)
    page.goto(f"{server.url}/runs?dataset={ds.name}")
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(1, timeout=RUN_TIMEOUT)
    settle(page)
    expect(page.get_by_text("share change, B − A (−1…1)").first).to_be_visible()
    _fits(page.get_by_test_id("stPlotlyChart").first)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "runs-1280.png"), full_page=True)


def _fits(chart) -> None:
    """The chart's title is not cut at its right edge, and its y axis title stays below it (at
    1280 px the per-class plot's title was cut and its axis title ran into it)."""
    whole, title, y_title = (chart.bounding_box(), chart.locator(".gtitle").bounding_box(),
                             chart.locator(".ytitle").bounding_box())
    assert title["x"] + title["width"] <= whole["x"] + whole["width"], (title, whole)
    assert y_title["y"] >= title["y"] + title["height"], (y_title, title)


def test_the_tests_pages_hold_still(browser: Browser):
    """browser_support.STILL_CSS reaches the pages of the tests' browser: an endless spinner runs one
    0.01-ms cycle and a transition ends at once (an animating page cost Chromium 3x the CPU)."""
    import urllib.parse

    html = ("<style>@keyframes turn { to { transform: rotate(1turn) } } "
            ".spinner { animation: turn 1s linear infinite; transition: opacity 2s }</style>"
            "<div class=spinner>working</div>")
    context = browser.new_context(viewport=SMALL)
    try:
        page = context.new_page()
        page.goto("data:text/html," + urllib.parse.quote(html))
        duration, count, transition = page.locator(".spinner").evaluate(
            "e => { const s = getComputedStyle(e); "
            "return [s.animationDuration, s.animationIterationCount, s.transitionDuration]; }")
        assert float(duration.rstrip("s")) < 1e-3 and count == "1" and float(transition.rstrip("s")) < 1e-3, (
            duration, count, transition)
    finally:
        context.close()
