"""FiftyOne I/O: datasets, views, samples, pushing heatmaps and findings, the App link.

Never imports streamlit. Every failure the user can cause comes out as a
:class:`~camcore.errors.StoreError` (or :class:`~camcore.errors.ImageError`) whose
message is one line.

Field naming convention
-----------------------
A heatmap lives in the sample field ``cam_<model>_<method>_<layer>_<target>[_<variant>]``
(:func:`heatmap_field_name`), where the variant (:func:`field_variant`) is ``aug``, ``eigen``,
``untrained`` and/or a weights file's stem for maps made with aug_smooth, eigen_smooth, untrained
weights or a checkpoint the user chose, so such a map never replaces the plain one of the model's
own weights. Each part is lowercased, ``+`` becomes ``p`` (gradcam++ ->
gradcampp, kept apart from gradcam), every other run of characters outside ``[a-z0-9]``
becomes one ``_``; names longer than :data:`MAX_FIELD_LEN` are cut and end
in ``_<8 hex of a hash>``. The field is an ``fo.Heatmap`` field whose map is a 16-bit
grayscale PNG (``range=[0, 65535]``) under ``<heatmaps dir>/<dataset>/<field>/<id>.png``;
the label carries provenance attributes (model, weights, method, layer, target,
raw_min/raw_max, created_at, package versions...).

Fields we create are marked in their FiftyOne field info,
``info={"cam_explorer": {"kind": "heatmap", "model": ..., "method": ..., "layer": ...,
"target": ..., ["variant": ...]}}``, and listed in ``dataset.info["cam_explorer"]["fields"]``. A push never
touches a field that is not marked ours, is not a Heatmap field, or is ours but means
something else (two names that sanitise alike): it raises and writes nothing.

Findings are ``fo.Classification`` labels in the ``fo.Classifications`` field
:data:`FINDINGS_FIELD`, plus a sample tag ``cam:<finding>``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import importlib.metadata
import os
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import fiftyone as fo
import numpy as np
import pymongo.errors
from fiftyone import ViewField as F
from fiftyone.core.odm.dataset import ActiveFields  # not re-exported at the top level in 1.22

from camcore import paths
from camcore.errors import CamError, ImageError, StoreError, first_line
from camcore.results import CamResult, Heatmap

FIELD_PREFIX = "cam_"
MAX_FIELD_LEN = 64
MARK = "cam_explorer"  # key in field info and dataset info that marks what we own
FINDINGS_FIELD = "cam_findings"
FINDING_TAG_PREFIX = "cam:"
FINDING_TAGS = ("background bias", "misclassification", "good focus", "spurious edges")
HEATMAP_RANGE = (0, 65535)
DEFAULT_APP_PORT = 5151
_WRITE_THREADS = 8

# FiftyOne datasets and samples are process-wide singletons without locks, and Streamlit
# runs every session on its own thread: serialise every write (re-entrant: helpers nest).
_LOCK = threading.RLock()
_SESSION: Any = None  # the one FiftyOne App session this process serves


def _database_where() -> str:
    uri = fo.config.database_uri
    # Never echo a password from the URI into the UI.
    return re.sub(r"//[^@/]+@", "//***@", uri) if uri else "FiftyOne's own mongod"


def _db_errors(fn):
    """Turn database/driver failures into StoreError; let our own errors through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CamError:
            raise
        except Exception as exc:  # pymongo, mongoengine and FiftyOne raise many types
            root = type(exc).__module__.split(".")[0]
            unreachable = isinstance(exc, pymongo.errors.ConnectionFailure) or "Could not connect" in str(exc)
            if unreachable:
                reason = re.split(r" \(configured|, Timeout:", first_line(exc))[0]
                raise StoreError(
                    f"cannot reach the FiftyOne database ({_database_where()}): {reason}; "
                    "is MongoDB running, is FIFTYONE_DATABASE_URI right?") from exc
            if root in ("pymongo", "mongoengine", "fiftyone", "motor") or isinstance(
                exc, (ConnectionError, TimeoutError)
            ):
                raise StoreError(f"FiftyOne database error in {fn.__name__}: {first_line(exc)}") from exc
            raise

    return wrapper


# ---------------------------------------------------------------- datasets and samples


@_db_errors
def list_datasets() -> list[str]:
    """Names of all FiftyOne datasets in the database, sorted."""
    return sorted(fo.list_datasets())


@_db_errors
def load_dataset(name: str) -> fo.Dataset:
    """Load a dataset by name; an unknown name raises StoreError naming the known ones."""
    names = list_datasets()
    if name not in names:
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        raise StoreError(f"no FiftyOne dataset named {name!r}; available: {shown or '(none)'}")
    return fo.load_dataset(name)


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


@_db_errors
def make_view(
    dataset: fo.Dataset | fo.DatasetView,
    tags: str | Iterable[str] | None = None,
    label_field: str | None = None,
    label: str | None = None,
    filename_contains: str | None = None,
) -> fo.DatasetView:
    """The one resolver for "which samples": every filter given must hold.

    tags: samples with any of these tags. label_field: samples where that label field is
    set. label: samples with a label of that name (in label_field, or in any label field).
    filename_contains: case-insensitive substring of the file's basename.
    """
    view = dataset.view()
    tag_list = [t for t in _as_list(tags) if t]
    if tag_list:
        view = view.match_tags(tag_list)
    if label_field:
        if label_field not in view.get_field_schema():
            known = ", ".join(sorted(view.get_field_schema(embedded_doc_type=fo.Label))) or "(none)"
            raise StoreError(f"no field {label_field!r} in {_root(view).name!r}; label fields: {known}")
        view = view.exists(label_field)
    if label:
        fields = label_field if label_field else None
        view = view.match_labels(filter=F("label") == label, fields=fields)
    if filename_contains:
        basename = F("filepath").rsplit("/", 1)[-1]
        view = view.match(basename.contains_str(filename_contains, case_sensitive=False))
    return view


@_db_errors
def sample_ids(view: fo.Dataset | fo.DatasetView) -> list[str]:
    """The sample ids of a dataset or view, in its order."""
    return list(view.values("id"))


_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")


@_db_errors
def get_sample(dataset_or_view: fo.Dataset | fo.DatasetView, id_or_filename: str) -> fo.Sample:
    """A sample by id, by full filepath, or by the end of its path (a file name, or
    ``folder/name.jpg``), which must be unique."""
    coll = dataset_or_view
    key = str(id_or_filename).strip()
    if _OBJECT_ID.match(key):
        try:
            return coll[key]
        except KeyError:
            pass  # not an id here: it may still be a file name
    found = coll.match(F("filepath") == os.path.abspath(key)) if os.path.isabs(key) else None
    if found is None or not len(found):
        # A relative path names the end of the filepath (never the caller's working directory).
        rel = key.replace(os.sep, "/")
        while rel.startswith("./"):
            rel = rel[2:]
        found = coll.match(F("filepath").ends_with("/" + rel))
    count = len(found)
    if count == 1:
        return found.first()
    if count > 1:
        raise StoreError(f"{count} samples in {_root(coll).name!r} are named {key!r}; use the sample id")
    raise StoreError(f"no sample {key!r} in {_root(coll).name!r} (looked by id, filepath and file name)")


def require_image(sample_or_collection: fo.Sample | fo.Dataset | fo.DatasetView) -> None:
    """Raise StoreError unless this is an image sample / image dataset."""
    media_type = sample_or_collection.media_type
    what = "sample" if isinstance(sample_or_collection, fo.Sample) else "dataset"
    if media_type is None and what == "dataset":  # FiftyOne sets it with the first sample
        raise StoreError("this dataset has no samples yet: add images to it, or pick another dataset")
    if media_type != "image":
        raise StoreError(f"CAM Explorer works on images, but this {what} holds {media_type!r} media")


def sample_image_path(sample: fo.Sample) -> str:
    """Absolute path of the sample's image; StoreError for non-images, ImageError if missing."""
    require_image(sample)
    path = sample.filepath
    if not os.path.isfile(path):
        raise ImageError(f"image file of sample {sample.id} is missing: {path} "
                         "(moved or deleted? fix the sample's filepath, or pick another sample)")
    return path


def _root(dataset: fo.Dataset | fo.DatasetView) -> fo.Dataset:
    return dataset if isinstance(dataset, fo.Dataset) else dataset._root_dataset


# ---------------------------------------------------------------- field names


def _sanitise(part: str) -> str:
    # "+" carries meaning in method names (gradcam vs gradcam++): keep it as "p", like c++ -> cpp.
    text = re.sub(r"[^a-z0-9]+", "_", str(part).lower().replace("+", "p")).strip("_")
    # Names with no ASCII letters/digits (e.g. non-Latin class names) still need a stable part.
    return text or "x" + hashlib.sha1(str(part).encode()).hexdigest()[:6]


def field_variant(*, aug_smooth: bool = False, eigen_smooth: bool = False, pretrained: bool = True,
                  weights_tag: str = "") -> str:
    """The field-name suffix of maps that are not the model's own weights' plain map ("" for
    those): smoothing, untrained weights, or a weights file the user chose (its stem)."""
    return "_".join(part for part, on in (("aug", aug_smooth), ("eigen", eigen_smooth),
                                          ("untrained", not pretrained), (weights_tag, bool(weights_tag))) if on)


def heatmap_variant(result: CamResult, h: Heatmap) -> str:
    return field_variant(aug_smooth=h.aug_smooth, eigen_smooth=h.eigen_smooth, pretrained=result.pretrained,
                         weights_tag=result.weights_tag)


def field_of(result: CamResult, h: Heatmap) -> str:
    """The field push_heatmaps writes this heatmap of this result into."""
    return heatmap_field_name(result.model, h.method, h.layer, h.target.name, heatmap_variant(result, h))


def heatmap_field_name(model: str, method: str, layer: str, target: str, variant: str = "") -> str:
    """``cam_<model>_<method>_<layer>_<target>[_<variant>]``, sanitised to [a-z0-9_], at most
    MAX_FIELD_LEN."""
    parts = (model, method, layer, target) + ((variant,) if variant else ())
    name = FIELD_PREFIX + "_".join(_sanitise(p) for p in parts)
    name = re.sub(r"_+", "_", name)
    if len(name) > MAX_FIELD_LEN:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name[: MAX_FIELD_LEN - 9].rstrip("_") + "_" + digest
    return name


def _dataset_dirname(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"
    # Different names may sanitise alike; a hash keeps their folders apart.
    return clean if clean == name else f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def heatmap_path(
    dataset_name: str, field: str, sample_id: str, heatmap_dir: str | Path | None = None
) -> Path:
    """Absolute path of the PNG for one sample's heatmap in one field."""
    base = Path(heatmap_dir).expanduser().resolve() if heatmap_dir else paths.heatmaps_dir()
    return base / _dataset_dirname(dataset_name) / field / f"{sample_id}.png"


# ---------------------------------------------------------------- pushing heatmaps


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _versions() -> dict[str, str]:
    out = {"camcore": str(getattr(sys.modules.get("camcore"), "__version__", "unknown"))}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"),
                      ("pytorch_grad_cam", "grad-cam"), ("timm", "timm")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def _meaning(model: str, method: str, layer: str, target: str, variant: str = "") -> dict[str, str]:
    meaning = {"kind": "heatmap", "model": model, "method": method, "layer": layer, "target": target}
    return {**meaning, "variant": variant} if variant else meaning  # fields made before variants match


def _check_field(dataset: fo.Dataset, field: str, meaning: dict[str, str]) -> bool:
    """True if the field exists and is ours with this meaning, False if absent; else raise."""
    existing = dataset.get_field(field)
    if existing is None:
        return False
    doc_type = getattr(existing, "document_type", None)
    if not (isinstance(existing, fo.EmbeddedDocumentField) and doc_type and issubclass(doc_type, fo.Heatmap)):
        raise StoreError(
            f"field {field!r} of {dataset.name!r} exists and is not a Heatmap field; not overwriting it")
    mark = (existing.info or {}).get(MARK)
    if not isinstance(mark, dict):
        raise StoreError(
            f"field {field!r} of {dataset.name!r} was not created by CAM Explorer; not overwriting it")
    if any(mark.get(k) != v for k, v in meaning.items()) or mark.get("variant", "") != meaning.get("variant", ""):
        raise StoreError(
            f"field {field!r} already holds {mark.get('method')} on {mark.get('layer')} of "
            f"{mark.get('model')} for {mark.get('target')!r}; names collide after sanitising"
        )
    return True


def _validated_map(h: Heatmap, result: CamResult, meta: Any) -> np.ndarray:
    m = np.asarray(h.map)
    if m.ndim != 2 or m.size == 0:
        raise ImageError(f"heatmap {h.label} is not a 2-D map (shape {m.shape})")
    if not np.issubdtype(m.dtype, np.floating) or not np.all(np.isfinite(m)):
        raise ImageError(f"heatmap {h.label} must hold finite floats in 0..1")
    image_size = result.image_size
    if tuple(m.shape) != tuple(image_size):
        raise ImageError(f"heatmap {h.label} is {m.shape[0]}x{m.shape[1]}, "
                         f"the image is {image_size[0]}x{image_size[1]}")
    m = result.full_map(h)  # a downscaled huge image's map, back at the file's size
    size = f"{m.shape[0]}x{m.shape[1]}"
    # The sample's own size, when known. FiftyOne's metadata (like the App) is EXIF-upright, so
    # a map in the stored orientation of a rotated JPEG would not line up: refused.
    if meta is not None and meta.width and meta.height:
        if tuple(m.shape) != (meta.height, meta.width):
            raise ImageError(f"heatmap {h.label} is {size}, the sample is {meta.height}x{meta.width} "
                             "(height x width, as the App shows it)")
    return np.round(np.clip(m.astype(np.float64), 0.0, 1.0) * HEATMAP_RANGE[1]).astype(np.uint16)


def _label(
    result: CamResult, h: Heatmap, map_path: Path, created_at: str, versions: dict, extra: dict | None = None
) -> fo.Heatmap:
    return fo.Heatmap(
        **(extra or {}),
        map_path=str(map_path),
        range=list(HEATMAP_RANGE),
        model=result.model,
        weights=result.weights,
        pretrained=bool(result.pretrained),
        method=h.method,
        layer=h.layer,
        target=h.target.name,
        target_index=int(h.target.index),
        target_rule=h.target.rule,
        aug_smooth=bool(h.aug_smooth),
        eigen_smooth=bool(h.eigen_smooth),
        raw_min=float(h.raw_range[0]),
        raw_max=float(h.raw_range[1]),
        blank=bool(h.blank),  # zero everywhere: the App draws nothing, and this says why
        created_at=created_at,
        versions=versions,
    )


def _write_png_atomic(path: Path, image: np.ndarray) -> None:
    # Write beside the target then rename: a crash never leaves a half-written PNG.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
        os.close(fd)
    except OSError as exc:
        raise ImageError(f"cannot write heatmaps under {path.parent}: {exc.strerror or exc}") from exc
    try:
        try:
            ok, png = cv2.imencode(".png", image)
        except cv2.error as exc:
            raise ImageError(f"could not write heatmap PNG {path}: {first_line(exc)}") from exc
        if not ok:
            raise ImageError(f"could not write heatmap PNG {path}")
        # Not cv2.imwrite: on a full disk it returns True and leaves an empty file.
        try:
            with open(tmp, "wb") as f:
                f.write(png.tobytes())
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ImageError(f"could not write heatmap PNG {path}: {exc.strerror or exc}") from exc
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_pngs(files: Sequence[tuple[Path, np.ndarray]]) -> None:
    """Write many PNGs atomically, in threads: PNG encoding and fsync release the GIL, and on a
    GPU machine they would otherwise take longer than computing the maps. Every write finishes
    (or fails) before this returns; the first error is raised."""
    if len(files) <= 1:
        for path, png in files:
            _write_png_atomic(path, png)
        return
    with ThreadPoolExecutor(max_workers=min(_WRITE_THREADS, len(files))) as pool:
        futures = [pool.submit(_write_png_atomic, path, png) for path, png in files]
    for future in futures:
        future.result()


@_db_errors
def push_heatmaps(
    dataset: fo.Dataset,
    sample_id: str,
    result: CamResult,
    heatmaps: Sequence[Heatmap] | None = None,
    heatmap_dir: str | Path | None = None,
) -> list[str]:
    """Write heatmaps of `result` for one sample as PNGs + Heatmap fields; return the field names.

    The field of each heatmap is ``heatmap_field_name(result.model, h.method, h.layer,
    h.target.name, heatmap_variant(result, h))``. Everything is validated before anything is written; pushing the same
    heatmap again replaces the field value and the file.
    """
    dataset = _root(dataset)
    chosen = list(result.heatmaps if heatmaps is None else heatmaps)
    if not chosen:
        raise StoreError("nothing to push: the result holds no heatmaps")
    for h in chosen:
        if not any(h is r for r in result.heatmaps):
            raise StoreError(f"heatmap {h.label} is not part of this result; push it with its own result")
    with _LOCK:
        sample = get_sample(dataset, sample_id)
        require_image(sample)
        return push_many(dataset, [(sample.id, dataclasses.replace(result, heatmaps=tuple(chosen)))],
                         heatmap_dir=heatmap_dir)


# The attributes every heatmap label carries (see _label). They are declared with the field, so
# that writers in several processes never race to extend the field's schema.
LABEL_ATTRIBUTES: dict[str, type[fo.Field]] = {
    "model": fo.StringField, "weights": fo.StringField, "pretrained": fo.BooleanField,
    "method": fo.StringField, "layer": fo.StringField, "target": fo.StringField,
    "target_index": fo.IntField, "target_rule": fo.StringField, "aug_smooth": fo.BooleanField,
    "eigen_smooth": fo.BooleanField, "raw_min": fo.FloatField, "raw_max": fo.FloatField, "blank": fo.BooleanField,
    "created_at": fo.StringField, "versions": fo.DictField,
}


def _field_type_of(value: Any) -> type[fo.Field]:
    for py, ftype in ((bool, fo.BooleanField), (int, fo.IntField), (float, fo.FloatField), (str, fo.StringField)):
        if isinstance(value, py):
            return ftype
    raise StoreError(f"cannot store a label attribute of type {type(value).__name__}")


def _description(model: str, method: str, layer: str, target: str, variant: str = "") -> str:
    how = f" ({variant.replace('_', ', ')})" if variant else ""
    return (f"CAM Explorer: {method} on {layer} of {model} for {target!r}{how} "
            "(16-bit PNG, 0..65535 = 0..1 of the min-max scaled CAM)")


def declare_heatmap_field(
    dataset: fo.Dataset, model: str, method: str, layer: str, target: str, extra: dict | None = None,
    variant: str = "",
) -> str:
    """Create (or check) the Heatmap field for (model, method, layer, target) with every label
    attribute declared, and list it in dataset.info; return its name. Raises StoreError for a
    field that is not ours or means something else. Idempotent."""
    dataset = _root(dataset)
    field = heatmap_field_name(model, method, layer, target, variant)
    meaning = _meaning(model, method, layer, target, variant)
    description = _description(model, method, layer, target, variant)
    with _LOCK:
        if not _check_field(dataset, field, meaning):
            dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Heatmap,
                                     description=description, info={MARK: meaning})
        declared = dataset.get_field(field).get_field_schema()
        wanted = {**LABEL_ATTRIBUTES, **{k: _field_type_of(v) for k, v in (extra or {}).items()}}
        for name, ftype in wanted.items():
            if name not in declared:
                dataset.add_sample_field(f"{field}.{name}", ftype)
        info = dict(dataset.info or {})
        ours = dict(info.get(MARK) or {})
        before = dict(ours.get("fields") or {})
        # Fields deleted or renamed outside CAM Explorer leave the registry.
        schema = dataset.get_field_schema()
        registry = {name: entry for name, entry in before.items() if name in schema}
        registry[field] = {**meaning, "description": description}
        if registry != before:
            info[MARK] = {**ours, "fields": registry}
            dataset.info = info
            dataset.save()
        _show_in_app(dataset, [field])
    return field


@_db_errors
def push_many(
    dataset: fo.Dataset,
    items: Sequence[tuple[str, CamResult]],
    target_label: str | None = None,
    extra: dict | None = None,
    heatmap_dir: str | Path | None = None,
) -> list[str]:
    """Write every heatmap of several samples' results with one ``set_values`` per field.

    items: (sample_id, result) pairs. target_label: the target part of the field names
    (e.g. ``"predicted"``: one field whatever class each sample was explained for; the class
    is still each label's ``target`` attribute); None uses each heatmap's class name as
    :func:`push_heatmaps` does. extra: more attributes for every label (provenance).
    Everything is validated first, then every PNG is written (atomically), then the fields:
    a crash in between leaves files no field points at, never a field without its file.
    """
    dataset = _root(dataset)
    if not items:
        return []
    with _LOCK:
        require_image(dataset)
        ids = [sid for sid, _r in items]
        metas = dict(zip(*dataset.select(ids).values(["id", "metadata"])))
        # field -> (model, method, layer, target, variant), [(sid, result, h, png, path)]
        per_field: dict[str, tuple[tuple[str, str, str, str, str], list]] = {}
        for sid, result in items:
            if sid not in metas:
                raise StoreError(f"no sample {sid!r} in {dataset.name!r}")
            for h in result.heatmaps:
                target = h.target.name if target_label is None else target_label
                variant = heatmap_variant(result, h)
                field = heatmap_field_name(result.model, h.method, h.layer, target, variant)
                if field not in per_field:  # checked once per field, not per sample
                    key = (result.model, h.method, h.layer, target, variant)
                    _check_field(dataset, field, _meaning(*key))
                    per_field[field] = (key, [])
                rows = per_field[field][1]
                if any(r[0] == sid for r in rows):
                    raise StoreError(f"two heatmaps of sample {sid} map to the same field {field!r}")
                png = _validated_map(h, result, metas[sid])
                rows.append((sid, result, h, png, heatmap_path(dataset.name, field, sid, heatmap_dir)))
        created_at = _now()
        versions = _versions()
        _write_pngs([(path, png) for _k, rows in per_field.values() for _s, _r, _h, png, path in rows])
        for field, (key, rows) in per_field.items():
            declare_heatmap_field(dataset, *key[:4], extra=extra, variant=key[4])
            values = {sid: _label(r, h, path, created_at, versions, extra) for sid, r, h, _p, path in rows}
            # One bulk update keyed by id, not sample.save(); every attribute is declared already.
            dataset.set_values(field, values, key_field="id", dynamic=True)
    return list(per_field)


def _show_in_app(dataset: fo.Dataset, fields: list[str]) -> None:
    """Make our heatmap fields active (checked) in the App by default, drawn with jet like the app.

    The App leaves dense labels (heatmaps, masks) unchecked unless the dataset's app_config lists
    them. With no config yet we store FiftyOne's own default (every non-dense label field, the
    way the App shows a dataset) plus ours, so metadata and other fields stay off the grid. An
    exclusion list that only excludes other dense fields (as earlier versions wrote) is turned
    into that; any other list the user set is only extended with our fields.
    """
    config = dataset.app_config
    active = config.active_fields
    changed = False
    ours = list(dict.fromkeys([*heatmap_fields(dataset), *fields])) if active is None or active.exclude else []
    if active is None or (active.exclude and set(active.paths) <= _dense_fields(dataset) - set(ours)):
        default = fo.DatasetAppConfig.default_active_fields(dataset)
        paths = [p for p in default.paths if p not in ours] + ours
        config.active_fields = ActiveFields(exclude=False, paths=paths)
        changed = True
    elif active.exclude:
        if any(p in fields for p in active.paths):
            active.paths = [p for p in active.paths if p not in fields]
            changed = True
    elif not all(f in active.paths for f in fields):
        active.paths = list(active.paths) + [f for f in fields if f not in active.paths]
        changed = True
    scheme = config.color_scheme or fo.ColorScheme()
    scales = list(scheme.colorscales or [])
    styled = {c.get("path") for c in scales if isinstance(c, dict)}
    missing = [f for f in fields if f not in styled]
    if missing:  # the user's own colorscale for a field wins
        scheme.colorscales = scales + [{"path": f, "name": "jet"} for f in missing]
        config.color_scheme = scheme
        changed = True
    if changed:
        dataset.save()


def _dense_fields(dataset: fo.Dataset) -> set[str]:
    """Heatmap and Segmentation fields: the ones the App leaves unchecked by default."""
    return {name for name, f in dataset.get_field_schema().items()
            if isinstance(f, fo.EmbeddedDocumentField) and f.document_type
            and issubclass(f.document_type, (fo.Heatmap, fo.Segmentation))}


def heatmap_fields(dataset: fo.Dataset | fo.DatasetView) -> dict[str, dict]:
    """Our heatmap fields on this dataset: field name -> its meaning (model, method, ...)."""
    out = {}
    for name, field in _root(dataset).get_field_schema().items():
        mark = (getattr(field, "info", None) or {}).get(MARK)
        if isinstance(mark, dict) and mark.get("kind") == "heatmap":
            out[name] = dict(mark)
    return out


# ---------------------------------------------------------------- findings


def finding_tag(tag: str) -> str:
    """The sample tag for a finding: ``cam:`` + the tag lowercased, runs of other chars -> '-'."""
    clean = re.sub(r"[^a-z0-9]+", "-", str(tag).lower()).strip("-")
    if not clean:
        raise StoreError(f"finding tag {tag!r} has no letters or digits")
    return FINDING_TAG_PREFIX + clean


def _findings_field_ready(dataset: fo.Dataset) -> None:
    existing = dataset.get_field(FINDINGS_FIELD)
    if existing is None:
        dataset.add_sample_field(
            FINDINGS_FIELD, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications,
            description="CAM Explorer findings: notes on what a heatmap shows",
            info={MARK: {"kind": "findings"}},
        )
        return
    doc_type = getattr(existing, "document_type", None)
    if not (doc_type and issubclass(doc_type, fo.Classifications)) or MARK not in (existing.info or {}):
        raise StoreError(
            f"field {FINDINGS_FIELD!r} of {dataset.name!r} exists and is not CAM Explorer's findings field")


@_db_errors
def add_finding(
    dataset: fo.Dataset, sample_id: str, tag: str, note: str = "", heatmap_field: str | None = None
) -> None:
    """Tag the sample ``cam:<tag>`` and append a Classification(label=tag, note, ...) to cam_findings."""
    dataset = _root(dataset)
    tag = str(tag).strip()
    sample_tag = finding_tag(tag)
    with _LOCK:
        sample = get_sample(dataset, sample_id)
        sample.reload()  # another process may have added findings or tags since we loaded it
        if heatmap_field is not None and dataset.get_field(heatmap_field) is None:
            raise StoreError(f"no field {heatmap_field!r} in {dataset.name!r} to attach the finding to")
        _findings_field_ready(dataset)
        finding = fo.Classification(label=tag, note=note, heatmap_field=heatmap_field, created_at=_now())
        current = sample[FINDINGS_FIELD]
        labels = list(current.classifications) if current is not None else []
        tags = list(sample.tags) + ([sample_tag] if sample_tag not in sample.tags else [])
        # Bulk updates keyed by id (what set_values does fastest); no sample.save().
        value = fo.Classifications(classifications=labels + [finding])
        dataset.set_values(FINDINGS_FIELD, {sample.id: value}, key_field="id", dynamic=True)
        dataset.set_values("tags", {sample.id: tags}, key_field="id")


@_db_errors
def list_findings(dataset: fo.Dataset | fo.DatasetView) -> list[dict]:
    """All findings, oldest first per sample.

    Each: sample_id, filepath, tag, note, heatmap_field, created_at, id (of the label).
    """
    coll = dataset
    if coll.get_field(FINDINGS_FIELD) is None:
        return []
    ids, paths_, lists = coll.values(["id", "filepath", FINDINGS_FIELD + ".classifications"])
    out = []
    for sid, path, labels in zip(ids, paths_, lists):
        for c in labels or []:
            out.append({
                "sample_id": sid, "filepath": path, "tag": c.label, "note": _attr(c, "note", ""),
                "heatmap_field": _attr(c, "heatmap_field"), "created_at": _attr(c, "created_at"), "id": c.id,
            })
    return out


def _attr(label: fo.Label, name: str, default: Any = None) -> Any:
    try:
        value = label[name]
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


# ---------------------------------------------------------------- the FiftyOne App


def app_url(dataset_name: str, sample_id: str | None = None, port: int = DEFAULT_APP_PORT) -> str:
    """URL of the dataset in the FiftyOne App; with sample_id it opens that sample's modal.

    The App (1.22) routes ``/datasets/:name`` and keeps the open sample in ``?id=``.
    """
    url = f"http://localhost:{int(port)}/datasets/{urllib.parse.quote(dataset_name, safe='')}"
    if sample_id:
        url += "?" + urllib.parse.urlencode({"id": sample_id})
    return url


@_db_errors
def launch_app(
    dataset: fo.Dataset | fo.DatasetView, port: int = DEFAULT_APP_PORT, sample_id: str | None = None
) -> fo.Session:
    """Serve the FiftyOne App on localhost:port showing `dataset`; open it at :func:`app_url`.

    One App per process: a second call on the same port retargets the running session
    (cheap, no new server); another port closes the old one first.
    """
    global _SESSION
    with _LOCK:
        if _SESSION is not None and _SESSION.server_port == port:
            _retarget(_SESSION, dataset)
            return _SESSION
        close_app()
        _SESSION = fo.launch_app(
            dataset, port=port, address="localhost", remote=True, auto=False, sample_id=sample_id
        )
        return _SESSION


def _retarget(session: fo.Session, dataset: fo.Dataset | fo.DatasetView, timeout: float = 25.0) -> None:
    # The session's event client connects in the background and, after a miss, retries
    # every 10 s; changing the dataset before it is connected raises RuntimeError.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if isinstance(dataset, fo.DatasetView):
                session.view = dataset
            else:
                session.dataset = dataset
            return
        except RuntimeError as exc:
            if "not connected" not in str(exc) or time.monotonic() > deadline:
                raise StoreError(
                    f"the FiftyOne App on port {session.server_port} is not answering: {exc}") from exc
            time.sleep(0.25)


def app_session() -> fo.Session | None:
    """The App session this process serves (launch_app), or None: its view and selection are
    views the explorer offers."""
    return _SESSION


def close_app() -> None:
    """Stop the App server this process started, if any."""
    global _SESSION
    with _LOCK:
        session, _SESSION = _SESSION, None
        if session is not None:
            session.close()


# ---------------------------------------------------------------- label filters for views

_LABEL_TYPES = (fo.Classification, fo.Classifications, fo.Detection, fo.Detections)


@_db_errors
def label_fields(dataset: fo.Dataset | fo.DatasetView) -> list[str]:
    """Label fields a view can filter on (classifications and detections), ours excluded."""
    out = []
    for name, field in dataset.get_field_schema().items():
        doc_type = getattr(field, "document_type", None)
        if doc_type and issubclass(doc_type, _LABEL_TYPES) and name != FINDINGS_FIELD:
            out.append(name)
    return sorted(out)


@_db_errors
def label_values(dataset: fo.Dataset | fo.DatasetView, field: str) -> list[str]:
    """The distinct label names in a label field."""
    doc_type = getattr(dataset.get_field(field), "document_type", None)
    if doc_type is None:
        raise StoreError(f"no label field {field!r} in {_root(dataset).name!r}")
    path = {fo.Classifications: ".classifications", fo.Detections: ".detections"}.get(doc_type, "")
    return sorted(str(v) for v in dataset.distinct(f"{field}{path}.label"))


@_db_errors
def boxes_by_sample(view: fo.Dataset | fo.DatasetView, field: str, label: str) -> dict[str, list[list[float]]]:
    """Relative [x, y, w, h] boxes of `label` in a Detections field, per sample id."""
    doc_type = getattr(view.get_field(field), "document_type", None)
    if doc_type is not fo.Detections:
        raise StoreError(f"field {field!r} holds no detections (boxes)")
    ids, dets = view.values(["id", f"{field}.detections"])
    out: dict[str, list[list[float]]] = {}
    for sid, ds in zip(ids, dets):
        boxes = [list(d.bounding_box) for d in ds or [] if d.label == label and d.bounding_box]
        if boxes:
            out[sid] = boxes
    return out


def segmentation_fields(dataset: fo.Dataset | fo.DatasetView) -> list[str]:
    """fo.Segmentation fields (object masks), ours excluded (we write Heatmaps only)."""
    return sorted(name for name, f in dataset.get_field_schema().items()
                  if getattr(f, "document_type", None) is fo.Segmentation)


def _mask_targets(dataset: fo.Dataset | fo.DatasetView, field: str) -> dict[int, str]:
    root = _root(dataset)
    targets = (root.mask_targets or {}).get(field) or root.default_mask_targets or {}
    return {int(k): str(v) for k, v in targets.items() if str(k).isdigit()}


@_db_errors
def segmentation_labels(dataset: fo.Dataset | fo.DatasetView, field: str, scan: int = 50) -> list[str]:
    """The class names of a Segmentation field: its mask targets, or else the values found in the
    first `scan` masks (as strings)."""
    if getattr(dataset.get_field(field), "document_type", None) is not fo.Segmentation:
        raise StoreError(f"field {field!r} holds no segmentation masks")
    targets = _mask_targets(dataset, field)
    if targets:
        return [targets[k] for k in sorted(targets)]
    found: set[int] = set()
    for seg in dataset.limit(scan).values(field):
        mask = _read_mask(seg)
        if mask is not None:
            found.update(int(v) for v in np.unique(mask))
    return [str(v) for v in sorted(found)]


def _read_mask(seg: fo.Segmentation | None) -> np.ndarray | None:
    """A 2-D integer mask from `mask` or `mask_path`; None when absent or unreadable (RGB masks,
    whose classes are colours, are not read)."""
    if seg is None:
        return None
    try:
        mask = seg.get_mask()
    except Exception:  # a missing or broken mask file: no mask for that sample, not a crash
        return None
    if mask is None or np.ndim(mask) != 2:
        return None
    return np.asarray(mask)


@_db_errors
def segmentation_masks_by_sample(view: fo.Dataset | fo.DatasetView, field: str, label: str) -> dict[str, np.ndarray]:
    """Boolean masks of class `label` (a mask-target name, or a pixel value) per sample id, at each
    mask's own resolution; samples without a readable mask are left out."""
    if getattr(view.get_field(field), "document_type", None) is not fo.Segmentation:
        raise StoreError(f"field {field!r} holds no segmentation masks")
    by_name = {v: k for k, v in _mask_targets(view, field).items()}
    if label in by_name:
        value = by_name[label]
    elif str(label).isdigit():
        value = int(label)
    else:
        raise StoreError(f"no class {label!r} in the mask targets of {field!r}")
    out = {}
    for sid, seg in zip(*view.values(["id", field])):
        mask = _read_mask(seg)
        if mask is not None:
            out[sid] = mask == value
    return out


@_db_errors
def read_heatmap(dataset: fo.Dataset | fo.DatasetView, sample_id: str, field: str) -> np.ndarray | None:
    """A stored heatmap as float32 0..1 (its PNG scaled by its range), or None when absent."""
    sample = get_sample(dataset, sample_id)
    label = sample[field] if sample.has_field(field) else None
    if not isinstance(label, fo.Heatmap) or not label.has_map:
        return None
    raw = label.get_map()
    if raw is None:
        return None
    lo, hi = label.range if label.range else (0, 65535 if raw.dtype == np.uint16 else 255)
    return np.clip((raw.astype(np.float32) - lo) / max(1e-12, hi - lo), 0, 1)
