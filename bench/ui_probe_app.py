"""The app's per-click work without a model: the shared sidebar, then Explore's header and its
thumbnail strip (bench/scale_ui.py times this with AppTest)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import streamlit as st  # noqa: E402

from ui import sidebar, text, thumbnails, urlstate  # noqa: E402

sel = sidebar.draw()
if sel is not None:
    st.markdown(f"#### {text.escape(sel.label)}")
    st.text(f"dataset {sel.dataset} · sample {sel.position + 1:,} of {sel.count:,} · id {sel.sample_id}")
    thumbnails.thumbnail_strip(sel)
urlstate.write("explore")
