"""st.navigation over the files in pages/, and deep links that work on a fresh server.

Streamlit serves the first request a fresh server gets at a deep link (/findings) through its
legacy pages/ discovery: app.py does not run. Each page calls `ensure_routed()` first; when it
runs outside app.py it remembers where the user wanted to go and switches to app.py, which
builds the navigation and switches straight on to that page.
"""
from __future__ import annotations

import streamlit as st

PAGES = (  # (file, title, icon, url path)
    ("pages/explore.py", "Explore", ":material/search:", "explore"),
    ("pages/findings.py", "Findings", ":material/flag:", "findings"),
)
_ROUTED = "_routed_run"


def navigation():
    pages = [st.Page(f, title=t, icon=i, url_path=u, default=(n == 0)) for n, (f, t, i, u) in enumerate(PAGES)]
    pending = st.session_state.pop("_deep_link", None)
    nav = st.navigation(pages)
    st.session_state[_ROUTED] = True
    if pending:
        target = next((p for p in pages if p.url_path == pending), None)
        if target is not None and target.url_path != nav.url_path:
            st.switch_page(target)
    return nav


def ensure_routed(url_path: str) -> None:
    """Call first in every page: outside app.py's navigation, hop through app.py."""
    if st.session_state.pop(_ROUTED, False):
        return
    st.session_state["_deep_link"] = url_path
    st.switch_page("app.py")
