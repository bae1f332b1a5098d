"""The Review page's parts: the queue (the sidebar's narrowed view, lowest on-object share first),
the stored heatmap of one sample over its image (no model pass), whether that map is missing or
stale (made with other weights than the model loads now), and computing it on request."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import streamlit as st

from camcore import batch_options, models, overlay, store, weights
from camcore.errors import CamError
from camcore.measures import MeasureOptions
from camcore.store import audit
from ui import cache, text, urlstate
from ui.sidebar import Selection
from ui.state import Audit

SHORTCUTS = (("j", "next sample"), ("k", "previous sample"), ("f", "record the finding (tag and note above)"))


@dataclass(frozen=True)
class Stored:
    """A queue sample's stored map: the map (0..1) or None, and what is wrong with it, if anything."""

    heatmap: np.ndarray | None
    problem: str = ""  # "" | "missing" | "stale: ..."
    made_with: str = ""
    explains: str = ""  # the class (or box) the map explains, from its label


def position(total: int, queue: tuple) -> int:
    """The queue position: the link's `reviewed` (1-based) once, then the session's; back to the
    first (the worst) when the queue is another one (a new narrowing, view or run: the 10th of the
    old queue would skip the new one's 9 worst); kept in range."""
    if Audit.REVIEWED not in st.session_state:
        wanted = urlstate.pending().reviewed
        st.session_state[Audit.REVIEWED] = int(wanted) - 1 if wanted.isdigit() and int(wanted) > 0 else 0
    elif st.session_state.get(Audit.REVIEWED_QUEUE) != queue:
        st.session_state[Audit.REVIEWED] = 0
    st.session_state[Audit.REVIEWED_QUEUE] = queue
    pos = max(0, min(int(st.session_state[Audit.REVIEWED]), max(0, total - 1)))
    st.session_state[Audit.REVIEWED] = pos
    return pos


def step(delta: int, total: int) -> None:
    st.session_state[Audit.REVIEWED] = max(0, min(int(st.session_state.get(Audit.REVIEWED, 0)) + delta, total - 1))


def note_for(sample_id: str) -> None:
    """Empty the note box when it shows another sample than last time (Next, Prev, a new queue):
    a note is about one sample, and the next finding must not go in with it. Called before the box
    is drawn (a widget's value can only be set then); the tag stays, findings often repeat it."""
    if st.session_state.get(Audit.NOTE_SAMPLE) != sample_id:
        st.session_state[Audit.NOTE] = ""
        st.session_state[Audit.NOTE_SAMPLE] = sample_id


def _options(meaning: dict, weights_choice: str, about: str = "") -> batch_options.BatchOptions:
    """The batch that makes this field's maps (and measures) with these weights."""
    return batch_options.BatchOptions(model=meaning["model"], weights=weights_choice, methods=(meaning["method"],),
                              layers=(meaning["layer"],), target_rule=meaning["target"],
                              eigen_smooth="eigen" in meaning.get("variant", ""),
                              measures=MeasureOptions.parse(about) if about else MeasureOptions(), chunk=1)


def _weights_for(sel: Selection, dataset, heatmap: str, meaning: dict) -> str | None:
    """The weights that make a map of this field now: of those on offer (the sidebar's first), the
    ones whose batch writes this very field (an untrained twin's: untrained; a weights file's field:
    that file), whatever the sidebar shows; None when none does (its weights file was removed)."""
    offered = ([sel.weights] if sel.model == meaning.get("model") else []) + [c.value for c in weights.choices()]
    for choice in dict.fromkeys(offered):
        try:
            if _options(meaning, choice).checked().field_names(dataset) == [heatmap]:
                return choice
        except (CamError, KeyError, ValueError):
            continue
    return None


def stored(sel: Selection, sample_id: str, run: audit.AuditRun) -> Stored:
    """The sample's stored map and whether it is missing or stale (compared with the weights the
    field's model loads now; loading the model is cached, no pass is run)."""
    dataset = store.load_dataset(sel.dataset)
    label = store.get_sample(dataset, sample_id)[run.heatmap] if dataset.get_field(run.heatmap) else None
    heatmap = store.read_heatmap(dataset, sample_id, run.heatmap) if label is not None else None
    if heatmap is None:
        return Stored(None, "missing")
    made_with = f"{_attr(label, 'model')} ({_attr(label, 'weights')})" if _attr(label, "weights") else ""
    s = _stored(sel, dataset, run, label, heatmap, made_with)
    return dataclasses.replace(s, explains=str(_attr(label, "target") or ""))


def _stored(sel: Selection, dataset, run: audit.AuditRun, label, heatmap: np.ndarray, made_with: str) -> Stored:
    """The stored map, stale or not: its weights against those the field's model loads now."""
    meaning = store.heatmap_fields(dataset).get(run.heatmap, {})
    key = str(meaning.get("model") or _attr(label, "model") or "")
    if key not in models.MODELS or not meaning:
        return Stored(heatmap, "", made_with)  # a map of a model this app does not know: shown as stored
    choice = _weights_for(sel, dataset, run.heatmap, meaning)
    if choice is None:
        return Stored(heatmap, "", made_with)  # its weights are not on offer here: nothing to compare with
    try:
        loaded = cache.model(key, choice, models.load_version(key, choice))
    except CamError:
        return Stored(heatmap, "", made_with)  # no weights to compare with here: shown as stored
    now_sha = str((loaded.provenance or {}).get("weights_sha256") or "")
    then_sha, then_label = str(_attr(label, "weights_sha256") or ""), str(_attr(label, "weights") or "")
    if then_label and then_label != loaded.weights_label:
        return Stored(heatmap, f"stale: made with {then_label}, the model now loads {loaded.weights_label}",
                      made_with)
    if now_sha and then_sha and now_sha != then_sha:  # the same file, other content (a checkpoint saved over it)
        return Stored(heatmap, f"stale: made with {then_label or 'other weights'} as it was then (sha256 "
                               f"{then_sha[:12]}), which now holds other weights ({now_sha[:12]})", made_with)
    return Stored(heatmap, "", made_with)


def _attr(label, name: str):
    try:
        return label[name]
    except (KeyError, AttributeError):
        return None


def draw_sample(sel: Selection, sample_id: str, path: str, s: Stored, measures: dict) -> None:
    """The image with its stored map over it, and the sample's measures, as text."""
    try:
        img = cache.image(path, os.path.getmtime(path))
    except (CamError, OSError) as exc:
        st.error(f"Cannot read the image: {text.escape(exc)}")
        return
    left, right = st.columns([3, 2])
    shown = overlay.overlay(img.rgb, s.heatmap) if s.heatmap is not None else img.rgb
    left.image(shown, caption=text.escape(store.views.relative_label(path, cache.common_folder(sel.dataset))),
               width="stretch")
    lines = [f"{label}: {_shown(name, measures[name])}" for name, label in MEASURE_LABELS
             if measures.get(name) is not None]
    explains = [f"the map explains: {s.explains}"] if s.explains else []
    right.text("\n".join(explains + lines + ([f"map made by {s.made_with}"] if s.made_with else [])))


# The measures in the order a reviewer reads them, named in words (the field names are camm_<measure>_…).
MEASURE_LABELS = (("share", "share on the object"), ("bg", "background-dominated"), ("conf", "confidence"),
                  ("score", "target score"), ("keep", "faithfulness, highlight kept"),
                  ("remove", "faithfulness, highlight removed"), ("about", "measured with"))


def _shown(name: str, value) -> str:
    if name == "bg":
        return "yes" if value else "no"
    if name == "about":
        return audit.describe_about(str(value))
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def compute(sel: Selection, sample_id: str, run: audit.AuditRun, about: str) -> str:
    """Compute (or recompute) the sample's map and measures with the field's settings; a line saying
    what happened."""
    dataset = store.load_dataset(sel.dataset)
    meaning = store.heatmap_fields(dataset).get(run.heatmap)
    if not meaning:
        return f"{run.heatmap} is not a CAM Explorer heatmap field any more: nothing to compute."
    choice = _weights_for(sel, dataset, run.heatmap, meaning)
    if choice is None:
        return (f"No weights on offer here make {run.heatmap} (its weights file is no longer in the weights "
                "folder?): nothing computed.")
    options = _options(meaning, choice, about)
    from camcore import batch  # computing loads torch; the queue and the stored maps do not

    try:  # bad input (the object field deleted or of another type since, no weights): one line, the sample stays
        report = batch.run_batch(dataset.select([sample_id]), options)
    except CamError as exc:
        return f"Could not compute it: {exc}"
    if report.failed:
        return f"Could not compute it: {report.failed[0][1]}"
    return "Computed the map and its measures again." if report.done else "Already up to date."


def record(sel: Selection, sample_id: str, run: audit.AuditRun) -> None:
    tag = st.session_state.get(Audit.TAG) or store.FINDING_TAGS[0]
    note = str(st.session_state.get(Audit.NOTE) or "")
    store.add_finding(store.load_dataset(sel.dataset), sample_id, tag, note, run.heatmap,
                      url=urlstate.current_url("review"))
    st.session_state["_review_said"] = f"Recorded '{tag}' on this sample."
