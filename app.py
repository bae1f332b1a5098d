"""CAM Explorer: the router and the sidebar every page shares. Run: make run"""
from __future__ import annotations

import os

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import streamlit as st  # noqa: E402

from ui import router, sidebar  # noqa: E402

st.set_page_config(page_title="CAM Explorer", page_icon=":material/local_fire_department:", layout="wide")
page = router.navigation()
sidebar.draw()
page.run()
