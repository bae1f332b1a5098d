"""Streamlit glue shared by the pages: cached loaders, the shared sidebar, small renderers.

Only this package and the pages import streamlit; all computing happens in camcore.
"""
