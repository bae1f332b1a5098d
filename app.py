"""CAM Explorer: the router and the sidebar every page shares. Run: make run"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import streamlit as st  # noqa: E402

from ui import router, session_memory, sidebar, text, urlstate  # noqa: E402

session_memory.freeze_startup_heap()  # once per process, after the imports above (torch, FiftyOne)

# A shipped icon: a :material/…: or emoji page icon makes the browser fetch it from a font/CDN host.
st.set_page_config(page_title="CAM Explorer", page_icon=str(Path(__file__).parent / "ui" / "icon.png"),
                   layout="wide")
page = router.navigation()
selection = sidebar.draw()
if selection is not None and (selection.view_spec.describe() != "all samples" or selection.view_spec.sort_field):
    st.caption(text.escape(sidebar.view_caption(selection)))  # a filtered or sorted view says so on every page
if selection is not None or page.url_path in router.DATASET_PAGES:
    page.run()
else:  # an empty view, an empty or failing dataset: no page may act on the previous selection
    router.page_not_run()
    st.warning(f"{sidebar.problem() or 'Pick a dataset and a sample in the sidebar.'} "
               "Nothing to explore, compare or run until the sidebar's view has samples.",
               icon=":material/filter_alt_off:")
# After the page: the URL then names what this run put on screen (see ui/urlstate.py).
urlstate.write(page.url_path)
