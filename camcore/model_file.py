"""Your own models: a TOML file whose entries become ModelSpecs next to the built-in ones.

The file is ``$CAM_EXPLORER_MODELS``, else ``models.toml`` in the CAM Explorer home when it exists.
Each table ``[models.<key>]`` is one model::

    [models.my_resnet]
    arch = "timm:resnet18"            # timm:<model name> | torchvision:<builder>
    weights = "checkpoints/r18.pth"   # a state dict, relative to this file's folder
    classes = "labels.txt"            # a text file (one name per line) or a list of names
    # optional: label, task, input_size, mean, std, layers, default_layer, short

``short`` is the model's code in heatmap field names (1-8 of ``[a-z0-9]``, e.g. ``r18``; default:
the key when it is that short, else its first 5 characters and 3 hex of a hash of it). A layer's
code is its module path abbreviated (``blocks.6`` -> ``b6``, ``layer4`` -> ``l4``, ``head``).

Everything the libraries know is taken from them (never written by hand here): timm's
``feature_info`` stages, a ViT's patch size and prefix tokens, timm's pretrained config (input
size, mean, std), torchvision's documented transforms and its segmentation backbones' stages.

Every entry is checked when the file is read, without building real weights: the architecture is
built on PyTorch's "meta" device (shapes only) and compared with the checkpoint's tensor shapes
(read memory-mapped). A bad entry becomes a :class:`SkippedEntry` with a one-line reason; it
never hides the good entries. Never imports streamlit.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camcore import paths
from camcore import weights as weights_mod
from camcore.errors import CamError, first_line
from camcore.identity import sanitise
from camcore.model_spec import DETECTOR_LAYOUTS, LayerSpec, ModelSpec, SkippedEntry, detector_layers
from camcore.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess

if TYPE_CHECKING:  # torch is imported when an entry is built: a file without entries needs none
    import torch

ENV = "CAM_EXPLORER_MODELS"
FILE_NAME = "models.toml"
SETTINGS = ("arch", "weights", "classes", "label", "task", "input_size", "mean", "std", "layers",
            "default_layer", "description", "short")
TASKS = ("classification", "segmentation", "detection")
BACKGROUND = "__background__"  # a torchvision detector's class 0


class EntryError(CamError):
    """One entry of the models file is unusable; the message says why, in one line."""


def models_file_path() -> Path | None:
    """The models file the environment names now: $CAM_EXPLORER_MODELS (even when missing: that
    is reported), else <home>/models.toml when it exists, else None."""
    named = os.environ.get(ENV)
    if named:
        return Path(named).expanduser().resolve()
    raw = os.environ.get(paths.HOME_ENV) or str(paths.DEFAULT_HOME)
    candidate = Path(raw).expanduser().resolve() / FILE_NAME
    return candidate if candidate.is_file() else None


def load(path: Path | None, reserved: tuple[str, ...] = (),
         reserved_codes: dict[str, str] | None = None) -> tuple[dict[str, ModelSpec], list[SkippedEntry]]:
    """Read a models file: (the specs of the good entries, the skipped entries with reasons).
    reserved: keys that entries may not take (the built-in models'); reserved_codes: field-name
    codes already taken (code -> the model that has it: the built-in models')."""
    if path is None:
        return {}, []
    source = str(path)
    if not path.is_file():
        why = f"{ENV} names it" if os.environ.get(ENV) else "not found"
        return {}, [SkippedEntry("(file)", f"file not found ({why})", source)]
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, [SkippedEntry("(file)", f"not a readable TOML file: {first_line(exc)}", source)]
    entries = data.get("models")
    if not isinstance(entries, dict) or not entries:
        return {}, [SkippedEntry("(file)", "no [models.<key>] tables in it", source)]
    specs: dict[str, ModelSpec] = {}
    skipped: list[SkippedEntry] = []
    taken = dict(reserved_codes or {})
    for key, entry in entries.items():
        try:
            spec = entry_spec(key, entry, path.parent, source, reserved)
            if spec.short in taken:  # two models, one code: their fields' names would collide
                raise EntryError(f"its field-name code '{spec.short}' is model '{taken[spec.short]}'s: "
                                 "set short = \"<another code>\" in its table")
            specs[key], taken[spec.short] = spec, key
        except EntryError as exc:
            skipped.append(SkippedEntry(key, str(exc), source))
        except Exception as exc:  # a library failing on odd settings: still only this entry
            skipped.append(SkippedEntry(key, f"{type(exc).__name__}: {first_line(exc)}", source))
    return specs, skipped


# ---------------------------------------------------------------- architectures


@dataclass(frozen=True)
class _Arch:
    library: str  # "timm" | "torchvision"
    name: str
    task: str

    @property
    def text(self) -> str:
        return f"{self.library}:{self.name}"


def _parse_arch(value: Any) -> _Arch:
    if not isinstance(value, str) or ":" not in value:
        raise EntryError(f"unknown architecture {value!r}: write arch = \"timm:<model name>\" or "
                         "\"torchvision:<builder>\"")
    library, name = (part.strip() for part in value.split(":", 1))
    if library == "timm":
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise EntryError(f"unknown architecture '{value}': timm has no model '{name}'{hint}")
        return _Arch("timm", name, "classification")
    if library == "torchvision":
        import torchvision.models as tvm
        from torchvision.models import list_models

        if name in list_models(module=tvm.segmentation):
            return _Arch("torchvision", name, "segmentation")
        if name in list_models(module=tvm.detection):
            if name.startswith(("maskrcnn", "keypointrcnn")):
                raise EntryError(f"architecture '{value}' is a mask or keypoint model: only box detectors "
                                 "(Faster R-CNN, RetinaNet, FCOS, SSD) are supported")
            return _Arch("torchvision", name, "detection")
        if name in list_models(module=tvm):
            return _Arch("torchvision", name, "classification")
        if name in list_models():
            raise EntryError(f"architecture '{value}' is a video or optical-flow model: only "
                             "classification, segmentation and detection models are supported")
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EntryError(f"unknown architecture '{value}': torchvision has no builder '{name}'{hint}")
    raise EntryError(f"unknown architecture '{value}': the library must be timm or torchvision")


def _build_raw(arch: _Arch, num_classes: int, img_size: int | None = None) -> torch.nn.Module:
    """The user's architecture with random weights and their class count; nothing downloaded."""
    if arch.library == "timm":
        import timm

        sized: dict[str, Any] = {"img_size": img_size} if img_size else {}
        return timm.create_model(arch.name, pretrained=False, num_classes=num_classes, **sized)
    from torchvision.models import get_model_builder

    builder = get_model_builder(arch.name)
    params = inspect.signature(builder).parameters
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if "weights_backbone" in params:  # else torchvision downloads the backbone's ImageNet weights
        kwargs["weights_backbone"] = None
    if "aux_loss" in params:  # the auxiliary head only serves training (see models._build_deeplabv3)
        kwargs["aux_loss"] = False
    return builder(**kwargs)


def _build_meta(arch: _Arch, num_classes: int, img_size: int | None) -> torch.nn.Module:
    """The architecture's shapes without memory or init cost (meta device); a real CPU build when
    a model's constructor needs real numbers."""
    import torch

    try:
        with torch.device("meta"):
            return _build_raw(arch, num_classes, img_size)
    except Exception:
        return _build_raw(arch, num_classes, img_size)


def _is_timm_vit(module: torch.nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("num_prefix_tokens", "patch_embed", "blocks"))


def _build_model(arch: _Arch, num_classes: int, img_size: int | None) -> torch.nn.Module:
    from camcore.model_outputs import SegmentationOutput

    raw = _build_raw(arch, num_classes, img_size)
    return SegmentationOutput(raw) if arch.task == "segmentation" else raw


# ---------------------------------------------------------------- the entry's parts


@dataclass(frozen=True)
class _Names:
    """A spec's class_names callable (a plain object: specs stay picklable)."""

    names: tuple[str, ...]

    def __call__(self) -> tuple[str, ...]:
        return self.names


def _file(folder: Path, value: Any, what: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise EntryError(f"{what} must be a file path")
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else folder / path).resolve()
    if not path.is_file():
        raise EntryError(f"{what} file not found: {path}")
    return path


def _classes(folder: Path, value: Any) -> tuple[tuple[str, ...], str]:
    """(names, where they come from)."""
    if value is None:
        raise EntryError("no classes: give classes = \"labels.txt\" (one name per line) or a list of names")
    if isinstance(value, list):
        names, where = value, "inline list"
    else:
        path = _file(folder, value, "classes")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise EntryError(f"cannot read classes file {path}: {first_line(exc)}") from exc
        names, where = [line.strip() for line in text.splitlines() if line.strip()], str(path)
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise EntryError("classes must be non-empty names (text)")
    names = [n.strip() for n in names]
    if not names:
        raise EntryError(f"no class names in {where}")
    seen: set[str] = set()
    for n in names:
        if n.lower() in seen:  # targets are chosen by name: two alike would be ambiguous
            raise EntryError(f"class name '{n}' appears twice in {where}")
        seen.add(n.lower())
    return tuple(names), where


def _triple(value: Any, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise EntryError(f"{what} must be three numbers (R, G, B), e.g. [0.485, 0.456, 0.406]")
    if what == "std" and any(v <= 0 for v in value):
        raise EntryError("std must be positive")
    return (float(value[0]), float(value[1]), float(value[2]))


def _class_count_problem(arch: _Arch, num_classes: int, img_size: int | None, model_shapes: dict,
                         state: dict) -> str | None:
    """"checkpoint has N classes, the entry names K" when the class-dependent tensors (those whose
    shapes change with num_classes: found by building the architecture with K + 1) disagree."""
    other = _build_meta(arch, num_classes + 1, img_size).state_dict()
    for key, ours in model_shapes.items():
        theirs_alt = other.get(key)
        if theirs_alt is None or list(theirs_alt.shape) == list(ours.shape) or key not in state:
            continue
        axes = [i for i, (a, b) in enumerate(zip(ours.shape, theirs_alt.shape, strict=False)) if a != b]
        shape = list(state[key].shape)
        if axes and len(shape) == len(ours.shape) and shape[axes[0]] != ours.shape[axes[0]]:
            # a head may hold k values per class (a detector's 4 box deltas, SSD's anchors)
            per = abs(theirs_alt.shape[axes[0]] - ours.shape[axes[0]]) or 1
            found = shape[axes[0]] // per if shape[axes[0]] % per == 0 else shape[axes[0]]
            if arch.task == "detection":
                return (f"checkpoint's head has {found - 1} classes + background, the entry names "
                        f"{num_classes - 1} (+ background)")
            return f"checkpoint has {found} classes, the entry names {num_classes}"
    return None


def _auto_layers(arch: _Arch, raw: torch.nn.Module) -> tuple[list[str], str | None]:
    """(module paths in the user's model, the default one) from what the library knows."""
    if arch.library == "timm":
        modules = [info["module"] for info in getattr(raw, "feature_info", []) or [] if info.get("module")]
        if _is_timm_vit(raw):
            # A ViT's last block output reaches the class token only through it (the final norm
            # is per token): its other tokens get no gradient. Each block's norm1 feeds attention,
            # where every token does: the usual CAM layer for ViTs.
            modules = [m + ".norm1" if hasattr(raw.get_submodule(m), "norm1") else m for m in modules]
        if modules:
            return modules, modules[-1]
        raise EntryError(f"timm does not list the stages of {arch.text} (no feature_info): "
                         "list module paths under layers = [...]")
    if arch.task == "detection":
        raise EntryError(f"no layers known for {arch.text}: list module paths under layers = [...]")
    if arch.task == "segmentation":
        backbone: Any = raw.backbone
        children = list(backbone.named_children())
        if all(name.isdigit() for name, _m in children):  # MobileNetV3 features: torchvision's stages
            cuts = [i for i, (_n, m) in enumerate(children) if getattr(m, "_is_cn", False)]
            idx = [0, *cuts, len(children) - 1]
            names = [children[i][0] for i in dict.fromkeys(idx)]
        else:
            names = [name for name, _m in children if name.startswith("layer")]
        returned = {v: k for k, v in getattr(backbone, "return_layers", {}).items()}
        default = returned.get("out") or returned.get("high")
        layers = [f"backbone.{n}" for n in names]
        return layers, (f"backbone.{default}" if default and f"backbone.{default}" in layers else layers[-1])
    # torchvision classifiers: the stages their own code names
    if all(hasattr(raw, f"layer{i}") for i in range(1, 5)):  # ResNet family
        layers = [f"layer{i}" for i in range(1, 5)]
        return layers, layers[-1]
    import torch

    for container in ("features", "trunk_output", "layers"):
        seq = getattr(raw, container, None)
        if isinstance(seq, torch.nn.Sequential) and len(seq):
            layers = [f"{container}.{name}" for name, _m in seq.named_children()]
            return layers, layers[-1]
    raise EntryError(f"no stages known for {arch.text}: list module paths under layers = [...]")


def _layers(arch: _Arch, raw: torch.nn.Module, value: Any, default: Any) -> tuple[tuple[LayerSpec, ...], str]:
    prefix = "model." if arch.task == "segmentation" else ""  # ours wraps theirs (SegmentationOutput)
    if value is None and arch.task == "detection" and arch.name in DETECTOR_LAYOUTS:
        known = detector_layers(arch.name)  # backbone stages, the FPN fused ("fpn") and its levels
        names = [layer.name for layer in known]
        if default is not None and (not isinstance(default, str) or default.strip() not in names):
            raise EntryError(f"default_layer {default!r} is not one of its layers ({', '.join(names)})")
        return known, (default.strip() if isinstance(default, str) else "fpn")
    if value is None:
        names, auto_default = _auto_layers(arch, raw)
    else:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise EntryError("layers must be a list of module paths, e.g. [\"layer3\", \"layer4\"]")
        names, auto_default = list(dict.fromkeys(v.strip() for v in value)), None
        for name in names:
            try:
                raw.get_submodule(name)
            except AttributeError:
                top = ", ".join(n for n, _m in raw.named_children())
                raise EntryError(f"layer '{name}' does not exist in {arch.text} (its top-level modules: "
                                 f"{top})") from None
    codes = {n: _layer_code(n) for n in names}
    clash = {c for c in codes.values() if list(codes.values()).count(c) > 1}
    layers = tuple(LayerSpec(n, prefix + n, short=sanitise(n, 10) if codes[n] in clash else codes[n])
                   for n in names)
    if default is None:
        return layers, auto_default or names[-1]
    if not isinstance(default, str) or default.strip() not in names:
        raise EntryError(f"default_layer {default!r} is not one of its layers ({', '.join(names)})")
    return layers, default.strip()


def _layer_code(name: str) -> str:
    """A layer's code in field names: each dotted part of its module path abbreviated (a word to
    its first letter, a word with a number to its letter and number, a number kept): blocks.6 ->
    b6, backbone.layer4 -> bl4; a one-word path without a number is kept (head, conv_head ->
    convhead). At most 8 characters (a longer one is cut and ends in a hash)."""
    parts = [p for p in re.split(r"[^a-z0-9]+", name.lower().replace("_", "")) if p]
    if len(parts) == 1 and not re.search(r"\d", parts[0]):
        code = parts[0]
    else:
        code = "".join(p if p.isdigit() else p[0] + "".join(re.findall(r"\d+", p)) for p in parts)
    return sanitise(code or name, 8).replace("_", "")


def _model_code(key: str, given: Any) -> str:
    """A models-file entry's code in field names: its `short`, else its key when that is short."""
    if given is not None:
        if not isinstance(given, str) or not re.fullmatch(r"[a-z0-9]{1,8}", given):
            raise EntryError(f"short must be 1-8 of a-z and 0-9 (a code in field names), not {given!r}")
        return given
    clean = re.sub(r"[^a-z0-9]", "", key.lower())
    if clean and len(clean) <= 6:
        return clean
    return (clean[:5] or "m") + hashlib.sha1(key.encode()).hexdigest()[:3]


def _preprocess(arch: _Arch, raw: torch.nn.Module, size: int | None, mean, std) -> Preprocess:
    """timm's pretrained config, or torchvision's documented transforms, unless overridden."""
    own_size, own_mean, own_std = 224, IMAGENET_MEAN, IMAGENET_STD
    if arch.task == "detection":
        if mean or std:
            raise EntryError(f"{arch.text} normalises inside (its model.transform): remove mean and std")
        # the detector resizes inside too: its own shorter side unless input_size says otherwise
        transform: Any = raw.transform
        own_size = int(transform.min_size[0])
        return Preprocess("short_side", int(size or own_size), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if arch.library == "timm":
        cfg = getattr(raw, "pretrained_cfg", None) or {}
        if cfg.get("input_size"):
            own_size = int(cfg["input_size"][-2])
        own_mean = tuple(cfg.get("mean") or own_mean)
        own_std = tuple(cfg.get("std") or own_std)
    else:
        try:
            from torchvision.models import get_model_weights

            transforms = next(iter(get_model_weights(arch.name))).transforms()
            sizes = getattr(transforms, "crop_size", None) or getattr(transforms, "resize_size", None)
            if sizes:
                own_size = int(sizes[0])
            own_mean = tuple(getattr(transforms, "mean", own_mean))
            own_std = tuple(getattr(transforms, "std", own_std))
        except Exception:  # a builder without a weights enum: ImageNet's 224, mean and std
            pass
    mode = "short_side" if arch.task == "segmentation" else "square"
    return Preprocess(mode, int(size or own_size), tuple(mean or own_mean), tuple(std or own_std))


def _fingerprint(entry: dict, classes: tuple[str, ...], checkpoint_sha: str, source: str) -> str:
    text = json.dumps({"entry": entry, "classes": classes, "sha": checkpoint_sha, "source": source},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- one entry


def entry_spec(key: str, entry: Any, folder: Path, source: str, reserved: tuple[str, ...] = ()) -> ModelSpec:
    """The ModelSpec of one entry, or EntryError saying (in one line) what is wrong with it."""
    if key in reserved:
        raise EntryError(f"'{key}' is a built-in model's key: choose another")
    if not key.strip():
        raise EntryError("empty key")
    if not isinstance(entry, dict):
        raise EntryError("must be a table: [models.<key>] with arch, weights and classes")
    unknown = [k for k in entry if k not in SETTINGS]
    if unknown:
        raise EntryError(f"unknown setting '{unknown[0]}' (known: {', '.join(SETTINGS)})")
    code = _model_code(key, entry.get("short"))
    arch = _parse_arch(entry.get("arch"))
    task = entry.get("task")
    if task is not None and task not in TASKS:
        raise EntryError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if task is not None and task != arch.task:
        raise EntryError(f"task '{task}' disagrees with {arch.text}, a {arch.task} model")
    size = entry.get("input_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 4096):
        raise EntryError(f"input_size must be a whole number of pixels between 16 and 4096, not {size!r}")
    mean, std = _triple(entry.get("mean"), "mean"), _triple(entry.get("std"), "std")
    classes, classes_where = _classes(folder, entry.get("classes"))
    if arch.task == "detection" and classes[0].lower() not in (BACKGROUND, "background"):
        classes = (BACKGROUND, *classes)  # torchvision counts the background as class 0
    if "weights" not in entry:
        raise EntryError("no weights: give weights = \"<checkpoint file>\" (.pth/.pt/.safetensors)")
    checkpoint = _file(folder, entry.get("weights"), "weights")

    probe = _build_meta(arch, len(classes), None)
    vit = arch.library == "timm" and _is_timm_vit(probe)
    img_size = size if vit else None  # a ViT's position embeddings are built for its input size
    raw = _build_meta(arch, len(classes), img_size) if img_size else probe
    patch = 16
    if vit:
        embed: Any = raw.patch_embed
        ps = embed.patch_size
        patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        if isinstance(ps, (tuple, list)) and len(set(ps)) != 1:
            raise EntryError(f"{arch.text} has non-square patches {tuple(ps)}: not supported")
    layers, default_layer = _layers(arch, raw, entry.get("layers"), entry.get("default_layer"))
    preprocess = _preprocess(arch, raw, size, mean, std)
    if vit and preprocess.size % patch:
        raise EntryError(f"input_size {preprocess.size} is not a multiple of the patch size {patch}")

    # The checkpoint, shapes only (memory-mapped), against the architecture built for these classes.
    try:
        state = weights_mod.read_state_dict(checkpoint, mmap=True)
    except CamError as exc:
        raise EntryError(first_line(exc)) from None
    no_aux = arch.task == "segmentation" and getattr(raw, "aux_classifier", None) is None
    optional = ("aux_classifier.",) if no_aux else ()
    shapes = raw.state_dict()
    problem = weights_mod.fit_problem(shapes, state, optional)
    if problem:
        classes_problem = _class_count_problem(arch, len(classes), img_size, shapes, state)
        if vit and "'pos_embed'" in problem:  # the usual cause: an input_size it was not trained at
            problem += (" (a ViT's position embeddings fix its input size: set input_size to the size "
                        "it was trained at)")
        raise EntryError(classes_problem
                         or f"checkpoint {checkpoint.name} does not fit {arch.text}: {problem}")
    del state

    sha = weights_mod.file_sha256(checkpoint)
    extra = f", input {preprocess.size}"
    if vit:
        extra += f", patch {patch}, {raw.num_prefix_tokens} prefix token(s) dropped"
    return ModelSpec(
        key=key,
        label=str(entry.get("label") or f"{key} ({arch.text})"),
        task=arch.task,
        family="vit" if vit else "cnn",
        build=functools.partial(_build_model, arch, len(classes), img_size),
        weights=weights_mod.CheckpointWeights(checkpoint, key, optional=optional,
                                              inner="model" if arch.task == "segmentation" else None),
        preprocess=preprocess,
        class_names=_Names(classes),
        layers=layers,
        default_layer=default_layer,
        description=str(entry.get("description") or
                        f"{arch.text} with {len(classes)} classes from {checkpoint.name}{extra} "
                        f"(models file {source})"),
        patch_size=patch,
        arch=arch.text,
        source=source,
        classes_file=classes_where,
        fingerprint=_fingerprint(entry, classes, sha, source),
        short=code,
    )
