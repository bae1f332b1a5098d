"""Findings: what users concluded, across the dataset, a page at a time, each with a link back to
the state it was made in and a way to the FiftyOne App."""
from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from camcore import overlay
from camcore.errors import CamError
from ui import cache, data, page, text
from ui.sidebar import Selection
from ui.state import App, Findings, Sidebar

PAGE_ROWS = 20  # findings per page
THUMBS = 8  # of them shown with their heatmap


def main(sel: Selection | None) -> None:
    # Findings are the dataset's, whatever the sidebar's filter holds (an empty view included).
    name = sel.dataset if sel is not None else st.session_state.get(Sidebar.DATASET)
    if not name:
        st.info("Pick a dataset in the sidebar.")
        return
    st.markdown(f"#### Findings in {text.escape(name)}")
    dataset = data.fresh_dataset(name)  # findings recorded elsewhere show on this visit
    tags = data.finding_labels(dataset)  # indexed: cheap, and never stale
    if not tags:
        st.info("No findings yet: record one on the Explore page.")
        return
    _choose_new_labels(tags)
    chosen = st.multiselect("Finding", tags, default=tags, key=Findings.FILTER)
    found = data.findings_view(dataset, chosen)
    total = data.count_findings(found)
    pages = max(1, -(-total // PAGE_ROWS))
    st.caption(f"{total:,} finding{'' if total == 1 else 's'}, {PAGE_ROWS} a page, in the dataset's sample order. "
               "Each link reopens the explorer as it was when the finding was made.")
    number = 1
    if pages > 1:
        number = int(st.columns([1, 4])[0].number_input(f"Page (of {pages})", 1, pages, 1, key=Findings.PAGE))
    rows = data.list_findings(found, skip=(number - 1) * PAGE_ROWS, limit=PAGE_ROWS)
    folder = cache.common_folder(name)
    df = pd.DataFrame(rows, columns=["sample_id", "filepath", "tag", "note", "heatmap_field", "created_at", "url"])
    df["file"] = df["filepath"].map(lambda p: data.relative_label(p or "", folder))
    # A finding made with no map or no link: an empty cell, not the table's grey "None"
    df[["note", "heatmap_field", "url"]] = df[["note", "heatmap_field", "url"]].fillna("")
    # Cells are text (never markup); the link column opens the state the finding was made in.
    # The link right after the file: at 1280 px the note's wide column pushed it off-screen
    st.dataframe(df[["file", "tag", "url", "note", "heatmap_field", "created_at"]], hide_index=True,
                 width="stretch", column_config={
                     "note": st.column_config.TextColumn(width="large"),
                     "url": st.column_config.LinkColumn("open", display_text="open in CAM Explorer",
                                                        help="The explorer as it was when the finding was made"),
                 })
    _thumbnails(dataset, rows[:THUMBS], folder)
    _app_panel(dataset, chosen, found)


def _choose_new_labels(tags: list[str]) -> None:
    """A finding label recorded since the last visit (here or elsewhere) starts chosen; labels the
    user left out stay out, and labels no longer recorded leave the filter."""
    seen = set(st.session_state.get(Findings.SEEN) or ())
    if Findings.FILTER in st.session_state:
        kept = [t for t in st.session_state[Findings.FILTER] if t in tags]
        st.session_state[Findings.FILTER] = kept + [t for t in tags if t not in seen and t not in kept]
    st.session_state[Findings.SEEN] = list(tags)


def _thumbnails(dataset, rows: list[dict], folder: str) -> None:
    cols = st.columns(4)
    for i, row in enumerate(rows):
        col = cols[i % 4]
        path = row["filepath"] or ""
        label = text.escape(data.relative_label(path, folder))
        if not os.path.exists(path):
            col.caption(f"{label}: image missing")
            continue
        img = cache.image(path, os.path.getmtime(path))
        field = row["heatmap_field"]
        heat = data.read_heatmap(dataset, row["sample_id"], field) if field else None
        col.image(overlay.overlay(img.rgb, heat, 0.5, "jet") if heat is not None else img.rgb, width="stretch")
        note = f" — {text.escape(row['note'])}" if row["note"] else ""
        col.caption(f"**{label}**: {text.escape(row['tag'])}{note}" + (f" · `{field}`" if field else ""))


def _app_panel(dataset, chosen: list[str], found) -> None:
    tag_names = [data.finding_tag(t) for t in chosen]
    st.caption(text.escape(f"In the FiftyOne App these samples carry the tags {', '.join(tag_names)} and a "
                           f"{data.FINDINGS_FIELD} field."))
    p1, p2, _ = st.columns([1, 3, 2])  # the button's label whole at 1280 px
    port = int(p1.number_input("App port", 1024, 65535, st.session_state.get(App.FINDINGS_LAUNCHED)
                               or st.session_state.get(App.LAUNCHED) or data.DEFAULT_APP_PORT,
                               key=Findings.PORT))
    if p2.button("Launch the FiftyOne App on these samples", key=Findings.LAUNCH):
        try:
            with st.spinner("Starting the FiftyOne App…", show_time=True):
                data.launch_app(found, port=port)
            st.session_state[App.FINDINGS_LAUNCHED] = port
            st.session_state.pop(App.LAUNCHED, None)  # the App no longer shows the whole dataset
        except CamError as exc:
            st.error(text.escape(exc))
        except Exception as exc:  # port taken, server failed: say so
            st.error(f"Could not start the FiftyOne App on port {port}: {text.escape(exc)}")
    if st.session_state.get(App.FINDINGS_LAUNCHED) == port:
        st.link_button(f"Go to the FiftyOne App (port {port}) ↗", data.app_url(dataset.name, port=port))


page.serve("findings", main, missing=None)
