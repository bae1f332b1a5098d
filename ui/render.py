"""Renderers for the Explore page: they read widgets, call camcore, draw. No model math here."""
from __future__ import annotations

import os
import re
import traceback

import pandas as pd
import streamlit as st

from camcore import methods, overlay, store, views
from camcore.engine import Explainer
from camcore.errors import CamError
from camcore.images import LoadedImage
from camcore.models import LoadedModel
from camcore.results import Heatmap
from ui import cache, sidebar, text

AUTO_TARGET = "__auto__"
STRIP = 8  # thumbnails shown around the current sample


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def unexpected(exc: BaseException) -> None:
    st.error(f"Something went wrong: {type(exc).__name__}: {exc}. Try another sample, model or method; "
             "if it persists, report it with the details below.")
    with st.expander("Details"):
        st.code("".join(traceback.format_exception(exc)))


def thumbnail_strip(sel) -> None:
    """A strip of the samples around the current one (one page read); a click opens that sample."""
    cols = st.columns(STRIP)
    folder = cache.common_folder(sel.dataset)
    for col, (pos, sid, path) in zip(cols, sel.neighbours(STRIP)):
        try:
            thumb = cache.thumbnail(path, os.path.getmtime(path))
        except OSError:
            thumb = None
        if thumb is not None:
            col.image(thumb, width="stretch")
        else:
            col.caption("(unreadable)")
        current = sid == sel.sample_id
        name = views.relative_label(path, folder)
        short = name if len(name) <= 18 else "…" + name[-17:]  # the end names the file
        # The current one is highlighted (primary), not disabled: a greyed button reads "unavailable".
        # Button labels render markdown: the name goes through text.escape.
        col.button(("● " if current else "") + text.escape(short), key=f"thumb_{sid}",
                   on_click=sidebar.choose_sample, args=(sid, pos), type="primary" if current else "secondary",
                   width="stretch", help=text.escape(name) + (" (shown now)" if current else ""))


def target_picker(container, prediction, names: tuple[str, ...], key: str | None = None,
                  requested: str | None = None) -> str | None:
    """Target class: what the model predicts comes first, then every class by name.
    `requested` (a class name, e.g. from a study button) preselects that class."""
    predicted = [c.index for c in prediction.classes]
    share = {c.index: c.score for c in prediction.classes}
    options = [AUTO_TARGET] + predicted + [i for i in range(len(names)) if i not in share]
    noun = "of pixels" if prediction.task == "segmentation" else "probability"

    def fmt(o):
        if o == AUTO_TARGET:
            return "auto (person if found, else largest class)" if prediction.task == "segmentation" \
                else f"auto (top-1: {prediction.classes[0].name})"
        return f"{names[o]} — predicted, {share[o]:.0%} {noun}" if o in share else names[o]

    key = key or f"target_{len(names)}"
    if requested is not None:
        lowered = [n.lower() for n in names]
        st.session_state[key] = lowered.index(requested.lower()) if requested.lower() in lowered else AUTO_TARGET
    choice = fresh_label_selectbox(container, "Target class", options, fmt, key)
    return None if choice == AUTO_TARGET else str(choice)


def fresh_label_selectbox(container, label: str, options: list, fmt, key: str, **kwargs):
    """A keyed selectbox whose option labels depend on the data (the auto target names the top-1
    class). Streamlit sends a selectbox's value to the browser as its label, and the browser keeps
    showing the label it was last sent while the value stays the same: a new sample's
    "auto (top-1: espresso)" would still read "auto (top-1: jersey)". When the label of the
    current value changes, set the value again, which sends the new label."""
    shown_key = f"_shown_label_{key}"
    current = st.session_state.get(key)
    if current in options and st.session_state.get(shown_key) not in (None, fmt(current)):
        st.session_state[key] = current
    choice = container.selectbox(label, options, format_func=fmt, key=key, **kwargs)
    st.session_state[shown_key] = None if choice is None else fmt(choice)
    return choice


def sticky_multiselect(container, label: str, options: list, default: list, key: str, **kwargs) -> list:
    """A keyed multiselect whose choice survives what Streamlit would drop: a run that did not draw
    it (a model that failed to load: Streamlit forgets the state of undrawn widgets) and other
    options (another model): choices that do not apply now are kept for when they apply again."""
    kept_key, offered_key = f"_kept_{key}", f"_offered_{key}"
    kept = st.session_state.get(kept_key, list(default))
    if st.session_state.get(offered_key) != list(options) or key not in st.session_state:
        st.session_state[key] = [o for o in kept if o in options]
    st.session_state[offered_key] = list(options)
    chosen = container.multiselect(label, options, key=key, **kwargs)
    st.session_state[kept_key] = list(chosen) + [o for o in kept if o not in options and o not in chosen]
    return chosen


def sticky(widget, label: str, key: str, default, *args, **kwargs):
    """A keyed widget (toggle, slider, ...) whose value survives a run or a page that did not draw
    it: Streamlit forgets the state of undrawn widgets, and a page visit would reset it."""
    kept_key = f"_kept_{key}"
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(kept_key, default)
    value = widget(label, *args, key=key, **kwargs)
    st.session_state[kept_key] = value
    return value


def compute(ex: Explainer, pairs: list[tuple[str, str]], eigen_smooth: bool) -> list[str]:
    """Compute what is not cached yet, with progress; return per-pair error messages."""
    todo = list(dict.fromkeys(p for p in pairs if not ex.is_cached(*p, eigen_smooth)))
    errors: list[str] = []
    if not todo:
        return errors
    slow = any(methods.METHODS[m].slow or ex.aug_smooth for m, _ in todo)
    with st.status(f"Computing {_plural(len(todo), 'heatmap')}…", expanded=slow) as status:
        bar = st.progress(0.0)
        for i, (m, layer) in enumerate(todo):
            label = f"{methods.METHODS[m].label} on {layer}"
            status.update(label=f"Computing {label} ({i + 1}/{len(todo)})…")
            inner = st.empty()

            def on_progress(fraction: float, message: str, inner=inner, label=label, i=i) -> None:
                # Each call is also where Streamlit can stop this run: any click cancels a slow method.
                fraction = min(1.0, max(0.0, fraction))
                inner.progress(fraction, text=message)
                # Also in the header: the browser may keep the box collapsed (it remembers the last one).
                status.update(label=f"Computing {label} ({i + 1}/{len(todo)}) · {fraction:.0%}…")

            try:
                h = ex.heatmap(m, layer, eigen_smooth, on_progress)
                inner.empty()
                st.write(f"{label}: {h.seconds:.2f} s")
            except CamError as exc:
                errors.append(f"{label}: {exc}")
            bar.progress((i + 1) / len(todo))
        status.update(label=f"Computed {_plural(len(todo), 'new heatmap')} ({_plural(len(set(pairs)), 'heatmap')} "
                            "on screen)", state="complete", expanded=False)
    return errors


def prediction_panel(container, img: LoadedImage, ex: Explainer, loaded: LoadedModel) -> None:
    """The image with what the model predicts: the mask and its classes, or the top-5 chart."""
    pred = ex.prediction
    if pred.task == "segmentation":
        mask_img = overlay.segmentation_overlay(img.rgb, pred.mask, 0.55, len(ex.class_names))
        container.image(mask_img if loaded.pretrained else overlay.watermark_untrained(mask_img, outside=True),
                        caption="predicted mask" + ("" if loaded.pretrained else " · UNTRAINED"), width="stretch")
        colors = overlay.palette(len(ex.class_names))
        chips = " ".join(
            f"<span style='background:rgb{tuple(int(v) for v in colors[c.index])};color:"
            f"{'#000' if sum(int(v) for v in colors[c.index]) > 380 else '#fff'};padding:2px 8px;border-radius:8px;"
            f"margin:2px;display:inline-block;font-size:0.85em'>{c.name} {c.score:.0%}</span>"
            for c in pred.classes if c.score >= 0.01  # specks under 1% are noise, not findings
        )
        untrained = ("" if loaded.pretrained else
                     " · <span style='color:#c80000;font-weight:700'>UNTRAINED weights: random output</span>")
        container.markdown("**Classes found** (share of pixels)" + untrained + "<br>" + chips,
                           unsafe_allow_html=True)
    else:
        container.image(img.rgb, caption="input image", width="stretch")
        df = pd.DataFrame({"class": [c.name for c in pred.classes], "probability": [c.score for c in pred.classes]})
        container.markdown("**Top-5 prediction**")
        # A table with in-cell bars: long ImageNet names and the percentages are never clipped.
        container.dataframe(df, hide_index=True, width="stretch", column_config={
            "class": st.column_config.TextColumn("class"),
            "probability": st.column_config.ProgressColumn("probability", format="percent", min_value=0.0,
                                                           max_value=1.0)})
    t = ex.target
    container.markdown(f"**Target:** {t.name} ({t.rule})" + (f" — _{t.note}_" if t.note else ""))
    container.caption(f"weights: {loaded.weights_label} · input {ex.input_hw[1]}×{ex.input_hw[0]} · "
                      f"shared pass {ex.timings.get('pass', 0):.2f} s")


def _caption(h: Heatmap, weights: str | None = None) -> str:
    """Method · layer · target (· smoothing) (· weights, for the main view; the grid omits them)."""
    m = methods.METHODS[h.method].label
    smooth = "".join([" · aug" if h.aug_smooth else "", " · eigen" if h.eigen_smooth else ""])
    blank = " · BLANK (zero everywhere)" if h.blank else ""
    return f"{m} · {h.layer} · {h.target.name}{smooth}{blank}" + (f" · {weights}" if weights else "")


def _overlay_image(img: LoadedImage, h: Heatmap, alpha: float, cmap: str, pretrained: bool):
    out = overlay.overlay(img.rgb, h.map, alpha, cmap)
    return out if pretrained else overlay.watermark_untrained(out, outside=True)


def _cached(ex: Explainer, m: str, layer: str, eigen: bool) -> Heatmap | None:
    return ex.heatmap(m, layer, eigen) if ex.is_cached(m, layer, eigen) else None


@st.fragment
def heatmaps_fragment(img, ex: Explainer, loaded: LoadedModel, pairs, walk, eigen_smooth: bool) -> None:
    """Opacity and colormap redraw here only: the model never reruns for them."""
    c1, c2, c3 = st.columns([3, 2, 2])
    alpha = c1.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    cmap = c2.selectbox("Colormap", overlay.COLORMAPS, key="colormap")
    show_raw = c3.toggle("Raw map + colorbar", key="show_raw")
    weights = loaded.weights_label

    main, side = st.columns([3, 2])
    h = _cached(ex, *walk, eigen_smooth)
    if h is not None:
        main.image(_overlay_image(img, h, alpha, cmap, loaded.pretrained), caption=_caption(h, weights),
                   width="stretch")
        if h.blank:  # an empty overlay must not read as "the model looks nowhere"
            main.warning(h.BLANK_NOTE[0].upper() + h.BLANK_NOTE[1:] + ".")
    prediction_panel(side, img, ex, loaded)
    if h is not None and show_raw:
        side.pyplot(overlay.colorbar_figure(h.raw, cmap, f"raw {h.method} on {h.layer}: "
                                                         f"{h.raw_range[0]:.3g} … {h.raw_range[1]:.3g}"),
                    width="stretch")
    shown = [x for x in (_cached(ex, m, layer, eigen_smooth) for m, layer in pairs) if x is not None]
    shown = list({(x.method, x.layer): x for x in shown}.values())
    if len(shown) > 1 or (shown and h is None):
        st.markdown(f"**Grid** · {len(shown)} heatmaps")
        cols = st.columns(min(4, len(shown)))
        for i, x in enumerate(shown):
            cols[i % len(cols)].image(_overlay_image(img, x, alpha, cmap, loaded.pretrained),
                                      caption=_caption(x, "pretrained" if loaded.pretrained else "UNTRAINED"),
                                      width="stretch")


PUSH_REQUESTED, FINDING_REQUESTED = "push_requested", "finding_requested"
FINDINGS_APP = "fo_launched_findings"  # the port where the Findings page pointed the App at its view


def request(flag: str) -> None:
    """A button's on_click: a click survives the router's one rerun (router.ensure_routed), a
    return value would not. The page pops the flag."""
    st.session_state[flag] = True


def _stored_fields(dataset, sample_id: str, fields: list[str]) -> set[str]:
    """Which of these fields already hold a value on the sample (a push would replace them)."""
    present = [f for f in dict.fromkeys(fields) if dataset.get_field(f) is not None]
    if not present:
        return set()
    values = dataset.select(sample_id).values(present)
    return {f for f, v in zip(present, values) if v and v[0] is not None}


def pushed_message(fields: list[str], replaced: list[str], filename: str) -> str:
    """"Saved fields: …" for new fields; "Replaced fields: …" for the ones that were already saved."""
    def names(fs):
        return ", ".join(f"`{f}`" for f in fs)

    new = [f for f in fields if f not in replaced]
    parts = [f"Saved fields: {names(new)} (on {filename})"] if new else []
    if replaced:
        parts.append(f"Replaced fields: {names(replaced)} (already saved on {filename}; overwritten)")
    return "  \n".join(parts)


def save_panel(sel, ex: Explainer, pairs, eigen_smooth: bool) -> None:
    """Push what is on screen, record a finding, open the FiftyOne App."""
    st.divider()
    shown = []
    for m, layer in pairs:
        h = _cached(ex, m, layer, eigen_smooth)
        if h is not None and all(h is not s for s in shown):
            shown.append(h)
    c1, c2, c3 = st.columns([2, 3, 2])
    c1.markdown("**Save to FiftyOne**")
    # The confirmation belongs to exactly this sample and these settings: shown only while they last.
    context = (sel.dataset, sel.sample_id, sel.model, sel.weights, sel.input_size, ex.target.name,
               ex.aug_smooth, eigen_smooth, tuple((h.method, h.layer) for h in shown))
    # Callbacks, not return values: a click survives the router's one rerun (router.ensure_routed).
    c1.button(f"Push {_plural(len(shown), 'heatmap')} to FiftyOne", type="primary", key="push", disabled=not shown,
              on_click=request, args=(PUSH_REQUESTED,))
    if st.session_state.pop(PUSH_REQUESTED, False) and shown:
        try:
            with st.spinner("Writing heatmaps…", show_time=True):
                dataset = store.load_dataset(sel.dataset)
                result = ex.result(shown)
                before = _stored_fields(dataset, sel.sample_id, [store.field_of(result, h) for h in shown])
                fields = store.push_heatmaps(dataset, sel.sample_id, result)
            st.session_state["pushed"] = {"context": context, "fields": fields,
                                          "replaced": [f for f in fields if f in before]}
        except CamError as exc:
            c1.error(str(exc))
    pushed = st.session_state.get("pushed")
    if pushed is not None and (not isinstance(pushed, dict) or pushed.get("context") != context):
        pushed = st.session_state.pop("pushed")  # another sample, model or settings: not about these
    elif pushed is not None:
        c1.success(pushed_message(pushed["fields"], pushed["replaced"], os.path.basename(sel.filepath)))

    with c2.form("finding", clear_on_submit=True):
        st.markdown("**Record a finding**")
        tag = st.selectbox("Finding", list(store.FINDING_TAGS) + ["other…"])
        custom = st.text_input("Other finding (when 'other…')", max_chars=60)
        note = st.text_area("Note", max_chars=2000, placeholder="e.g. the plane is recognised by the sky")
        ref = fresh_label_selectbox(st, "About heatmap", list(range(len(shown))), lambda i: _caption(shown[i]),
                                    "finding_ref", disabled=not shown)
        st.form_submit_button("Save finding", on_click=request, args=(FINDING_REQUESTED,))
        if st.session_state.pop(FINDING_REQUESTED, False):
            chosen = custom.strip() if tag == "other…" else tag
            if tag == "other…" and not re.search(r"[A-Za-z0-9]", chosen):  # the store's rule, said for the form
                st.error("Type the finding's name in 'Other finding' (letters or digits), then save again.")
            else:
                try:
                    dataset = store.load_dataset(sel.dataset)
                    field = None
                    if shown and ref is not None:  # the finding points at a stored heatmap: store it first
                        field = store.push_heatmaps(dataset, sel.sample_id, ex.result([shown[ref]]))[0]
                    store.add_finding(dataset, sel.sample_id, chosen, note, field)
                    st.success(f"Saved finding '{chosen}' (tag {store.finding_tag(chosen)}).")
                except CamError as exc:
                    st.error(str(exc))

    c3.markdown("**FiftyOne App**")
    port = c3.number_input("App port", 1024, 65535, store.DEFAULT_APP_PORT, key="fo_port")
    if c3.button("Launch the FiftyOne App", key="launch_fo"):
        try:
            with st.spinner("Starting the FiftyOne App…", show_time=True):
                # Not cached: the Findings page may have pointed the App at its view since; this
                # puts the whole dataset back (a running App on this port is only retargeted).
                store.launch_app(store.load_dataset(sel.dataset), port=int(port))
            st.session_state["fo_launched"] = int(port)
            st.session_state.pop(FINDINGS_APP, None)
        except CamError as exc:
            c3.error(str(exc))
        except Exception as exc:  # port taken, server failed: say so
            c3.error(f"Could not start the FiftyOne App on port {port}: {exc}")
    launched = st.session_state.get("fo_launched") == int(port)
    c3.link_button("Open this sample in the FiftyOne App", store.app_url(sel.dataset, sel.sample_id, int(port)),
                   disabled=not launched, help=None if launched else "Launch the FiftyOne App first.")

