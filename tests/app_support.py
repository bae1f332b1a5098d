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
    # The pages turn unexpected errors into an st.error "Something went wrong" (render.unexpected)
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
