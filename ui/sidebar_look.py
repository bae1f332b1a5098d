"""The sidebar's "how to look" section: the model, its weights, the input size, and your own
models file. ui/sidebar.py draws it under "what to look at" on every run (`draw`)."""
from __future__ import annotations

import streamlit as st

from camcore import model_file, models, weights
from ui import text, urlstate
from ui.state import Sidebar

WEIGHTS_AUTO = weights.AUTO_LABEL
WEIGHTS_UNTRAINED = weights.UNTRAINED_LABEL
CPU_SEGMENTATION_SIZE = 320  # 520 takes ~15 s a pass on a laptop CPU; offered, not imposed


def _weights_choices() -> dict[str, str]:
    """label -> value, as camcore.weights offers them."""
    return {c.label: c.value for c in weights.choices()}


def _auto_label(spec: models.ModelSpec) -> str:
    """What "auto" loads, as the Weights picker says it: a models-file entry's own checkpoint by
    its file name (never "pretrained", which it may not be); the built-ins' pretrained weights."""
    source = spec.weights
    if isinstance(source, weights.CheckpointWeights):
        return f"checkpoint {source.path.name} (models file)"
    return WEIGHTS_AUTO


def _remember(per_model_key: str, widget_key: str, model_key: str, default):
    """Per-model memory of a widget's value: restore it when the model changes (or when the widget
    was not drawn on the last run, which drops its state); `default` where never chosen."""
    memory = st.session_state.setdefault(per_model_key, {})
    if st.session_state.get(Sidebar.model_of(widget_key)) != model_key or widget_key not in st.session_state:
        st.session_state[widget_key] = memory.get(model_key, default)
        st.session_state[Sidebar.model_of(widget_key)] = model_key
    return memory


_RELOADED = Sidebar.RELOAD_MODELS + "_done"  # the confirmation of the last reload, shown once


def _reload_models() -> None:
    skipped = models.reload_model_file()  # what it skipped is listed below the button on this run
    path = model_file.models_file_path()
    mine = [m for m in models.list_models() if m.source != "built-in"]
    st.session_state[_RELOADED] = f"Read {path} again: {len(mine)} of your models, {len(skipped)} skipped."


def _models_file(sb) -> None:
    """Your own models (a TOML file): reload it without a restart (confirmed); its skipped entries
    in one warning under the pickers, so that they never push the Model picker down."""
    path = model_file.models_file_path()
    if path is None:
        return
    sb.button("Reload models file", key=Sidebar.RELOAD_MODELS, on_click=_reload_models,
              help=text.escape(f"Reads {path} again: new, changed and removed entries."))
    done = st.session_state.pop(_RELOADED, None)
    if done:
        sb.success(text.escape(done), icon=":material/check:")
    skipped = models.skipped_models()
    if skipped:
        lines = "  \n".join(text.escape(f"{e.key}: {e.reason}") for e in skipped)
        sb.warning(f"Skipped from the models file ({len(skipped)}):  \n{lines}", icon=":material/block:")


def draw(sb) -> tuple[str, str, int | None]:
    """The section in `sb`: (model key, weights value, input short side or None)."""
    sb.markdown("### How to look")
    keys = list(models.MODELS)
    if st.session_state.get(Sidebar.MODEL) not in keys:  # no index=: study buttons and links set it too
        st.session_state[Sidebar.MODEL] = models.DEFAULT_MODEL
    model_key = sb.selectbox("Model", keys, key=Sidebar.MODEL, format_func=lambda k: models.MODELS[k].label,
                             help="\n\n".join(f"**{text.escape(m.label)}**: {text.escape(m.description)}"
                                                for m in models.MODELS.values()))
    choices = _weights_choices()
    # Weights are chosen per model: "untrained" for DeiT must not follow the user to EfficientNet.
    memory = _remember(Sidebar.WEIGHTS_BY_MODEL, Sidebar.WEIGHTS, model_key, WEIGHTS_AUTO)
    urlstate.apply_weights(choices)
    if st.session_state[Sidebar.WEIGHTS] not in choices:  # a weights file that was removed
        st.session_state[Sidebar.WEIGHTS] = WEIGHTS_AUTO
    auto = _auto_label(models.MODELS[model_key])
    label = sb.selectbox("Weights", list(choices), key=Sidebar.WEIGHTS,
                         format_func=lambda c: auto if c == WEIGHTS_AUTO else c,
                         help=f"Pretrained weights come from {weights.weights_dir()}, the torch/timm caches, "
                              "the package, or a download when online.")
    memory[model_key] = label
    _models_file(sb)
    spec = models.MODELS[model_key]
    input_size = None
    if spec.preprocess.mode == "short_side":
        on_gpu = models.default_device().type == "cuda"
        default = spec.preprocess.size if on_gpu else CPU_SEGMENTATION_SIZE
        sizes = sorted({256, CPU_SEGMENTATION_SIZE, 400, spec.preprocess.size})
        input_size = sb.select_slider("Input short side (px)", sizes,
                                      value=st.session_state.get(Sidebar.INPUT_SIZE, default), key=Sidebar.INPUT_SIZE,
                                      help=f"{spec.preprocess.size} is the model's own size; smaller is faster "
                                           "on a CPU.")
    return model_key, choices[label], input_size
