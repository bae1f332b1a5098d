"""Streamlit glue shared by the pages. Data flows one way: widgets, then compute, then frozen
results, then renderers.

- page.py: the preamble every page shares (routing, the selection check, the error edge);
  router.py: st.navigation and deep links; sidebar.py: the shared selection (what to look at),
  sidebar_look.py: its "how to look" section (model, weights, size); urlstate.py: the URL;
- state.py: every session_state key, namespaced per page;
- widgets.py: widgets whose value outlives a run that did not draw them;
- compute.py: the one module that computes (imports camcore.engine): explainers, heatmaps with
  progress and Cancel, scores, rankings; it returns frozen results (Shown, Grid, CamResult);
- explore_view.py, chips.py, thumbnails.py, save_panel.py, batch_runs.py and Compare's
  compare_studies.py, compare_grid.py, compare_road.py, compare_ranking.py: renderers and panels
  that draw from those results;
- cache.py: st.cache_* around camcore's loaders; data.py: what pages need from the store;
  style.py, text.py: CSS and escaping.

Only this package and the pages import streamlit; the model math happens in camcore. Nothing here
imports fiftyone: the database is reached through camcore.store.
"""
