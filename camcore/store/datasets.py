"""Datasets, samples and the labels they already hold; the store's shared lock and error edge.

Every failure the user can cause comes out as a :class:`~camcore.errors.StoreError` (or
:class:`~camcore.errors.ImageError`) whose message is one line: :func:`db_errors` turns the
database's and FiftyOne's own exceptions into one.
"""
from __future__ import annotations

import datetime as _dt
import functools
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import ParamSpec, TypeVar

import fiftyone as fo
import fiftyone.core.dataset as fod
import numpy as np
import pymongo.errors
from fiftyone import ViewField as F

from camcore.errors import CamError, ImageError, StoreError, first_line

MARK = "cam_explorer"  # key in field info and dataset info that marks what we own
FINDINGS_FIELD = "cam_findings"  # written by findings.py; label filters leave it out

# FiftyOne datasets and samples are process-wide singletons without locks, and Streamlit
# runs every session on its own thread: serialise every write (re-entrant: helpers nest).
LOCK = threading.RLock()

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _database_where() -> str:
    uri = fo.config.database_uri
    # Never echo a password from the URI into the UI.
    return re.sub(r"//[^@/]+@", "//***@", uri) if uri else "FiftyOne's own mongod"


def db_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn database/driver failures into StoreError; let our own errors through."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
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


def utc_now() -> str:
    """The time stamp our labels carry: UTC, to the second, ``...Z``."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_utc(stamp: object) -> _dt.datetime | None:
    """A stamp as utc_now writes it, as an aware datetime; None for anything else (absent, edited)."""
    if not isinstance(stamp, str):
        return None
    try:
        return _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def datasets_collection():
    """FiftyOne's collection of dataset documents, for atomic updates of one entry of a dataset's
    info (FiftyOne's own save rewrites the whole dict from this process's copy)."""
    import fiftyone.core.odm as foo

    return foo.get_db_conn().datasets


def root_dataset(dataset_or_view: fo.Dataset | fo.DatasetView) -> fo.Dataset:
    """The dataset itself, for a dataset or any view of it."""
    if isinstance(dataset_or_view, fo.Dataset):
        return dataset_or_view
    return dataset_or_view._root_dataset


# ---------------------------------------------------------------- datasets and samples


@db_errors
def list_datasets() -> list[str]:
    """Names of all FiftyOne datasets in the database, sorted."""
    return sorted(fo.list_datasets())


@db_errors
def load_dataset(name: str) -> fo.Dataset:
    """Load a dataset by name; an unknown name raises StoreError naming the known ones (listed only
    then: every Ray shard and page load opens one by name, with hundreds of datasets beside it)."""
    try:
        return fo.load_dataset(name)
    except fod.DatasetNotFoundError:
        names = list_datasets()
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    raise StoreError(f"no FiftyOne dataset named {name!r}; available: {shown or '(none)'}")


@db_errors
def fresh_dataset(name: str) -> fo.Dataset:
    """The dataset as the database holds it now: :func:`load_dataset`, then its document (fields,
    info, app config) read again. FiftyOne keeps one in-process copy per dataset, loaded once: a
    field or info that another process (the App's plugin, the CLI, another explorer) added since
    is unknown to it (a findings field made elsewhere reads as "no findings"). One document read;
    no sample is read, so the cost does not grow with the dataset."""
    dataset = load_dataset(name)
    with LOCK:  # not while this process declares a field on the same copy
        dataset._reload(hard=True)
    return dataset


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


@db_errors
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
            raise StoreError(f"no field {label_field!r} in {root_dataset(view).name!r}; label fields: {known}")
        view = view.exists(label_field)
    if label:
        fields = label_field if label_field else None
        view = view.match_labels(filter=F("label") == label, fields=fields)
    if filename_contains:
        basename = F("filepath").rsplit("/", 1)[-1]
        view = view.match(basename.contains_str(filename_contains, case_sensitive=False))
    return view


@db_errors
def chosen_samples(dataset_or_view: fo.Dataset | fo.DatasetView, ids: Sequence[str]) -> fo.DatasetView:
    """These samples of the dataset (whatever view they were chosen in), in this order."""
    return root_dataset(dataset_or_view).select(list(ids), ordered=True)


@db_errors
def sample_ids(view: fo.Dataset | fo.DatasetView) -> list[str]:
    """The sample ids of a dataset or view, in its order."""
    return list(view.values("id"))


@db_errors
def ids_and_paths(view: fo.Dataset | fo.DatasetView) -> list[tuple[str, str]]:
    """(sample id, file path) of every sample of a small view, in its order."""
    ids, paths = view.values(["id", "filepath"])
    return list(zip(ids, paths, strict=True))


@db_errors
def distinct_tags(dataset: fo.Dataset | fo.DatasetView) -> list[str]:
    """The sample tags in use, sorted."""
    return sorted(str(t) for t in dataset.distinct("tags"))


_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")


@db_errors
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
    name = root_dataset(coll).name
    if count > 1:
        raise StoreError(f"{count} samples in {name!r} are named {key!r}; use the sample id")
    raise StoreError(f"no sample {key!r} in {name!r} (looked by id, filepath and file name)")


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


# ---------------------------------------------------------------- labels the dataset holds

_LABEL_TYPES = (fo.Classification, fo.Classifications, fo.Detection, fo.Detections)


@db_errors
def label_fields(dataset: fo.Dataset | fo.DatasetView) -> list[str]:
    """Label fields a view can filter on (classifications and detections), ours excluded."""
    out = []
    for name, field in dataset.get_field_schema().items():
        doc_type = getattr(field, "document_type", None)
        if doc_type and issubclass(doc_type, _LABEL_TYPES) and name != FINDINGS_FIELD:
            out.append(name)
    return sorted(out)


@db_errors
def detection_fields(dataset: fo.Dataset | fo.DatasetView) -> list[str]:
    """The label fields that hold detections (boxes)."""
    return [f for f in label_fields(dataset) if getattr(dataset.get_field(f), "document_type", None) is fo.Detections]


@db_errors
def label_values(dataset: fo.Dataset | fo.DatasetView, field: str) -> list[str]:
    """The distinct label names in a label field."""
    doc_type = getattr(dataset.get_field(field), "document_type", None)
    if doc_type is None:
        raise StoreError(f"no label field {field!r} in {root_dataset(dataset).name!r}")
    path = {fo.Classifications: ".classifications", fo.Detections: ".detections"}.get(doc_type, "")
    return sorted(str(v) for v in dataset.distinct(f"{field}{path}.label"))


def sample_with_label(view: fo.Dataset | fo.DatasetView, class_name: str, prefer: str | None = None) -> str | None:
    """The id of a sample in `view` with a label (classification or detection, any label field)
    named `class_name`, case-insensitive: `prefer` when it has one, else the view's first; None
    when none has."""
    fields = label_fields(view)
    if not fields:
        return None
    pattern = "^" + re.escape(class_name.strip()) + "$"
    try:
        matching = view.match_labels(filter=F("label").re_match(pattern, options="i"), fields=fields)
        if prefer and matching.select(prefer).count():
            return prefer
        ids = matching.limit(1).values("id")
    except Exception as exc:  # any database error, said in one line at the UI edge
        raise StoreError(f"query on the view failed: {exc}") from exc
    return ids[0] if ids else None


@db_errors
def boxes_by_sample(view: fo.Dataset | fo.DatasetView, field: str, label: str) -> dict[str, list[list[float]]]:
    """Relative [x, y, w, h] boxes of `label` in a Detections field, per sample id."""
    doc_type = getattr(view.get_field(field), "document_type", None)
    if doc_type is not fo.Detections:
        raise StoreError(f"field {field!r} holds no detections (boxes)")
    ids, dets = view.values(["id", f"{field}.detections"])
    out: dict[str, list[list[float]]] = {}
    for sid, ds in zip(ids, dets, strict=True):
        boxes = [list(d.bounding_box) for d in ds or [] if d.label == label and d.bounding_box]
        if boxes:
            out[sid] = boxes
    return out


def sample_boxes(sample: fo.Sample, field: str | None = None) -> list[tuple[str, str, str, list[float]]]:
    """(field, detection id, label, relative [x, y, w, h]) of every box of the sample's Detections
    fields (or of one field), in field order."""
    fields = [field] if field else detection_fields(sample._dataset)
    out = []
    for name in fields:
        if name not in sample.field_names:
            raise StoreError(f"no field {name!r} on this sample")
        value = sample[name]
        if value is not None and not isinstance(value, fo.Detections):
            raise StoreError(f"field {name!r} holds no detections (boxes)")
        for d in (value.detections if value is not None else []):
            if d.bounding_box:
                out.append((name, str(d.id), str(d.label), [float(v) for v in d.bounding_box]))
    return out


@db_errors
def most_boxes(view: fo.Dataset | fo.DatasetView, field: str, label: str = "") -> int:
    """The most boxes (of one label, "" for any) one sample of the view holds in a Detections field."""
    if field not in detection_fields(view):
        raise StoreError(f"no Detections field {field!r} in this dataset (it has: "
                         f"{', '.join(detection_fields(view)) or 'none'})")
    expr = F(f"{field}.detections")
    if label:
        expr = expr.filter(F("label") == label)
    most = view.max(expr.length())  # on the server: one number back, not one per sample (3x faster at 10^5)
    return int(most or 0)


def box_rule(sample: fo.Sample | None, text: str | None) -> str:
    """A --box request as the engine's box rule (camcore.detection): "top", "det:<i>", "class:<name>"
    and "all" as they are; "field:<name>[:<i>][:<class>]" (the field's i-th box, of that class if
    named, as a batch's field rule; default the first) and "id:<detection id>" read the sample's
    Detections. Either may end in "@<score threshold>", as the explorer's URL writes it (kept on the
    rule). StoreError (one line) when there is no such box."""
    text = (text or "top").strip()
    kind, _, rest = text.partition(":")
    if kind not in ("field", "id"):
        return text
    from camcore.detection import field_box_text, field_rule_parts  # the one spelling of a field box's rule

    rest, at, threshold = rest.partition("@")
    if sample is None:
        raise StoreError(f"--box {text} reads a sample's Detections: give --dataset and --sample")
    if kind == "id":
        found = [b for b in sample_boxes(sample) if b[1] == rest.strip()]
        if not found:
            raise StoreError(f"no detection with id {rest.strip()!r} on this sample")
        box = found[0]
    else:
        # a class after the field (or the index) is the box's label, as in a batch's field rule
        name, index, label = field_rule_parts(f"field:{rest}")
        boxes = [b for b in sample_boxes(sample, name) if not label or b[2] == label]
        i = index or 0
        if i >= len(boxes):
            which = f"'{label}' box(es)" if label else "box(es)"
            raise StoreError(f"field {name!r} has {len(boxes)} {which} on this sample: no box {i}")
        box = boxes[i]

    field, det_id, name, rel_box = box
    return field_box_text(name, rel_box, f"{field}/{det_id}") + at + threshold


def segmentation_fields(dataset: fo.Dataset | fo.DatasetView) -> list[str]:
    """fo.Segmentation fields (object masks), ours excluded (we write Heatmaps only)."""
    return sorted(name for name, f in dataset.get_field_schema().items()
                  if getattr(f, "document_type", None) is fo.Segmentation)


def _mask_targets(dataset: fo.Dataset | fo.DatasetView, field: str) -> dict[int, str]:
    root = root_dataset(dataset)
    targets = (root.mask_targets or {}).get(field) or root.default_mask_targets or {}
    return {int(k): str(v) for k, v in targets.items() if str(k).isdigit()}


@db_errors
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


@db_errors
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
    for sid, seg in zip(*view.values(["id", field]), strict=True):
        mask = _read_mask(seg)
        if mask is not None:
            out[sid] = mask == value
    return out


def mask_targets(dataset: fo.Dataset | fo.DatasetView, field: str) -> dict[int, str]:
    """A Segmentation field's mask targets (pixel value -> class name); {} when it has none."""
    return _mask_targets(dataset, field)


def read_mask(seg: fo.Segmentation | None) -> np.ndarray | None:
    """A 2-D integer mask of a Segmentation label; None when absent, unreadable or RGB."""
    return _read_mask(seg)


def stored_mask(doc: dict) -> np.ndarray | None:
    """read_mask of a Segmentation label as stored (a dict from a raw read)."""
    return _read_mask(fo.Segmentation.from_dict({k: v for k, v in doc.items() if k != "_id"}))


def object_field_kind(dataset: fo.Dataset, field: str) -> str:
    """"detections" | "segmentation": what a measures' object field holds; StoreError (one line)
    for a missing field or any other kind of label."""
    found = dataset.get_field(field)
    if found is None:
        raise StoreError(f"no field {field!r} in {dataset.name!r} to take the objects from")
    doc_type = getattr(found, "document_type", None) or type(found)
    if doc_type is fo.Detections:
        return "detections"
    if doc_type is fo.Segmentation:
        return "segmentation"
    name = getattr(doc_type, "__name__", None) or "something else"
    raise StoreError(f"the object field must hold Segmentation masks or Detections boxes, not {name}")
