"""Shared AppTest helpers: the app's entry point, a generous timeout, a run that fails loudly."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT = 240  # seconds per run: a model's first load and pass on two CPU cores


def run(at: AppTest, allow_errors: bool = True) -> AppTest:
    """Run once; no exception, and no unexpected-error message (any st.error unless allowed)."""
    at.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    # The pages turn unexpected errors into an st.error "Something went wrong" (page.unexpected)
    assert not [e.value for e in at.error if "Something went wrong" in e.value]
    if not allow_errors:
        assert not at.error, [e.value for e in at.error]
    return at


def start(page: str | None = None) -> AppTest:
    """A fresh app run, switched to `page` (e.g. "pages/compare.py") when given."""
    at = run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    if page:
        at.switch_page(page)
        run(at)
    return at


def open_sample(at: AppTest, sample_id: str, search: str | None = None) -> AppTest:
    """Open a sample as a user does: search its path in the sidebar, pick the match (does not run).
    `search` defaults to the sample's file name."""
    import os

    import fiftyone as fo

    if search is None:
        dataset = fo.load_dataset(at.sidebar.selectbox(key="dataset").value)
        search = os.path.basename(dataset[sample_id].filepath)
    at.sidebar.text_input(key="nav_search").input(search)
    run(at)
    picks = [s for s in at.sidebar.selectbox if s.key == "nav_search_pick"]
    if picks:  # several matches: pick it (one match opens at once)
        picks[0].set_value(sample_id)
    return at


def current_sample(at: AppTest) -> str:
    """The id of the sample the pages act on."""
    return at.session_state["selection"].sample_id
