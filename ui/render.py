"""Renderers for the Explore page: they read widgets, call camcore, draw. No model math here."""
from __future__ import annotations

import os
import re
import threading
import time
import traceback

import pandas as pd
import streamlit as st

from camcore import methods, modellock, overlay, store, views
from camcore.engine import Explainer
from camcore.errors import CamError, Cancelled
from camcore.images import LoadedImage
from camcore.models import LoadedModel
from camcore.results import Heatmap
from ui import cache, sidebar, text, urlstate

AUTO_TARGET = "__auto__"
STRIP = 8  # thumbnails shown around the current sample


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def unexpected(exc: BaseException) -> None:
    st.error(f"Something went wrong: {type(exc).__name__}: {text.escape(exc)}. Try another sample, model or method; "
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


# -- computing heatmaps: fast ones at once; slow ones with progress, an ETA, Cancel, and a go first

CONFIRM_SECONDS = 10.0  # a one-forward-per-channel method estimated slower than this waits for a go
CANCEL_REQUESTED = "compute_cancel_requested"
NOTES = "_compute_notes"  # what a slow run said before the page reran to show its maps
AWAITING, CANCELLED = "awaiting your go", "cancelled"
BUSY_KEY, STOPPED_KEY = "cam_busy", "cam_stopped"

# Static CSS (no data in it). The progress of a slow computation hides once the script is not
# running: after Streamlit's own Stop no frozen progress stays on screen, and the note that says
# it stopped shows instead. Multiselect chips wrap instead of scrolling sideways. The main
# heatmap never grows taller than the window.
STYLE = """<style>
.stApp[data-test-script-state="notRunning"] .st-key-cam_busy { display: none; }
.stApp:not([data-test-script-state="notRunning"]) .st-key-cam_stopped { display: none; }
[data-testid="stMultiSelect"] .react-aria-ComboBox > [role="group"] { height: auto; max-height: none; }
[data-testid="stMultiSelectTagsContainer"],
[data-testid="stMultiSelectTagsContainer"] > [role="group"] { flex-wrap: wrap; overflow: visible; height: auto;
  max-height: none; }
[data-testid="stMultiSelectTagsContainer"] [data-tag] { flex-shrink: 0; max-width: 100%; }
[data-testid="stMultiSelectTagsContainer"] { min-width: 0; flex: 1 1 0%; }
.st-key-cam_main [data-testid="stImage"] img { max-height: max(240px, calc(100vh - 300px)); width: auto; max-width: 100%;
  object-fit: contain; }
[data-testid="stMainBlockContainer"] { padding-top: 3.5rem; }
</style>"""


def page_style() -> None:
    st.html(STYLE)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _pair_label(m: str, layer: str) -> str:
    """'Score-CAM on layer4', escaped for markdown (layer names come from the models file)."""
    return f"{methods.METHODS[m].label} on {text.escape(layer)}"


def _is_slow(ex: Explainer, m: str) -> bool:
    return methods.METHODS[m].slow or ex.aug_smooth


def compute(ex: Explainer, pairs: list[tuple[str, str]], eigen_smooth: bool, which: str = "all",
            rerun: bool = False) -> list[str]:
    """Compute what is not cached yet; return per-pair messages.

    which: "fast" (the pure methods: milliseconds from the shared pass), "slow" (one forward per
    channel, aug_smooth, a pass of their own) or "all". Slow ones run with progress, an ETA and a
    Cancel button; a one-forward-per-channel method estimated over CONFIRM_SECONDS waits for
    the user's go (a "Run Score-CAM on layer4 (~4 min)" button). rerun: once new slow maps are
    computed, rerun the page to show them (a page that drew the cached maps first)."""
    todo = list(dict.fromkeys(p for p in pairs if not ex.is_cached(*p, eigen_smooth)))
    errors: list[str] = []
    if which in ("fast", "all"):
        errors += st.session_state.pop(NOTES, [])
        fast = [p for p in todo if not _is_slow(ex, p[0])]
        if fast:
            errors += _compute_fast(ex, fast, eigen_smooth, len(set(pairs)))
    if which in ("slow", "all"):
        slow = [p for p in todo if _is_slow(ex, p[0])]
        errors += _compute_slow(ex, slow, eigen_smooth, rerun)
    return errors


def _compute_fast(ex: Explainer, todo, eigen_smooth: bool, on_screen: int) -> list[str]:
    """Milliseconds each from the shared pass: a spinner that leaves nothing behind (the map's
    place on the page does not move)."""
    errors: list[str] = []
    with st.spinner(f"Computing {_plural(len(todo), 'heatmap')} ({_plural(on_screen, 'heatmap')} on screen)…"):
        for m, layer in todo:
            try:
                ex.heatmap(m, layer, eigen_smooth)
            except CamError as exc:
                errors.append(f"{_pair_label(m, layer)}: {text.escape(exc)}")
    return errors


@st.cache_resource(show_spinner=False)
def _jobs() -> tuple[threading.Lock, dict[str, dict]]:
    """Process-wide: each session's slow computation under way (session id -> job). Not
    session_state: with Streamlit's fast reruns a click stops the running script and starts the
    next run at once, on another thread, while the stopped one still finishes its batch; both
    must see the same job at once."""
    return threading.Lock(), {}


def _session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "-"


def _settle_interrupted(ex: Explainer, eigen_smooth: bool) -> str | None:
    """The slow computation a click or Stop interrupted (Streamlit stops the running script for
    either). Wait until it has stopped (the batch of forwards under way ends it), then say what
    happened: its maps are kept, the heatmap it was computing waits for a Run click again."""
    clicked = st.session_state.pop(CANCEL_REQUESTED, False)
    lock, jobs = _jobs()
    with lock:
        job = jobs.get(_session_id())
    if job is None:
        return None
    if not job["finished"].is_set():
        job["cancel"].set()
        with st.spinner(f"Stopping {job['label']} after the batch of forwards under way…", show_time=True):
            job["finished"].wait()
    with lock:
        if jobs.get(_session_id()) is job:
            del jobs[_session_id()]
    if job["ex"] is not ex or job["eigen"] != eigen_smooth or not job["interrupted"]:
        return None
    kept = f"; {_plural(job['done'], 'new heatmap')} finished before it" if job["done"] else ""
    if clicked:
        return (f"Cancelled {job['label']} at {job['fraction']:.0%}{kept}. The maps already computed are kept; "
                "run it again with its button.")
    return (f"Stopped {job['label']} at {job['fraction']:.0%}{kept} (a click or Stop ends slow work; cancelled). "
            "The maps already computed are kept; run it again with its button.")


def _compute_slow(ex: Explainer, todo, eigen_smooth: bool, rerun: bool) -> list[str]:
    said = _settle_interrupted(ex, eigen_smooth)
    if said:
        st.warning(said, icon=":material/cancel:")
    ask, run = [], []
    for m, layer in todo:
        reason = ex.deferred(m, layer, eigen_smooth)
        if reason is None and not ex.allowed(m, layer, eigen_smooth):
            with st.spinner("Timing a forward pass to say how long this takes…"):
                est = ex.estimate(m, layer)
            if est is not None and est.seconds > CONFIRM_SECONDS:
                ex.defer(m, layer, eigen_smooth, AWAITING)
                reason = AWAITING
        (ask if reason else run).append((m, layer))
    if ask:
        _confirm(ex, ask, eigen_smooth)
    return _run_slow(ex, run, eigen_smooth, rerun) if run else []


def _go(ex: Explainer, pairs, eigen_smooth: bool) -> None:
    for m, layer in pairs:
        ex.allow(m, layer, eigen_smooth)


def _confirm(ex: Explainer, ask, eigen_smooth: bool) -> None:
    """One "Run <method> on <layer> (~time)" button per held-back heatmap, with what it costs."""
    total = 0.0
    for m, layer in ask:
        est = ex.estimate(m, layer)
        label = _pair_label(m, layer)
        prefix = "Cancelled. " if ex.deferred(m, layer, eigen_smooth) == CANCELLED else "Not started: "
        if est is not None:
            total += est.seconds
            how = (f"{label} runs the model once per channel: {est.channels:,} forwards, about "
                   f"{_duration(est.seconds)} ({'measured on this model' if est.measured else 'channels x one timed forward'}).")
            button = f"Run {label} (~{_duration(est.seconds)})"
        else:
            how, button = f"{label} needs passes of its own.", f"Run {label}"
        c1, c2 = st.columns([3, 2], vertical_alignment="center")
        c1.caption(prefix + how)
        c2.button(button, key=f"go_{m}_{layer}", on_click=_go, args=(ex, [(m, layer)], eigen_smooth),
                  type="primary", icon=":material/play_arrow:", width="stretch")
    if len(ask) > 1:
        st.button(f"Run all {len(ask)} (~{_duration(total)})", key="go_all", on_click=_go,
                  args=(ex, list(ask), eigen_smooth), icon=":material/play_arrow:")


def _run_slow(ex: Explainer, run, eigen_smooth: bool, rerun: bool) -> list[str]:
    """Slow heatmaps one by one, with progress, an ETA and Cancel.

    Streamlit interrupts a script at its next st.* call: Stop, or a click (Cancel or any other:
    with fast reruns Streamlit stops this script and starts the next run at once, on another
    thread). The progress callback catches that at the bar and sets the engine's cancel, so the
    method stops after the batch of forwards under way; the interruption is then raised again for
    Streamlit to finish. The next run waits for that and says what happened (_settle_interrupted),
    through the process-wide job record."""
    page_style()
    errors: list[str] = []
    cancel = threading.Event()
    interrupted: list[BaseException] = []
    slot = st.empty()
    with slot.container():
        with st.container(key=BUSY_KEY):
            bar = st.progress(0.0, text="Starting…")
            st.button("Cancel", key="compute_cancel", on_click=request, args=(CANCEL_REQUESTED,),
                      icon=":material/cancel:", help="Stops after the batch of forwards under way; the maps "
                                                     "already computed stay.")
        with st.container(key=STOPPED_KEY):  # shown only when the script stopped here (Stop)
            st.warning("Stopped before the slow heatmaps were finished: the maps already computed are shown. "
                       "Run them again with their button.", icon=":material/cancel:")
    state = {"fraction": 0.0, "label": "", "done": 0}
    left = list(run)
    lock, jobs = _jobs()
    job = {"ex": ex, "eigen": eigen_smooth, "cancel": cancel, "finished": threading.Event(), "interrupted": False,
           "label": "", "fraction": 0.0, "done": 0}
    with lock:
        jobs[_session_id()] = job
    try:
        for i, (m, layer) in enumerate(run):
            label = _pair_label(m, layer)
            est = ex.estimate(m, layer)
            started = time.monotonic()
            state.update(label=label, fraction=0.0)

            def on_progress(fraction: float, message: str, label=label, i=i, est=est, started=started) -> None:
                waiting = message.startswith("Waiting")  # for the model another session holds: keep the bar
                fraction = state["fraction"] if waiting else min(1.0, max(0.0, fraction))
                state["fraction"] = fraction
                if interrupted:
                    return  # no more st.* calls: after Stop each one raises again
                elapsed = time.monotonic() - started
                if waiting:
                    eta = ""
                elif fraction >= 0.02:
                    eta = f" · about {_duration(elapsed * (1 - fraction) / fraction)} left"
                elif est is not None:
                    eta = f" · about {_duration(max(0.0, est.seconds - elapsed))} left (estimate)"
                else:
                    eta = ""
                try:
                    bar.progress(fraction, text=f"{label} ({i + 1}/{len(run)}) · {text.escape(message)}{eta}")
                except BaseException as exc:  # Streamlit's rerun (Cancel, a click) or stop, raised at this call
                    interrupted.append(exc)
                    cancel.set()

            on_progress(0.0, "starting…")
            try:
                if not cancel.is_set():
                    ex.heatmap(m, layer, eigen_smooth, on_progress, cancel)
                    state["done"] += 1
                    left.remove((m, layer))
            except Cancelled:
                pass
            except CamError as exc:
                left.remove((m, layer))
                errors.append(f"{label}: {text.escape(exc)}")
            if cancel.is_set():
                break
        if interrupted or cancel.is_set():
            # Cancel, Stop or another click: what the user said go for waits for a Run click again
            # (never restarted behind their back); short ones that needed no go just run again.
            for pm, pl in left:
                if ex.allowed(pm, pl, eigen_smooth):
                    ex.defer(pm, pl, eigen_smooth, CANCELLED)
            job.update(interrupted=True, label=state["label"], fraction=state["fraction"], done=state["done"])
            if interrupted:
                raise interrupted[0]
            return errors  # stopped by the next run (it says so): this script is being stopped
    finally:
        job["finished"].set()  # whatever happened: a waiting run must never wait forever
    with lock:
        if jobs.get(_session_id()) is job:
            del jobs[_session_id()]
    slot.empty()
    if rerun and state["done"]:
        st.session_state[NOTES] = errors  # said by the next run, which shows the new maps
        st.rerun()
    return errors


WAIT_CANCELLED = "wait_cancel_requested"


def shared_pass(loaded: LoadedModel, image_key: tuple, img: LoadedImage, target, aug_smooth: bool,
                input_size, message: str) -> Explainer | None:
    """cache.explainer under a spinner. While another session holds the model, say whose work it
    waits for (which model, since when) with a Cancel button; None once the user stopped waiting."""
    if st.session_state.pop(WAIT_CANCELLED, False):
        busy = modellock.holder(loaded.lock)
        if busy is not None and busy.thread != threading.get_ident():
            st.warning(f"Stopped waiting: another session's {text.escape(busy.describe())} holds the model.",
                       icon=":material/hourglass_disabled:")
            st.button("Wait for it", key="wait_again", icon=":material/hourglass_top:")  # a click: wait again
            return None
    box = st.empty()
    cancel = threading.Event()
    interrupted: list[BaseException] = []
    parts: dict = {}

    def on_wait(_fraction: float, said: str) -> None:
        if interrupted:
            return
        try:
            if not parts:
                with box.container(key="cam_wait"):
                    parts["line"] = st.empty()
                    st.button("Cancel", key="wait_cancel", on_click=request, args=(WAIT_CANCELLED,),
                              icon=":material/cancel:")
            parts["line"].warning(text.escape(said), icon=":material/hourglass_top:")
        except BaseException as exc:  # Streamlit's rerun (Cancel, a click) or stop
            interrupted.append(exc)
            cancel.set()

    ex = None
    try:
        with st.spinner(message, show_time=True):
            ex = cache.explainer(loaded, image_key, img, target, aug_smooth, input_size, on_wait, cancel)
    except Cancelled:
        pass
    if interrupted:
        raise interrupted[0]
    if parts:
        box.empty()
    return ex


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
            f"margin:2px;display:inline-block;font-size:0.85em'>{text.html_text(c.name)} {c.score:.0%}</span>"
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
    container.markdown(f"**Target:** {text.escape(t.name)} ({t.rule})" + (f" — _{text.escape(t.note)}_" if t.note else ""))
    container.caption(f"weights: {text.escape(loaded.weights_label)} · input {ex.input_hw[1]}×{ex.input_hw[0]} · "
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
def heatmaps_fragment(img, ex: Explainer, loaded: LoadedModel, pairs, chosen_layers, chosen_methods,
                      eigen_smooth: bool, layers_key: str) -> None:
    """The main map with the fine controls beside it (walk, opacity, colormap, raw map), then the
    grid. Everything here redraws alone: the model never reruns for it."""
    weights = loaded.weights_label
    main, side = st.columns([3, 2])
    for key, options in ((layers_key, chosen_layers), ("walk_method", chosen_methods)):
        if st.session_state.get(key) not in options:  # a layer or method just taken out of the selection
            st.session_state.pop(key, None)
    # Walk the chosen layers only: the map on screen is always one that Push and a finding cover.
    walk_layer = (side.select_slider("Walk the layers", chosen_layers, key=layers_key)
                  if len(chosen_layers) > 1 else chosen_layers[0])
    walk_method = (side.select_slider("Walk the methods", chosen_methods, key="walk_method",
                                      format_func=lambda k: methods.METHODS[k].label)
                   if len(chosen_methods) > 1 else chosen_methods[0])
    alpha = side.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    f1, f2 = side.columns(2, vertical_alignment="bottom")
    cmap = f1.selectbox("Colormap", overlay.COLORMAPS, key="colormap")
    show_raw = f2.toggle("Raw map + colorbar", key="show_raw")

    h = _cached(ex, walk_method, walk_layer, eigen_smooth)
    with main.container(key="cam_main"):
        if h is not None:
            st.image(_overlay_image(img, h, alpha, cmap, loaded.pretrained), caption=_caption(h, weights),
                     width="stretch")
            if h.blank:  # an empty overlay must not read as "the model looks nowhere"
                st.warning(h.BLANK_NOTE[0].upper() + h.BLANK_NOTE[1:] + ".")
        else:
            why = ex.deferred(walk_method, walk_layer, eigen_smooth)
            st.info(f"{_pair_label(walk_method, walk_layer)} is not computed yet"
                    + (f" ({why}: see its Run button above)." if why else " (see the progress above)."),
                    icon=":material/hourglass_empty:")
    if h is not None and show_raw:
        side.pyplot(overlay.colorbar_figure(h.raw, cmap, f"raw {h.method} on {h.layer}: "
                                                         f"{h.raw_range[0]:.3g} … {h.raw_range[1]:.3g}"),
                    width="stretch")
    prediction_panel(side, img, ex, loaded)
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
            c1.error(text.escape(exc))
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
                    store.add_finding(dataset, sel.sample_id, chosen, note, field, url=urlstate.current_url())
                    st.success(f"Saved finding '{text.escape(chosen)}' (tag {text.escape(store.finding_tag(chosen))}).")
                except CamError as exc:
                    st.error(text.escape(exc))

    c3.markdown("**FiftyOne App**")
    running = store.app_session()  # one App per process, whichever page launched it
    running_port = int(running.server_port) if running is not None else None
    if running_port is not None and "fo_port" not in st.session_state:
        st.session_state["fo_port"] = running_port
    port = c3.number_input("App port", 1024, 65535, store.DEFAULT_APP_PORT, key="fo_port")
    if c3.button("Launch the FiftyOne App", key="launch_fo"):
        try:
            with st.spinner("Starting the FiftyOne App…", show_time=True):
                # Not cached: the Findings page may have pointed the App at its view since; this
                # puts the whole dataset back (a running App on this port is only retargeted).
                store.launch_app(store.load_dataset(sel.dataset), port=int(port))
            st.session_state["fo_launched"] = int(port)
            st.session_state.pop(FINDINGS_APP, None)
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

