"""A detection model's box picker: which box to explain (the model's detections above a score
threshold, every box of a class, all of them, or a box of the sample's own Detections fields).
Its value is a short box rule (camcore.detection; `id:<detection id>` for a field's box) that the
URL carries as `box=`; the engine gets the rule with the field's box resolved."""
from __future__ import annotations

from collections.abc import Mapping

import streamlit as st

from camcore import detection
from camcore.errors import CamError
from camcore.results import Prediction, Target
from ui import data, text
from ui.state import Explore
from ui.widgets import fresh_label_selectbox


def _split(rule: str) -> tuple[str, float | None]:
    body, _, thr = rule.partition("@")
    try:
        return body.strip(), (float(thr) if thr else None)
    except ValueError:
        return body.strip(), None


def _options(prediction: Prediction, threshold: float,
             field_boxes: list[tuple[str, str, str, list[float]]]) -> dict[str, str]:
    """value -> label, labels unique (the browser tells options apart by label)."""
    above = [d for d in prediction.boxes if d.score >= threshold]
    options = {detection.TOP: (f"top-scoring box ({above[0].name} {above[0].score:.2f})" if above
                               else "top-scoring box (none at this threshold)")}
    for d in above:
        options[f"det:{d.index}"] = f"#{d.index} {d.name} {d.score:.2f}"
    for name in dict.fromkeys(d.name for d in above):
        options[f"class:{name}"] = f"every '{name}' box"
    options["all"] = f"all detections ({len(above)})"
    for field, det_id, label, _box in field_boxes:
        options[f"id:{det_id}"] = f"{field}: {label} ({det_id[-6:]})"
    return options


def box_picker(container, prediction: Prediction, dataset: str, sample_id: str, requested: str | None = None,
               key: str = Explore.BOX, threshold_key: str = Explore.BOX_THRESHOLD) -> tuple[str, str]:
    """(the short box rule, for the URL; the engine's box rule). `requested`: a link's box rule."""
    try:
        field_boxes = data.sample_boxes(dataset, sample_id)
    except CamError as exc:
        field_boxes = []
        container.caption(f"The sample's boxes cannot be read: {text.escape(str(exc))}")
    if requested:
        body, thr = _split(requested)
        if thr is not None and 0 <= thr <= 1:
            st.session_state[threshold_key] = thr
        st.session_state[key] = body
    st.session_state.setdefault(threshold_key, detection.DEFAULT_THRESHOLD)
    threshold = container.slider("Box score threshold", 0.0, 1.0, step=0.05, key=threshold_key,
                                 help="The model's detections at or above this score are listed and drawn.")
    options = _options(prediction, threshold, field_boxes)
    if st.session_state.get(key) not in options:
        if requested:
            container.warning(text.escape(f"No box {requested!r} on this sample at score >= {threshold:g}: "
                                          "showing the top-scoring box."))
        st.session_state[key] = detection.TOP
    choice = fresh_label_selectbox(container, "Box to explain", list(options), lambda o: options[o], key,
                                   help="The model's own detections (best first), every box of a class, all of "
                                        "them, or a box of the sample's Detections fields (matched to the model's "
                                        "output by IoU and label). Another method or layer of the same box "
                                        "reuses its pass. Another box of the same image reuses the forward: "
                                        "Eigen-CAM runs nothing, a gradient method one backward (the box's "
                                        "score is what the gradients are of). It cannot with aug_smooth (six "
                                        "augmented passes per box), nor for Score-CAM and Ablation-CAM (their "
                                        "own forwards, scored for the box), nor after another image or model.")
    short = choice if threshold == detection.DEFAULT_THRESHOLD else f"{choice}@{threshold:g}"
    return short, engine_rule(choice, threshold, prediction) or data.box_rule(dataset, sample_id, short)


def engine_rule(choice: str, threshold: float, prediction: Prediction) -> str | None:
    """The model's own box (top, det:<i>) asked for at threshold 0 when it passes the threshold:
    the detections above a threshold are the first ones of those above 0 (best first), so it is
    the same box, and the request is the one of the page's first pass ("top@0"), whose forward and
    backward the top box then reuses instead of running the model again. None for other rules."""
    body = choice.partition("@")[0]
    if body != detection.TOP and not body.startswith("det:"):
        return None
    index = 0 if body == detection.TOP else int(body[4:]) if body[4:].isdigit() else -1
    above = [d for d in prediction.boxes if d.score >= threshold]
    return f"{body}@0" if 0 <= index < len(above) else None


Drawn = tuple[tuple[float, float, float, float], str, bool]  # box (image pixels), caption, explained


def to_draw(target: Target, prediction: Prediction, threshold: float, most: int = 30,
            captioned: int = 12) -> list[Drawn]:
    """The boxes to draw over a detector's map (overlay.draw_boxes): its other detections at the
    threshold (the best `most`, thin, with label and score while at most `captioned`), the
    explained one(s) highlighted with label and score; a field's box that was explained, named by
    its field. Empty for a model that is not a detector."""
    if prediction.task != "detection":
        return []
    explained_boxes = set(target.boxes)

    def explained(d) -> bool:
        if target.box_ref.startswith("det"):
            return target.box_ref == f"det{d.index}"
        return d.box in explained_boxes and (target.box_ref == "all" or d.label == target.index)

    field_box = "/" in target.box_ref  # a box of the sample's own Detections field
    chosen = [d for d in prediction.boxes if not field_box and explained(d)]
    others = [d for d in prediction.boxes if d.score >= threshold and d not in chosen][:most]
    out: list[Drawn] = [(d.box, f"#{d.index} {d.name} {d.score:.2f}" if len(others) <= captioned else "", False)
                        for d in others]
    out += [(d.box, f"#{d.index} {d.name} {d.score:.2f}", True) for d in chosen]
    if field_box:
        out += [(b, f"{target.box_ref.split('/')[0]}: {target.name}", True) for b in target.boxes]
    return out


def pass_cost(timings: Mapping[str, float]) -> str:
    """What the maps on screen cost in model passes (Explore's and Compare's captions): the shared
    pass's seconds, or, for another box of an image whose forward the session kept, the one
    backward it ran (none yet when only activation methods such as Eigen-CAM were asked for)."""
    if timings.get("forward_reused"):
        if "backward" in timings:
            return f"forward reused · one backward {timings['backward']:.2f} s"
        return "forward reused · no backward (no gradient method yet)"
    return f"shared pass {timings.get('pass', 0):.2f} s"
