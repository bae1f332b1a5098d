"""Explore's save panel: push what is on screen, record a finding, open the FiftyOne App."""
from __future__ import annotations

import os
import re

import streamlit as st

from camcore import store
from camcore.errors import CamError
from camcore.results import Heatmap
from ui import sidebar, text, urlstate
from ui.compute import Shown, plural
from ui.data import explorer_address, stored_fields
from ui.explore_view import caption
from ui.state import App, Explore
from ui.widgets import fresh_label_selectbox, request


def pushed_message(fields: list[str], replaced: list[str], filename: str) -> str:
    """"Saved fields: …" for new fields; "Replaced fields: …" for the ones that were already saved."""
    def names(fs):
        return ", ".join(f"`{f.replace('`', '')}`" for f in fs)

    new = [f for f in fields if f not in replaced]
    filename = text.escape(filename)  # a data string: "![f](http://…) x.png" must stay a name
    parts = [f"Saved fields: {names(new)} (on {filename})"] if new else []
    if replaced:
        parts.append(f"Replaced fields: {names(replaced)} (already saved on {filename}; overwritten)")
    return "  \n".join(parts)


def save_panel(sel: sidebar.Selection, shown: Shown, pairs: list[tuple[str, str]]) -> None:
    """Push what is on screen, record a finding, open the FiftyOne App."""
    st.divider()
    maps: list[Heatmap] = []
    for m, layer in pairs:
        h = shown.heatmap(m, layer)
        if h is not None and all(h is not s for s in maps):
            maps.append(h)
    c1, c2, c3 = st.columns([2, 3, 2])
    _push_column(c1, sel, shown, maps)
    with c2.form("finding", clear_on_submit=True):
        _finding_form(sel, shown, maps)
    _app_column(c3, sel)


def _push_column(c1, sel: sidebar.Selection, shown: Shown, maps: list[Heatmap]) -> None:
    c1.markdown("**Save to FiftyOne**")
    # The confirmation belongs to exactly this sample and these settings: shown only while they last.
    context = (sel.dataset, sel.sample_id, sel.model, sel.weights, sel.input_size, shown.result.target.name,
               shown.aug_smooth, shown.eigen_smooth, tuple((h.method, h.layer) for h in maps))
    # Callbacks, not return values: a click survives the router's one rerun (router.ensure_routed).
    c1.button(f"Push {plural(len(maps), 'heatmap')} to FiftyOne", type="primary", key=Explore.PUSH,
              disabled=not maps, on_click=request, args=(Explore.PUSH_REQUESTED,))
    if st.session_state.pop(Explore.PUSH_REQUESTED, False) and maps:
        try:
            with st.spinner("Writing heatmaps…", show_time=True):
                dataset = store.load_dataset(sel.dataset)
                kept = [store.stored_identity(dataset, h.identity).field_name for h in maps]  # older names too
                before = stored_fields(dataset, sel.sample_id, kept)
                fields = store.push_heatmaps(dataset, sel.sample_id, shown.with_heatmaps(maps))
            st.session_state[Explore.PUSHED] = {"context": context, "fields": fields,
                                                "replaced": [f for f in fields if f in before]}
        except CamError as exc:
            c1.error(text.escape(exc))
    pushed = st.session_state.get(Explore.PUSHED)
    if pushed is not None and (not isinstance(pushed, dict) or pushed.get("context") != context):
        st.session_state.pop(Explore.PUSHED)  # another sample, model or settings: not about these
    elif pushed is not None:
        c1.success(pushed_message(pushed["fields"], pushed["replaced"], os.path.basename(sel.filepath)))


def _finding_form(sel: sidebar.Selection, shown: Shown, maps: list[Heatmap]) -> None:
    st.markdown("**Record a finding**")
    tag = st.selectbox("Finding", list(store.FINDING_TAGS) + ["other…"])
    custom = st.text_input("Other finding (when 'other…')", max_chars=60)
    note = st.text_area("Note", max_chars=2000, placeholder="e.g. the plane is recognised by the sky")
    ref = fresh_label_selectbox(st, "About heatmap", list(range(len(maps))), lambda i: caption(maps[i]),
                                Explore.FINDING_REF, disabled=not maps)
    st.form_submit_button("Save finding", on_click=request, args=(Explore.FINDING_REQUESTED,))
    if not st.session_state.pop(Explore.FINDING_REQUESTED, False):
        return
    chosen = custom.strip() if tag == "other…" else tag
    if tag == "other…" and not re.search(r"[A-Za-z0-9]", chosen):  # the store's rule, said for the form
        st.error("Type the finding's name in 'Other finding' (letters or digits), then save again.")
        return
    try:
        dataset = store.load_dataset(sel.dataset)
        field = None
        if maps and ref is not None:  # the finding points at a stored heatmap: store it first
            field = store.push_heatmaps(dataset, sel.sample_id, shown.with_heatmaps([maps[ref]]))[0]
        store.add_finding(dataset, sel.sample_id, chosen, note, field, url=urlstate.current_url())
        st.success(f"Saved finding '{text.escape(chosen)}' (tag {text.escape(store.finding_tag(chosen))}).")
    except CamError as exc:
        st.error(text.escape(exc))


def _app_column(c3, sel: sidebar.Selection) -> None:
    c3.markdown("**FiftyOne App**")
    running = store.app_session()  # one App per process, whichever page launched it
    running_port = int(running.server_port) if running is not None else None
    if running_port is not None and App.PORT not in st.session_state:
        st.session_state[App.PORT] = running_port
    port = c3.number_input("App port", 1024, 65535, store.DEFAULT_APP_PORT, key=App.PORT)
    if c3.button("Launch the FiftyOne App", key=App.LAUNCH):
        try:
            with st.spinner("Starting the FiftyOne App…", show_time=True):
                # Not cached: the Findings page may have pointed the App at its view since; this
                # puts the whole dataset back (a running App on this port is only retargeted).
                store.launch_app(store.load_dataset(sel.dataset), port=int(port),
                                 explorer_url=explorer_address())
            st.session_state[App.LAUNCHED] = int(port)
            st.session_state.pop(App.FINDINGS_LAUNCHED, None)
            running = store.app_session()
            running_port = int(running.server_port) if running is not None else None
        except CamError as exc:
            c3.error(text.escape(exc))
        except Exception as exc:  # port taken, server failed: say so
            c3.error(f"Could not start the FiftyOne App on port {port}: {text.escape(exc)}")
    # The App this process serves (launched here, from Findings or another session) opens the
    # sample on its own port, whatever the port field says.
    launched = running_port is not None
    c3.link_button("Open this sample in the FiftyOne App",
                   store.app_url(sel.dataset, sel.sample_id, running_port or int(port)),
                   disabled=not launched,
                   help=(f"The FiftyOne App runs on port {running_port}." if launched
                         else "Launch the FiftyOne App first."))
