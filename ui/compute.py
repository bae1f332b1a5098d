"""The one ui module that computes: explainers (the shared pass), heatmaps, scores and rankings.

Pages call it after drawing their widgets and hand what it returns (frozen results: CamResult,
Heatmap, plain values) to the renderers, which never compute. Fast heatmaps compute at once;
slow ones with progress, an ETA, Cancel, and a go first when they take long.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import streamlit as st

from camcore import judge, methods, metrics, modellock
from camcore.engine import Explainer, KeptForward, Progress, iter_heatmaps
from camcore.errors import Cancelled
from camcore.images import LoadedImage
from camcore.models import LoadedModel
from camcore.progress import duration, eta_text
from camcore.results import CamResult, Heatmap
from ui import session_memory, style, text
from ui.state import Compute
from ui.widgets import request

EXPLAINERS_PER_SESSION = 4  # each holds one image's activations and gradients
# A page (opened from a URL or a finding's link too) computes slow heatmaps automatically for
# about this long in all, estimates added up in order; the rest waits for a click (issue 22 item 6).
AUTO_SECONDS = 5.0
AWAITING, CANCELLED = "awaiting your go", "cancelled"

Pair = tuple[str, str]  # (method, layer) as the user chose them


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def pair_label(m: str, layer: str) -> str:
    """'Score-CAM on layer4', escaped for markdown (layer names come from the models file)."""
    return f"{methods.METHODS[m].label} on {text.escape(layer)}"


# -- the shared pass, kept per session ---------------------------------------------------------


def explainer(loaded: LoadedModel, image_key: tuple, img: LoadedImage, target: str | None, aug_smooth: bool,
              input_size: int | None, progress: Progress | None = None,
              cancel: threading.Event | None = None) -> Explainer:
    """The shared pass for (image, model, target, smoothing, size), kept in the session so that
    walking layers and methods never runs the model again (in ui/session_memory.py: freed when the
    tab closes). A detector's other box on the same image reuses the session's kept forward: one
    backward for a gradient method, none for the others. Only for detectors: the kept graph costs
    memory for as long as the session lives (~320 MB for DeepLabV3 at 520 px, ~790 MB for Faster
    R-CNN at 800), and a class switch was never the daily walk that box picking is.
    progress/cancel: while another session holds the model, whom the pass waits for, and a way to
    stop waiting."""
    key = (image_key, loaded.spec.key, loaded.version, target, aug_smooth, input_size)
    memory = session_memory.current()
    cache = memory.explainers
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    kept = None
    if loaded.spec.task == "detection":  # a box walk; a kept graph costs memory while the session lives
        if memory.kept_forward is None:
            memory.kept_forward = KeptForward()  # one image's graph at a time
        kept = memory.kept_forward
    ex = Explainer(loaded, img, target_request=target, aug_smooth=aug_smooth, input_size=input_size,
                   progress=progress, cancel=cancel, kept=kept)
    cache[key] = ex
    while len(cache) > EXPLAINERS_PER_SESSION:
        cache.popitem(last=False)
    return ex


def shared_pass(loaded: LoadedModel, image_key: tuple, img: LoadedImage, target: str | None, aug_smooth: bool,
                input_size: int | None, message: str, slot: str = "main") -> Explainer | None:
    """explainer() under a spinner. While another session holds the model, say whose work it
    waits for (which model, since when) with a Cancel button; None once the user stopped waiting.
    slot: names this call's wait box and buttons, for a page that runs more than one pass (two
    boxes with one key end the page in StreamlitDuplicateElementKey)."""
    if st.session_state.pop(Compute.WAIT_CANCELLED, False):
        busy = modellock.holder(loaded.lock)
        if busy is not None and busy.thread != threading.get_ident():
            st.warning(f"Stopped waiting: another session's {text.escape(busy.describe())} holds the model.",
                       icon=":material/hourglass_disabled:")
            # a click: wait again
            st.button("Wait for it", key=f"{Compute.WAIT_AGAIN}-{slot}", icon=":material/hourglass_top:")
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
                with box.container(key=f"{Compute.WAIT_BOX}-{slot}"):
                    parts["line"] = st.empty()
                    st.button("Cancel", key=f"{Compute.WAIT_CANCEL_BUTTON}-{slot}", on_click=request,
                              args=(Compute.WAIT_CANCELLED,), icon=":material/cancel:")
            parts["line"].warning(text.escape(said), icon=":material/hourglass_top:")
        except BaseException as exc:  # Streamlit's rerun (Cancel, a click) or stop
            interrupted.append(exc)
            cancel.set()

    ex = None
    try:
        with st.spinner(message, show_time=True):
            ex = explainer(loaded, image_key, img, target, aug_smooth, input_size, on_wait, cancel)
    except Cancelled:
        pass
    if interrupted:
        raise interrupted[0]
    if parts:
        box.empty()
    return ex


# -- frozen results for the renderers ----------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """What the Explore page draws: the pass's result holding the heatmaps computed so far (one
    per map), each chosen pair's map, and why a pair without one waits."""

    result: CamResult
    class_names: tuple[str, ...]
    aug_smooth: bool
    eigen_smooth: bool
    maps: dict[Pair, Heatmap]
    waiting: Callable[[str, str], str | None] = field(repr=False, compare=False)

    def heatmap(self, method: str, layer: str) -> Heatmap | None:
        return self.maps.get((method, layer))

    def why_waiting(self, method: str, layer: str) -> str | None:
        """Why this pair has no map yet ("awaiting your go", "cancelled"), or None: under way."""
        return self.waiting(method, layer)

    def with_heatmaps(self, heatmaps: list[Heatmap]) -> CamResult:
        """The result holding just these maps (what a push writes)."""
        return replace(self.result, heatmaps=tuple(heatmaps))


def shown(ex: Explainer, pairs: list[Pair], eigen_smooth: bool) -> Shown:
    """The maps of these pairs computed so far (never computes one)."""
    maps = {p: ex.heatmap(*p, eigen_smooth) for p in pairs if ex.is_cached(*p, eigen_smooth)}
    distinct: list[Heatmap] = []
    for h in maps.values():  # a layer-independent method is one map for every layer
        if all(h is not d for d in distinct):
            distinct.append(h)
    return Shown(ex.result(distinct), tuple(ex.class_names), ex.aug_smooth, eigen_smooth, maps,
                 lambda m, layer: ex.deferred(m, layer, eigen_smooth))


def snapshot(ex: Explainer, pairs: list[Pair], eigen_smooth: bool) -> Callable[[], Shown | None]:
    """shown() later, for a fragment: Streamlit keeps a fragment's arguments with the session to
    replay them, and a closed tab's session lingers, so this holds the explainer weakly (None once
    the session's memory let it go)."""
    ref = weakref.ref(ex)

    def read() -> Shown | None:
        alive = ref()
        return None if alive is None else shown(alive, pairs, eigen_smooth)

    return read


@dataclass(frozen=True)
class Cell:
    """One map of the Compare grid: the heatmap or why there is none, and its scores."""

    heatmap: Heatmap | None
    error: str | None = None
    faithfulness: metrics.Faithfulness | None = None
    share: float | None = None  # of the map's mass on the object mask


@dataclass(frozen=True)
class Grid:
    result: CamResult  # prediction, target, weights of the pass the maps come from
    cells: dict[Pair, Cell]
    mask: np.ndarray | None  # the object: the predicted mask of the target (segmentation), else None
    about: tuple  # what the maps are about: a ROAD curve is kept while this stays the same
    scores_waiting: int = 0  # maps whose faithfulness scores wait for the user's go (too slow to run unasked)
    scores_seconds: float = 0.0  # what those would take

    def find(self, method: str, layer: str) -> Heatmap | None:
        """The map of `method` whose own layer is `layer` (a layer-independent method's is "all")."""
        for (m, _), cell in self.cells.items():
            if m == method and cell.heatmap is not None and cell.heatmap.layer == layer:
                return cell.heatmap
        return None


def grid(ex: Explainer, pairs: list[Pair], eigen_smooth: bool, with_scores: bool,
         scores_budget: float | None = None) -> Grid:
    """Every cell of the Compare grid, its faithfulness scores when asked for, and its share on
    the target's predicted mask (segmentation).

    The maps come first: scores (two forwards each, about a shared pass) are computed while they
    fit in `scores_budget` seconds (None: all of them); the rest wait for a go, counted in the
    Grid. With DeepLabV3 on a CPU they were 85 of a grid's 100 s."""
    mask = None
    if ex.prediction.task == "segmentation":
        mask = ex.prediction.mask == ex.target.index
        mask = mask if mask.any() else None
    cells: dict[Pair, Cell] = {}
    per_score = ex.timings.get("pass", 0.0)  # two forwards, about one forward + backward
    budget = float("inf") if scores_budget is None else scores_budget
    waiting = 0
    for step in iter_heatmaps(ex, list(dict.fromkeys(pairs)), eigen_smooth):
        h = step.heatmap
        if h is None:
            cells[(step.method, step.layer)] = Cell(None, str(step.exception))
            continue
        f = None
        if with_scores and (ex.has_faithfulness(h) or budget >= per_score):
            budget -= 0.0 if ex.has_faithfulness(h) else per_score
            f = ex.faithfulness(step.method, h.layer, eigen_smooth)
        elif with_scores:
            waiting += 1
        share = metrics.mass_inside(h.map, mask) if mask is not None else None
        cells[(step.method, step.layer)] = Cell(h, None, f, share)
    about = (ex.model.spec.key, ex.model.weights_label, ex.image.path, ex.target.index, ex.aug_smooth,
             ex.input_hw)
    return Grid(ex.result([c.heatmap for c in cells.values() if c.heatmap is not None]), cells, mask, about,
                waiting, waiting * per_score)


def road(ex: Explainer, h: Heatmap, progress: Progress) -> metrics.RoadCurve:
    """The ROAD curve of one heatmap of this pass (a sparse imputation per point)."""
    return metrics.road(ex.model, ex.x, h.map, ex.grad_target, progress=progress)


def rank(loaded: LoadedModel, items: list[judge.SampleItem], method: str, layer: str, class_name: str,
         threshold: float, input_size: int | None, progress: Progress) -> list:
    """Samples ranked by the heatmap's share on the object, worst first (a model pass each)."""
    return judge.rank_by_share_inside(loaded, items, method, layer, class_name, threshold, input_size,
                                      progress=progress)


# -- computing heatmaps: fast ones at once; slow ones with progress, an ETA, Cancel, and a go first


def _is_slow(ex: Explainer, m: str) -> bool:
    return methods.METHODS[m].slow or ex.aug_smooth


def compute(ex: Explainer, pairs: list[Pair], eigen_smooth: bool, which: str = "all",
            rerun: bool = False) -> list[str]:
    """Compute what is not cached yet; return per-pair messages.

    which: "fast" (the pure methods: milliseconds from the shared pass), "slow" (one forward per
    channel, aug_smooth, a pass of their own) or "all". Slow ones run with progress, an ETA and a
    Cancel button; slow heatmaps past AUTO_SECONDS of estimates in all wait for the
    user's go (a "Run Score-CAM on layer4 (~4 min)" button). rerun: once new slow maps are
    computed, rerun the page to show them (a page that drew the cached maps first)."""
    todo = list(dict.fromkeys(p for p in pairs if not ex.is_cached(*p, eigen_smooth)))
    errors: list[str] = []
    if which in ("fast", "all"):
        errors += st.session_state.pop(Compute.NOTES, [])
        fast = [p for p in todo if not _is_slow(ex, p[0])]
        if fast:
            errors += _compute_fast(ex, fast, eigen_smooth, len(set(pairs)))
    if which in ("slow", "all"):
        slow = [p for p in todo if _is_slow(ex, p[0])]
        errors += _compute_slow(ex, slow, eigen_smooth, rerun)
    return errors


def _compute_fast(ex: Explainer, todo: list[Pair], eigen_smooth: bool, on_screen: int) -> list[str]:
    """Milliseconds each from the shared pass: a spinner that leaves nothing behind (the map's
    place on the page does not move)."""
    errors: list[str] = []
    with st.spinner(f"Computing {plural(len(todo), 'heatmap')} ({plural(on_screen, 'heatmap')} on screen)…"):
        for step in iter_heatmaps(ex, todo, eigen_smooth):
            if step.exception is not None:
                errors.append(f"{pair_label(step.method, step.layer)}: {text.escape(step.exception)}")
    return errors


def _settle_interrupted(ex: Explainer, eigen_smooth: bool) -> str | None:
    """The slow computation a click or Stop interrupted (Streamlit stops the running script for
    either). Wait until it has stopped (the batch of forwards under way ends it), then say what
    happened: its maps are kept, the heatmap it was computing waits for a Run click again."""
    clicked = st.session_state.pop(Compute.CANCEL_REQUESTED, False)
    lock, jobs = session_memory.jobs()
    with lock:
        job = jobs.get(session_memory.session_id())
    if job is None:
        return None
    if not job["finished"].is_set():
        job["cancel"].set()
        with st.spinner(f"Stopping {job['label']} after the batch of forwards under way…", show_time=True):
            job["finished"].wait()
    with lock:
        if jobs.get(session_memory.session_id()) is job:
            del jobs[session_memory.session_id()]
    if job["ex"]() is not ex or job["eigen"] != eigen_smooth or not job["interrupted"]:
        return None
    kept = f"; {plural(job['done'], 'new heatmap')} finished before it" if job["done"] else ""
    if clicked:
        return (f"Cancelled {job['label']} at {job['fraction']:.0%}{kept}. The maps already computed are kept; "
                "run it again with its button.")
    return (f"Stopped {job['label']} at {job['fraction']:.0%}{kept} (a click or Stop ends slow work; cancelled). "
            "The maps already computed are kept; run it again with its button.")


def _compute_slow(ex: Explainer, todo: list[Pair], eigen_smooth: bool, rerun: bool) -> list[str]:
    said = _settle_interrupted(ex, eigen_smooth)
    if said:
        st.warning(said, icon=":material/cancel:")
    ask, run = [], []
    budget = AUTO_SECONDS  # for this explainer: what runs now is cached, what waits stays deferred
    for m, layer in todo:
        reason = ex.deferred(m, layer, eigen_smooth)
        if reason is None and not ex.allowed(m, layer, eigen_smooth):
            with st.spinner("Timing a forward pass to say how long this takes…"):
                est = ex.estimate(m, layer)
            seconds = est.seconds if est is not None else float("inf")
            if seconds > budget:
                ex.defer(m, layer, eigen_smooth, AWAITING)
                reason = AWAITING
            else:
                budget -= seconds
        (ask if reason else run).append((m, layer))
    if ask:
        _confirm(ex, ask, eigen_smooth)
    return _run_slow(ex, run, eigen_smooth, rerun) if run else []


def _go(ref: weakref.ref, pairs: list[Pair], eigen_smooth: bool) -> None:
    """A Run button's click. The explainer weakly: Streamlit keeps a widget's callback arguments
    in the session_state that outlives a closed tab."""
    ex = ref()
    for m, layer in pairs if ex is not None else ():
        ex.allow(m, layer, eigen_smooth)


def _confirm(ex: Explainer, ask: list[Pair], eigen_smooth: bool) -> None:
    """One "Run <method> on <layer> (~time)" button per held-back heatmap, with what it costs."""
    total = 0.0
    for m, layer in ask:
        est = ex.estimate(m, layer)
        label = pair_label(m, layer)
        prefix = "Cancelled. " if ex.deferred(m, layer, eigen_smooth) == CANCELLED else "Not started: "
        if est is not None and not est.channels:
            total += est.seconds
            basis = "measured on this model" if est.measured else "estimated from the shared pass's time"
            how = f"{label} needs work of its own: about {duration(est.seconds)} ({basis})."
            button = f"Run {label} (~{duration(est.seconds)})"
        elif est is not None:
            total += est.seconds
            basis = "measured on this model" if est.measured else "channels x one timed forward"
            per = (f"once per channel on each of its {est.copies} augmented copies (aug smoothing): "
                   f"{est.channels * est.copies:,}" if est.copies > 1 else f"once per channel: {est.channels:,}")
            how = f"{label} runs the model {per} forwards, about {duration(est.seconds)} ({basis})."
            button = f"Run {label} (~{duration(est.seconds)})"
        else:
            how, button = f"{label} needs passes of its own.", f"Run {label}"
        c1, c2 = st.columns([3, 2], vertical_alignment="center")
        c1.caption(prefix + how)
        c2.button(button, key=Compute.go(m, layer), on_click=_go,
                  args=(weakref.ref(ex), [(m, layer)], eigen_smooth),
                  type="primary", icon=":material/play_arrow:", width="stretch")
    if len(ask) > 1:
        st.button(f"Run all {len(ask)} (~{duration(total)})", key=Compute.GO_ALL, on_click=_go,
                  args=(weakref.ref(ex), list(ask), eigen_smooth), icon=":material/play_arrow:")


def _slow_progress_area():
    """The progress bar with its Cancel button, and the note shown instead once Stop ended the
    script (CSS shows one or the other): (the area, the bar)."""
    slot = st.empty()
    with slot.container():
        with st.container(key=Compute.BUSY):
            bar = st.progress(0.0, text="Starting…")
            st.button("Cancel", key=Compute.CANCEL_BUTTON, on_click=request, args=(Compute.CANCEL_REQUESTED,),
                      icon=":material/cancel:", help="Stops after the batch of forwards under way; the maps "
                                                     "already computed stay.")
        with st.container(key=Compute.STOPPED):  # shown only when the script stopped here (Stop)
            st.warning("Stopped before the slow heatmaps were finished: the maps already computed are shown. "
                       "Run them again with their button.", icon=":material/cancel:")
    return slot, bar


def _run_slow(ex: Explainer, run: list[Pair], eigen_smooth: bool, rerun: bool) -> list[str]:
    """Slow heatmaps one by one, with progress, an ETA and Cancel.

    Streamlit interrupts a script at its next st.* call: Stop, or a click (Cancel or any other:
    with fast reruns Streamlit stops this script and starts the next run at once, on another
    thread). The progress callback catches that at the bar and sets the engine's cancel, so the
    method stops after the batch of forwards under way; the interruption is then raised again for
    Streamlit to finish. The next run waits for that and says what happened (_settle_interrupted),
    through the process-wide job record."""
    style.page_style()
    errors: list[str] = []
    cancel = threading.Event()
    interrupted: list[BaseException] = []
    slot, bar = _slow_progress_area()
    state = {"fraction": 0.0, "label": "", "done": 0}
    left = list(run)
    lock, jobs = session_memory.jobs()
    # the explainer weakly: a job left behind by a closed tab must not keep its activations alive
    job = {"ex": weakref.ref(ex), "eigen": eigen_smooth, "cancel": cancel, "finished": threading.Event(),
           "interrupted": False, "label": "", "fraction": 0.0, "done": 0}
    with lock:
        jobs[session_memory.session_id()] = job

    def progress_for(i: int, m: str, layer: str) -> Progress:
        label = pair_label(m, layer)
        est = ex.estimate(m, layer)
        started = time.monotonic()
        state.update(label=label, fraction=0.0)

        def on_progress(fraction: float, message: str) -> None:
            waiting = message.startswith("Waiting")  # for the model another session holds: keep the bar
            fraction = state["fraction"] if waiting else min(1.0, max(0.0, fraction))
            state["fraction"] = fraction
            if interrupted:
                return  # no more st.* calls: after Stop each one raises again
            elapsed = time.monotonic() - started
            if waiting:
                eta = ""
            elif fraction >= 0.02:
                eta = f" · {eta_text(elapsed * (1 - fraction) / fraction)}"
            elif est is not None:
                eta = f" · {eta_text(est.seconds - elapsed, estimate=True)}"
            else:
                eta = ""
            try:
                bar.progress(fraction, text=f"{label} ({i + 1}/{len(run)}) · {text.escape(message)}{eta}")
            except BaseException as exc:  # Streamlit's rerun (Cancel, a click) or stop, raised at this call
                interrupted.append(exc)
                cancel.set()

        on_progress(0.0, "starting…")
        if cancel.is_set():  # a click or Stop at the bar: the pair is not started
            raise Cancelled("Cancelled.")
        return on_progress

    try:
        try:
            for step in iter_heatmaps(ex, run, eigen_smooth, progress_for, cancel):
                left.remove((step.method, step.layer))
                state.update(label="", fraction=0.0)  # none under way until the next pair starts
                if step.exception is None:
                    state["done"] += 1
                else:
                    errors.append(f"{pair_label(step.method, step.layer)}: {text.escape(step.exception)}")
        except Cancelled:
            pass
        if interrupted or cancel.is_set():
            # Cancel, Stop or another click: what the user said go for waits for a Run click again
            # (never restarted behind their back); short ones that needed no go just run again.
            for pm, pl in left:
                if ex.allowed(pm, pl, eigen_smooth):
                    ex.defer(pm, pl, eigen_smooth, CANCELLED)
            # The pair cut is the first left: the one under way, or (a click while a pair that
            # cannot stop mid-way finished) the next, not started. None left: nothing was cut.
            job.update(interrupted=bool(left), label=pair_label(*left[0]) if left else "",
                       fraction=state["fraction"] if state["label"] else 0.0, done=state["done"])
            if interrupted:
                raise interrupted[0]
            return errors  # stopped by the next run (it says so): this script is being stopped
    finally:
        job["finished"].set()  # whatever happened: a waiting run must never wait forever
    with lock:
        if jobs.get(session_memory.session_id()) is job:
            del jobs[session_memory.session_id()]
    slot.empty()
    if rerun and state["done"]:
        st.session_state[Compute.NOTES] = errors  # said by the next run, which shows the new maps
        st.rerun()
    return errors
