"""CAM Explorer: the router and the sidebar every page shares. Run: make run"""
from __future__ import annotations

import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import streamlit as st  # noqa: E402

from ui import router, sidebar  # noqa: E402

st.set_page_config(page_title="CAM Explorer", page_icon=":material/local_fire_department:", layout="wide")
page = router.navigation()
if sidebar.draw() is not None or page.url_path in router.DATASET_PAGES:
    page.run()
else:  # an empty view, an empty or failing dataset: no page may act on the previous selection
    router.page_not_run()
    st.warning(f"{sidebar.problem() or 'Pick a dataset and a sample in the sidebar.'} "
               "Nothing to explore, compare or run until the sidebar's view has samples.",
               icon=":material/filter_alt_off:")
