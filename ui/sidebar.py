"""The sidebar every page shares: what to look at (dataset, view, sample) and with what (model,
weights). app.py draws it on every run and leaves a `Selection` in session_state for the pages."""
from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from camcore import demo_data, models, store, weights
from camcore.errors import CamError
from ui import cache

WEIGHTS_AUTO = "pretrained (auto)"
WEIGHTS_UNTRAINED = "untrained (random weights)"
CPU_SEGMENTATION_SIZE = 320  # 520 takes ~15 s a pass on a laptop CPU; offered, not imposed


@dataclass(frozen=True)
class Selection:
    dataset: str
    sample_id: str
    sample_ids: tuple[str, ...]  # the current view, for previous/next and the strip
    filepaths: tuple[str, ...]  # same order as sample_ids
    filepath: str
    model: str
    weights: str  # "auto", "untrained" or a file in the weights folder
    input_size: int | None


def current() -> Selection | None:
    return st.session_state.get("selection")


def _weights_choices() -> dict[str, str]:
    choices = {WEIGHTS_AUTO: weights.AUTO}
    folder = weights.weights_dir()
    if folder.is_dir():  # only files in the weights folder: a widget never reads a typed path
        for f in sorted(folder.iterdir()):
            if f.suffix in weights.WEIGHT_SUFFIXES:
                choices[f"file: {f.name}"] = str(f)
    choices[WEIGHTS_UNTRAINED] = weights.UNTRAINED
    return choices


def _load_quickstart() -> None:
    try:
        with st.spinner("Downloading the quickstart dataset…", show_time=True):
            dataset = demo_data.load_quickstart()
        st.session_state["dataset"] = dataset.name
    except CamError as exc:
        st.session_state["quickstart_error"] = str(exc)


def choose_sample(sample_id: str) -> None:
    """Callback for thumbnails: runs before the sidebar's selectbox is drawn again."""
    st.session_state["sample_id"] = sample_id


def _step(delta: int, ids: tuple[str, ...]) -> None:
    cur = st.session_state.get("sample_id")
    i = ids.index(cur) if cur in ids else 0
    st.session_state["sample_id"] = ids[(i + delta) % len(ids)]


NO_MATCH = "No samples in this view: clear or change the filter under 'Filter the view', or pick another dataset."
EMPTY_DATASET = "This dataset has no samples: add images or pick another dataset."
PROBLEM = "selection_problem"  # why there is no selection (a message), for the pages


def problem() -> str | None:
    """Why `current()` is None: the sidebar's message (empty view or dataset, a failing dataset)."""
    return st.session_state.get(PROBLEM)


def _no_selection(message: str) -> None:
    """Nothing to act on: drop the stored selection, so no page acts on the previous sample."""
    st.session_state.pop("selection", None)
    st.session_state[PROBLEM] = message


def draw() -> Selection | None:
    """Draw the shared controls; return (and store) the selection, or None with a message (and
    no stored selection: pages never act on a sample that is no longer in the view)."""
    sb = st.sidebar
    sb.markdown("### What to look at")
    try:
        with st.spinner("Preparing the demo dataset…", show_time=True):
            demo = cache.demo_dataset_name()
        names = store.list_datasets()
    except CamError as exc:
        sb.error(f"FiftyOne is not available: {exc}")
        _no_selection(f"FiftyOne is not available: {exc}")
        return None
    names = [demo] + [n for n in names if n != demo]
    name = sb.selectbox("Dataset", names, key="dataset", help="Any FiftyOne image dataset in your database.")
    if demo_data.QUICKSTART_NAME not in names:
        sb.button("Load FiftyOne's quickstart (needs internet)", key="load_quickstart", on_click=_load_quickstart,
                  help="Downloads the FiftyOne zoo 'quickstart' dataset (200 images with ground truth boxes).")
    if st.session_state.get("quickstart_error"):
        sb.error(st.session_state.pop("quickstart_error"))
    ids, paths, trouble = _view(sb, name)
    if trouble is None and not ids:
        trouble = NO_MATCH
    if trouble is None:
        by_id = dict(zip(ids, paths))
        if st.session_state.get("sample_id") not in by_id:
            st.session_state["sample_id"] = ids[0]
        sb.selectbox("Sample", ids, key="sample_id", format_func=lambda i: os.path.basename(by_id[i]),
                     help=f"{len(ids)} samples in this view.")
        prev_col, pos_col, next_col = sb.columns([1, 2, 1])
        prev_col.button("◀", key="prev_sample", on_click=_step, args=(-1, ids), help="Previous sample")
        pos_col.caption(f"{ids.index(st.session_state['sample_id']) + 1} / {len(ids)}")
        next_col.button("▶", key="next_sample", on_click=_step, args=(1, ids), help="Next sample")
    else:
        sb.warning(trouble)

    # The model and weights stay on screen (and keep their values) whatever the dataset holds.
    model_key, weights_value, input_size = _how_to_look(sb)
    if trouble is not None:
        _no_selection(trouble)
        return None
    st.session_state.pop(PROBLEM, None)
    sel = Selection(name, st.session_state["sample_id"], ids, paths, by_id[st.session_state["sample_id"]],
                    model_key, weights_value, input_size)
    st.session_state["selection"] = sel
    return sel


def _view(sb, name: str) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
    """The filtered view's sample ids and file paths, or a message saying why there are none."""
    try:
        dataset = store.load_dataset(name)
        if len(dataset) == 0:  # before require_image: an empty dataset has no media type yet
            return (), (), EMPTY_DATASET
        store.require_image(dataset)
        tags = sorted(dataset.distinct("tags"))
        with sb.expander("Filter the view", expanded=False):
            chosen_tags = st.multiselect("Samples tagged", tags, key="view_tags")
            contains = st.text_input("File name contains", key="view_filename")
            fields = store.label_fields(dataset)
            field = st.selectbox("Label field", [None] + fields, key="view_label_field",
                                 format_func=lambda f: "(any)" if f is None else f)
            label = (st.selectbox("Label", [None] + store.label_values(dataset, field), key="view_label",
                                  format_func=lambda v: "(any)" if v is None else v) if field else None)
        view = store.make_view(dataset, tags=chosen_tags or None, label_field=field, label=label,
                               filename_contains=contains or None)
        ids, paths = view.values(["id", "filepath"])
    except CamError as exc:
        return (), (), f"{exc}. Pick another dataset."
    return tuple(ids), tuple(paths), None


def _remember(per_model_key: str, widget_key: str, model_key: str, default):
    """Per-model memory of a widget's value: restore it when the model changes (or when the widget
    was not drawn on the last run, which drops its state); `default` where never chosen."""
    memory = st.session_state.setdefault(per_model_key, {})
    if st.session_state.get(f"_{widget_key}_model") != model_key or widget_key not in st.session_state:
        st.session_state[widget_key] = memory.get(model_key, default)
        st.session_state[f"_{widget_key}_model"] = model_key
    return memory


def _how_to_look(sb) -> tuple[str, str, int | None]:
    sb.markdown("### How to look")
    keys = list(models.MODELS)
    st.session_state.setdefault("model", models.DEFAULT_MODEL)  # no index=: study buttons set it too
    model_key = sb.selectbox("Model", keys, key="model", format_func=lambda k: models.MODELS[k].label,
                             help="\n\n".join(f"**{m.label}**: {m.description}" for m in models.MODELS.values()))
    choices = _weights_choices()
    # Weights are chosen per model: "untrained" for DeiT must not follow the user to EfficientNet.
    memory = _remember("_weights_by_model", "weights_choice", model_key, WEIGHTS_AUTO)
    if st.session_state["weights_choice"] not in choices:  # a weights file that was removed
        st.session_state["weights_choice"] = WEIGHTS_AUTO
    label = sb.selectbox("Weights", list(choices), key="weights_choice",
                         help=f"Pretrained weights come from {weights.weights_dir()}, the torch/timm caches, "
                              "the package, or a download when online.")
    memory[model_key] = label
    spec = models.MODELS[model_key]
    input_size = None
    if spec.preprocess.mode == "short_side":
        on_gpu = models.default_device().type == "cuda"
        default = spec.preprocess.size if on_gpu else CPU_SEGMENTATION_SIZE
        sizes = sorted({256, CPU_SEGMENTATION_SIZE, 400, spec.preprocess.size})
        input_size = sb.select_slider("Input short side (px)", sizes, value=st.session_state.get("input_size", default),
                                      key="input_size",
                                      help=f"{spec.preprocess.size} is the model's own size; smaller is faster on a CPU.")
    return model_key, choices[label], input_size
