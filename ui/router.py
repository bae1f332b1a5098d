"""st.navigation over the files in pages/, and deep links that work on a fresh server.

While a folder named pages/ exists, Streamlit runs a process's scripts in its legacy pages/ mode
(`PagesManager.uses_pages_directory`) until the first `st.navigation` call switches it off. So the
first request a fresh server gets at a deep link (/findings) runs pages/findings.py without app.py:
no shared sidebar, a nav listing every file. (AppTest starts every run in that mode.) Each page's
preamble (ui/page.py `serve`) calls `ensure_routed()` first; run outside app.py, it turns the
legacy mode off, as st.navigation would, and reruns: the same URL now runs app.py, whose
navigation resolves the same page (v1 and v2 pages hash their url path alike). A plain rerun
keeps the page, so the user's widget values survive; `st.switch_page("app.py")` would be a
page change, which drops them.

Explore is the default page, served at `/` (its links are `/?...`, camcore.links). Links stored by
older versions say `/explore?...`: a hidden page at that path (LEGACY_PATHS) switches to Explore at
`/` with the same query before anything is drawn, so such a link opens its exact state and never
the "Page not found" dialog that an unknown path gets on a server that has served a page.
"""
from __future__ import annotations

import streamlit as st

from ui.state import Router

PAGES = (  # (file, title, icon, url path); the first is the default page, served at /
    ("pages/explore.py", "Explore", ":material/search:", "home"),
    ("pages/compare.py", "Compare", ":material/grid_view:", "compare"),
    ("pages/batch.py", "Batch", ":material/dynamic_feed:", "batch"),
    ("pages/findings.py", "Findings", ":material/flag:", "findings"),
    ("pages/audit.py", "Audit", ":material/monitoring:", "audit"),
    ("pages/review.py", "Review", ":material/checklist:", "review"),
    ("pages/runs.py", "Two runs", ":material/compare:", "runs"),
)
LEGACY_PATHS = ("explore",)  # paths of old stored links to the default page (Explore)
DATASET_PAGES = {"findings"}  # about the whole dataset: they run even when the view is empty
_ROUTED = Router.ROUTED


def navigation():
    pages = [st.Page(f, title=t, icon=i, url_path=u, default=(n == 0)) for n, (f, t, i, u) in enumerate(PAGES)]
    old = [st.Page(_old_link, title=PAGES[0][1], url_path=u, visibility="hidden") for u in LEGACY_PATHS]
    pending = st.session_state.pop(Router.DEEP_LINK, None)
    nav = st.navigation(pages + old)
    st.session_state[_ROUTED] = True
    if nav.url_path in LEGACY_PATHS:  # an old /explore?... link: Explore at /, the same query
        st.switch_page(pages[0], query_params=st.query_params.to_dict())
    if pending and pending not in LEGACY_PATHS:
        target = next((p for p in pages if p.url_path == pending), None)
        if target is not None and target.url_path != nav.url_path:
            st.switch_page(target)
    return nav


def _old_link() -> None:
    """Never drawn: navigation() switches an old link's run to the default page first."""


def page_not_run() -> None:
    """app.py did not run the page this time (nothing to show): drop the flag that navigation()
    left for it, so that a later run of a page outside app.py still hops through app.py."""
    st.session_state.pop(_ROUTED, None)


def ensure_routed(url_path: str) -> None:
    """Called first by ui/page.serve: outside app.py's navigation, hop through app.py."""
    if st.session_state.pop(_ROUTED, False):
        return
    st.session_state[Router.DEEP_LINK] = url_path  # if the rerun lands elsewhere, navigation() goes on
    if _leave_legacy_pages_mode():
        st.rerun()
    st.switch_page("app.py")  # not the legacy mode: hop through app.py (drops widget values)


def _leave_legacy_pages_mode() -> bool:
    """Do what st.navigation does first: stop the legacy pages/ discovery. True if it was on."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without it: fall back on the hop through app.py
        return False
    if not getattr(PagesManager, "uses_pages_directory", False):
        return False
    PagesManager.uses_pages_directory = False
    return True
