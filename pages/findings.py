"""Findings: what users concluded, across the dataset, with a way back to the FiftyOne App."""
from __future__ import annotations

from ui import router

router.ensure_routed("findings")

import os  # noqa: E402

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from camcore import overlay, store  # noqa: E402
from camcore.errors import CamError  # noqa: E402
from ui import cache, page, render, sidebar  # noqa: E402


def main() -> None:
    # Findings are the dataset's, whatever the sidebar's filter holds (an empty view included).
    sel = sidebar.current()
    name = sel.dataset if sel is not None else st.session_state.get("dataset")
    if not name:
        st.info("Pick a dataset in the sidebar.")
        return
    st.markdown(f"#### Findings in {name}")
    rows = store.list_findings(store.load_dataset(name))
    if not rows:
        st.info("No findings yet: record one on the Explore page.")
        return
    df = pd.DataFrame(rows)
    tags = sorted(df["tag"].unique())
    chosen = st.multiselect("Finding", tags, default=tags, key="findings_filter")
    df = df[df["tag"].isin(chosen)]
    df["file"] = df["filepath"].map(os.path.basename)
    st.dataframe(df[["file", "tag", "note", "heatmap_field", "created_at"]], hide_index=True, width="stretch",
                 column_config={"note": st.column_config.TextColumn(width="large")})
    dataset = store.load_dataset(name)
    cols = st.columns(4)
    for i, row in enumerate(df.head(16).itertuples()):
        col = cols[i % 4]
        if not os.path.exists(row.filepath):
            col.caption(f"{row.file}: image missing")
            continue
        img = cache.image(row.filepath, os.path.getmtime(row.filepath))
        heat = store.read_heatmap(dataset, row.sample_id, row.heatmap_field) if row.heatmap_field else None
        shown = overlay.overlay(img.rgb, heat, 0.5, "jet") if heat is not None else img.rgb
        col.image(shown, width="stretch")
        col.caption(f"**{row.file}**: {row.tag}" + (f" — {row.note}" if row.note else "")
                    + (f" · `{row.heatmap_field}`" if row.heatmap_field else ""))
    tag_names = [store.finding_tag(t) for t in chosen]
    st.caption(f"In the FiftyOne App these samples carry the tags {', '.join(tag_names)} and a `cam_findings` "
               "field.")
    p1, p2, _ = st.columns([1, 2, 3])
    port = int(p1.number_input("App port", 1024, 65535, st.session_state.get(render.FINDINGS_APP)
                               or st.session_state.get("fo_launched") or store.DEFAULT_APP_PORT,
                               key="findings_port"))
    n = df["sample_id"].nunique()
    if p2.button(f"Launch the FiftyOne App on {'this sample' if n == 1 else f'these {n} samples'}", key="findings_app"):
        try:
            with st.spinner("Starting the FiftyOne App…", show_time=True):
                store.launch_app(store.make_view(dataset, tags=tag_names), port=port)
            st.session_state[render.FINDINGS_APP] = port
            st.session_state.pop("fo_launched", None)  # the App no longer shows the whole dataset
        except CamError as exc:
            st.error(str(exc))
        except Exception as exc:  # port taken, server failed: say so
            st.error(f"Could not start the FiftyOne App on port {port}: {exc}")
    if st.session_state.get(render.FINDINGS_APP) == port:
        st.link_button(f"Go to the FiftyOne App (port {port}) ↗", store.app_url(name, port=port))


page.run(main)
