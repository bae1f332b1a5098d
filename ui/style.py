"""The page's static CSS (no data in it)."""
from __future__ import annotations

import streamlit as st

from ui.state import Compute, Explore

# The progress of a slow computation hides once the script is not running: after Streamlit's own
# Stop no frozen progress stays on screen, and the note that says it stopped shows instead.
# Multiselect chips wrap instead of scrolling sideways. The main heatmap never grows taller than
# the window.
STYLE = f"""<style>
.stApp[data-test-script-state="notRunning"] .st-key-{Compute.BUSY} {{ display: none; }}
.stApp:not([data-test-script-state="notRunning"]) .st-key-{Compute.STOPPED} {{ display: none; }}
[data-testid="stMultiSelect"] .react-aria-ComboBox > [role="group"] {{ height: auto; max-height: none; }}
[data-testid="stMultiSelectTagsContainer"],
[data-testid="stMultiSelectTagsContainer"] > [role="group"] {{ flex-wrap: wrap; overflow: visible; height: auto;
  max-height: none; }}
[data-testid="stMultiSelectTagsContainer"] [data-tag] {{ flex-shrink: 0; max-width: 100%; }}
[data-testid="stMultiSelectTagsContainer"] {{ min-width: 0; flex: 1 1 0%; }}
.st-key-{Explore.MAIN} [data-testid="stImage"] img {{ max-height: max(240px, calc(100vh - 300px)); width: auto;
  max-width: 100%; object-fit: contain; }}
[data-testid="stMainBlockContainer"] {{ padding-top: 3.5rem; }}
</style>"""


def page_style() -> None:
    st.html(STYLE)
