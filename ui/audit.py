"""The Audit, Review and Runs pages' parts: the run picker, the summary (cached), Plotly figures
(pure functions), chart selections turned into the sidebar's narrowing, and the narrowed view's
ways out (a saved view, the FiftyOne App).

Plots are Plotly (`st.plotly_chart(on_select="rerun")`): a click on a bar or a point, a box of
points (the toolbar's Box Select), or a row of the class table narrows the sidebar's view
(`ViewSpec.narrow`), so every page and the URL follow it.
"""
from __future__ import annotations

import dataclasses
import os

import plotly.graph_objects as go
import streamlit as st

from camcore import overlay, store
from camcore.store import audit, views
from ui import cache, text, urlstate
from ui.sidebar import Selection
from ui.state import App, Audit, Sidebar

SHARE_AXIS = "share of heatmap mass on the object (0–1)"
CONF_AXIS = "model probability of the explained class (0–1)"
COUNT_AXIS = "samples (count)"
NO_VALUE = "—"  # a table cell with no value (a run with no share): Streamlit's own text there is "None"
CHART_HEIGHT = 320  # three charts and the table fit 1280x800 with the sidebar
APP_PORT = store.DEFAULT_APP_PORT
FINDING_TAGS = store.FINDING_TAGS
settings_in = audit.settings_in
mixed_line = audit.mixed_line
describe_about = audit.describe_about
worst_first = audit.worst_first


def base_spec(sel: Selection) -> views.ViewSpec:
    """The sidebar's view without the Audit page's narrowing: what the charts describe."""
    return dataclasses.replace(sel.view_spec, narrow="")


def pick_run(sel: Selection, key: str = Audit.RUN, label: str = "Heatmap run") -> audit.AuditRun | None:
    """The heatmap field (with measures) to audit; None after saying how to make one."""
    dataset = store.load_dataset(sel.dataset)
    found = audit.runs(dataset)
    if not found:
        st.info("No stored measures in this dataset yet: " + text.escape(audit.HOW_TO_MEASURE.format(
            command="this command:")))
        st.code(audit.measure_command(sel.dataset), language="bash")  # a code block shows its text as is
        return None
    names = [r.heatmap for r in found]
    wanted = st.session_state.get(key)
    if wanted not in names:
        # The link's run= first: its reviewed= and narrow= are positions in that run's queue and measures.
        link = st.session_state.get(Audit.RUN) or urlstate.pending().run
        st.session_state[key] = link if link in names else names[0]
        if link and link not in names:
            st.warning(f"No heatmap run {text.escape(link)} with stored measures in this dataset: showing "
                       f"{text.escape(names[0])}.")
    name = st.selectbox(label, names, key=key, help="A heatmap field whose measures a batch stored (camm_* fields).")
    return next(r for r in found if r.heatmap == name)


@st.cache_data(ttl=30, show_spinner=False, max_entries=64)
def summary(dataset_name: str, spec: views.ViewSpec, heatmap: str, fields: tuple[tuple[str, str], ...],
            stamp: int) -> audit.Summary:
    """The view's summary (one aggregation on the server, or the stored one), cached per view."""
    view = views.build_view(store.load_dataset(dataset_name), spec)
    return audit.audit_summary(view, audit.AuditRun(heatmap, dict(fields)))


def problem(s: audit.Summary, sel: Selection, run: audit.AuditRun) -> str | None:
    """What stops the audit of this view, in one line (no measures, mixed settings)."""
    return audit.check(s, sel.dataset, run)


def summary_of(sel: Selection, run: audit.AuditRun) -> audit.Summary:
    return summary(sel.dataset, base_spec(sel), run.heatmap, tuple(sorted(run.fields.items())),
                   views.count(store.load_dataset(sel.dataset)))


# ---------------------------------------------------------------- figures (pure)


def plain(value: object) -> str:
    """Data (a class name) as Plotly text: Plotly reads <b>, <a href> ... in labels and hover
    text as markup; entities keep it text."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _layout(fig: go.Figure, x: str, y: str) -> go.Figure:
    # Not dragmode "select": Streamlit then sets clickmode to "event" and a click on a bar or a point
    # selects nothing. With a drag that zooms, a click selects (shift-click adds) and the toolbar's
    # Box / Lasso select still select several.
    fig.update_layout(height=CHART_HEIGHT, margin={"l": 70, "r": 10, "t": 60, "b": 50}, showlegend=False,
                      xaxis_title=x, yaxis_title=y, dragmode="zoom", clickmode="event+select")
    # The title below the toolbar's row (the toolbar shows over the top edge while the mouse is on
    # the chart, and covered a long title at 1280 px).
    fig.update_layout(title={"y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 30}})
    return fig


def histogram_figure(s: audit.Summary, threshold: float | None = None) -> go.Figure:
    centers = [(a + b) / 2 for a, b in zip(s.edges[:-1], s.edges[1:], strict=True)]
    width = s.edges[1] - s.edges[0] if len(s.edges) > 1 else 0.05
    colours = ["#d62728" if threshold is not None and c < threshold else "#1f77b4" for c in centers]
    fig = go.Figure(go.Bar(x=centers, y=list(s.counts), width=width * 0.95, marker_color=colours,
                           hovertemplate="share %{x:.2f}: %{y} samples<extra></extra>"))
    fig.update_layout(title="On-object share (red: background-dominated)")
    # Counts are whole samples: Plotly's own ticks for a few samples read 0.2, 0.4, ...
    fig.update_yaxes(tickformat=",d", rangemode="tozero", **({"dtick": 1} if max(s.counts, default=0) < 10 else {}))
    return _layout(fig, SHARE_AXIS, COUNT_AXIS)


def scatter_figure(s: audit.Summary) -> go.Figure:
    fig = go.Figure(go.Scattergl(x=[p[1] for p in s.points], y=[p[2] for p in s.points], mode="markers",
                                 customdata=[p[0] for p in s.points], text=[plain(p[3]) for p in s.points],
                                 marker={"size": 5, "opacity": 0.6},
                                 hovertemplate="%{text}: confidence %{x:.2f}, share %{y:.2f}<extra></extra>"))
    fig.update_layout(title=f"Confidence against on-object share ({len(s.points):,} samples drawn)")
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, CONF_AXIS, "on-object share (0–1)")


def no_share(s: audit.Summary, run: audit.AuditRun) -> str | None:
    """Why no measured sample has an on-object share (nothing to chart), in one line; None when some do."""
    if s.with_share:
        return None
    about = s.settings[0][0] if s.settings else ""
    own = audit.object_of(about) == "model"
    why = ("they were measured on the model's own mask or box, and a classifier has none" if own else
           "no label of the object field names the class each map explains")
    how = ("measure again with an object field (--object-field, the Batch page's 'Object from')" if own else
           "measure again on every object of the field (--object-label '*', the Batch page's 'Any object')")
    return f"No sample of this view has an on-object share in {run.heatmap}: {why}. To chart them, {how}."


def no_scatter(s: audit.Summary, run: audit.AuditRun) -> str | None:
    """Why there is no confidence-against-share plot, in one line; None when there is one."""
    if "conf" not in run.fields:
        return (f"No confidence field for {run.heatmap} (its camm_conf_… field was deleted or renamed): a batch "
                "with measures stores it again.")
    if not s.points:
        return ("No measured sample of this view has both a confidence and an on-object share (a segmentation "
                "model stores no confidence): nothing to plot against the share.")
    return None


def threshold_of(s: audit.Summary) -> float | None:
    """The background threshold the measures were made with (from their settings)."""
    for part in (s.settings[0][0] if s.settings else "").split(";"):
        if part.startswith("t="):
            try:
                return float(part[2:])
            except ValueError:
                return None
    return None


def no_map(sel: Selection, run: audit.AuditRun) -> str | None:
    """Why the class table has no classes (one "None"), in one line: the map field itself was deleted
    or renamed (in the App), which held the class each map explains; None while it is there."""
    if store.load_dataset(sel.dataset).get_field(run.heatmap) is not None:
        return None
    return (f"The heatmap field {run.heatmap} was deleted or renamed: the classes its maps explained are gone "
            "(one class, None), its measures stay; a batch with measures makes the maps again.")


def no_bg(run: audit.AuditRun) -> str | None:
    """Why the table has no background-dominated counts, in one line; None when it has them."""
    if "bg" in run.fields:
        return None
    return (f"No background-dominated counts for {run.heatmap} (its camm_bg_… field was deleted or renamed): a "
            "batch with measures stores it again; the histogram's red bars still use the threshold.")


def class_rows(s: audit.Summary, run: audit.AuditRun) -> list[dict]:
    """The per-class table; its background-dominated counts blank when the run's bg field was
    deleted or renamed (the aggregation then counts none: 0 would say no sample is)."""
    counted = "bg" in run.fields
    return [{"class": c, "samples": n, "mean share (0–1)": None if m is None else round(m, 3),
             "background-dominated": bg if counted and m is not None else None} for c, n, m, bg in s.classes]


# ---------------------------------------------------------------- selections -> the sidebar's narrowing


def narrow_to(narrow: str | None, source: str) -> None:
    """Narrow the sidebar's view when the selection of this chart (or the class table) changed
    since its last run. Each keeps its selection across reruns: narrowing on an unchanged one would
    undo a newer narrowing made on another chart (they would take turns forever)."""
    seen = f"{Audit.APPLIED}_{source}"
    if st.session_state.get(seen, "") == (narrow or ""):
        return
    st.session_state[seen] = narrow or ""
    if narrow and st.session_state.get(Sidebar.NARROW) != narrow:
        st.session_state[Sidebar.NARROW] = narrow
        st.rerun()  # the sidebar draws the narrowed view, and the URL follows


def from_histogram(event, s: audit.Summary, run: audit.AuditRun) -> str | None:
    points = list(getattr(getattr(event, "selection", None), "points", None) or [])
    if not points:
        return None
    half = (s.edges[1] - s.edges[0]) / 2
    xs = [float(p["x"]) for p in points if "x" in p]
    return audit.bin_narrow(run, round(max(0.0, min(xs) - half), 6), round(min(1.0, max(xs) + half), 6)) if xs \
        else None


def from_scatter(event, run: audit.AuditRun) -> str | None:
    points = list(getattr(getattr(event, "selection", None), "points", None) or [])
    xs = [float(p["x"]) for p in points if "x" in p]
    ys = [float(p["y"]) for p in points if "y" in p]
    if not xs or "conf" not in run.fields:
        return None
    return audit.box_narrow(run, (min(xs), max(xs)), (min(ys), max(ys)))


def from_table(event, rows: list[dict], run: audit.AuditRun) -> str | None:
    chosen = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    return audit.class_narrow(run, rows[chosen[0]]["class"]) if chosen else None


# ---------------------------------------------------------------- the narrowed view's ways out


def save_view(sel: Selection) -> None:
    name = str(st.session_state.get(Audit.SAVE_NAME) or "").strip()
    if not name:
        st.session_state["_audit_saved"] = ("warning", "Name the saved view first.")
        return
    try:
        replaced = audit.save_view(sel.view(), name)
        st.session_state["_audit_saved"] = ("success", f"Saved as the FiftyOne view {name!r}"
                                            + (", replacing the saved view of that name." if replaced else "."))
    except Exception as exc:  # a bad name or a database error: one line
        st.session_state["_audit_saved"] = ("error", f"Could not save the view {name!r}: {exc}")


def app_port() -> int:
    """Where to serve the App: the port Explore or Findings already serves it on (one App a process:
    another port would close that one), else FiftyOne's."""
    return int(st.session_state.get(App.LAUNCHED) or st.session_state.get(App.FINDINGS_LAUNCHED) or APP_PORT)


def open_app(sel: Selection) -> None:
    """Serve the sidebar's (narrowed) view in the FiftyOne App; its link is shown after the click."""
    port = app_port()
    try:
        store.launch_app(sel.view(), port)
        st.session_state["_audit_app"] = store.app_url(sel.dataset, None, port)
    except Exception as exc:  # the App's server did not start or answer: one line
        st.session_state["_audit_saved"] = ("error", f"Could not open the FiftyOne App: {exc}")


def ways_out(sel: Selection) -> None:
    """Save the narrowed view as a FiftyOne saved view; open it in the FiftyOne App."""
    c1, c2, c3 = st.columns([3, 1, 2])
    c1.text_input("Saved view name", key=Audit.SAVE_NAME, placeholder="e.g. background-dominated cats",
                  label_visibility="collapsed")
    c2.button("Save view", key=Audit.SAVE, on_click=save_view, args=(sel,))
    # A callback, not the return value: a click survives the router's one rerun (router.ensure_routed).
    c3.button("Open in the FiftyOne App", key=Audit.OPEN_APP, on_click=open_app, args=(sel,))
    url = st.session_state.pop("_audit_app", None)
    if url:
        c3.markdown(f"[Open the App]({url})")
    said = st.session_state.pop("_audit_saved", None)
    if said:
        getattr(st, said[0])(text.escape(said[1]))


def sample_measures(sel: Selection, sample_id: str, run: audit.AuditRun) -> dict:
    """One sample's stored measures (measure -> value), read from the database by id."""
    return audit.sample_measures(store.load_dataset(sel.dataset), sample_id, run)


# ---------------------------------------------------------------- two runs side by side

CHANGE_AXIS = "share change, B − A (−1…1)"  # fits the plot's height at 1280 px
most_changed = audit.most_changed
class_changes = audit.class_changes
count_both = audit.count_both
runs_problem = audit.runs_problem


def pick_two(sel: Selection) -> tuple[audit.AuditRun, audit.AuditRun] | None:
    """Runs A and B (two heatmap fields with measures), or None after saying what is missing."""
    found = audit.runs(store.load_dataset(sel.dataset))
    if len(found) < 2:
        st.info("Two heatmap runs with stored measures are needed (two weights of one model, or two models): "
                + text.escape(audit.HOW_TO_MEASURE.format(command="this command, once per run:")))
        st.code(audit.measure_command(sel.dataset), language="bash")
        return None
    names = before_first([r.heatmap for r in found], store.heatmap_fields(store.load_dataset(sel.dataset)))
    c1, c2 = st.columns(2)
    a = c1.selectbox("Run A (before)", names, index=0, key=Audit.RUN_A)
    b = c2.selectbox("Run B (after)", names, index=1, key=Audit.RUN_B)
    if a == b:
        st.warning("Choose two different runs.")
        return None
    by_name = {r.heatmap: r for r in found}
    return by_name[a], by_name[b]


def before_first(names: list[str], meanings: dict[str, dict]) -> list[str]:
    """The runs in the order the pickers offer them: untrained runs first, so that a trained model
    and its untrained twin open as A (before) = untrained, B (after) = trained."""
    def untrained(name: str) -> bool:  # the field's meaning, else its name's variant token
        variant = (meanings.get(name) or {}).get("variant")
        return "untrained" in str(variant).split("_") if variant is not None else "untr" in name.split("_")

    def twin(name: str) -> tuple:  # the map it makes, untrained or not: its meaning, else its name
        m = meanings.get(name)
        if not m:
            return tuple(t for t in name.split("_") if t != "untr")
        variant = tuple(t for t in str(m.get("variant") or "").split("_") if t and t != "untrained")
        return (m.get("model"), m.get("method"), m.get("layer"), m.get("target"), variant)

    ordered = sorted(names, key=lambda n: (not untrained(n), n))
    if ordered and untrained(ordered[0]):  # its trained twin opens as B (not the next name: another method)
        found = [n for n in ordered[1:] if not untrained(n) and twin(n) == twin(ordered[0])]
        if found:
            ordered.remove(found[0])
            ordered.insert(1, found[0])
    return ordered


def class_change_table(rows: list[tuple[str, int, float, int, int]]) -> tuple[list[dict], dict]:
    """The per-class table beside the plot and its column settings: narrow number columns, so all
    five fit beside the plot at 1280 px."""
    table = [{"class": c, "samples": n, "mean change": round(m, 3), "better": b, "worse": w}
             for c, n, m, b, w in rows]
    # Pixels: Streamlit's "small" and "medium" left the last column past the edge at 1280 px.
    config = {"class": st.column_config.TextColumn("class", width=130),
              "samples": st.column_config.NumberColumn("samples", width=68),
              "mean change": st.column_config.NumberColumn("mean Δ", width=64, format="%+.3f",
                                                           help="mean change of share, B − A"),
              "better": st.column_config.NumberColumn("better", width=58),
              "worse": st.column_config.NumberColumn("worse", width=54)}
    return table, config


PLOTTED_CLASSES = 24  # bars that stay readable beside the table at 1280 px; the table lists every class


def class_change_figure(rows: list[tuple[str, int, float, int, int]], by: str = "A") -> go.Figure:
    """The mean change per class, best first; over PLOTTED_CLASSES classes (ImageNet's 1,000) the
    most improved and the most worsened halves, as a 1,000-bar plot is unreadable."""
    shown = rows if len(rows) <= PLOTTED_CLASSES else rows[:PLOTTED_CLASSES // 2] + rows[-(PLOTTED_CLASSES // 2):]
    title = ("Classes that got better (green) or worse (red)" if shown is rows else
             f"The {PLOTTED_CLASSES // 2} most improved and worsened of {len(rows):,} classes")
    rows = shown
    fig = go.Figure(go.Bar(x=[plain(r[0]) for r in rows], y=[r[2] for r in rows],
                           marker_color=["#2ca02c" if r[2] > 0 else "#d62728" for r in rows],
                           customdata=[[r[1], r[3], r[4]] for r in rows],
                           hovertemplate="%{x}: %{y:+.3f} (%{customdata[0]} samples, %{customdata[1]} better, "
                                         "%{customdata[2]} worse)<extra></extra>"))
    fig.update_layout(title=title)  # not cut at 1280 px
    return _layout(fig, f"class (explained by run {by})", CHANGE_AXIS)


def side_by_side(sel: Selection, change: audit.Change, run_a: audit.AuditRun, run_b: audit.AuditRun) -> None:
    """Both stored maps of one sample over its image, with their shares."""
    dataset = store.load_dataset(sel.dataset)
    try:
        img = cache.image(change.filepath, os.path.getmtime(change.filepath))
    except Exception as exc:  # a missing or unreadable file: one line
        st.error(f"Cannot read the image: {text.escape(exc)}")
        return
    cols = st.columns(2)
    for col, run, share, name in ((cols[0], run_a, change.share_a, "A"), (cols[1], run_b, change.share_b, "B")):
        heatmap = store.read_heatmap(dataset, change.sample_id, run.heatmap)
        shown = overlay.overlay(img.rgb, heatmap) if heatmap is not None else img.rgb
        col.image(shown, width="stretch",
                  caption=text.escape(f"{name}: {run.heatmap} · share on the object {share:.3f}"
                                      + ("" if heatmap is not None else " · no stored map")))
