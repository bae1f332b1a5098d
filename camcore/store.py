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
grayscale PNG (``range=[0, 65535]``) under ``<heatmaps dir>/<dataset>/<field>/<id>-<write id>.png``;
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

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
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


def _heatmap_base(heatmap_dir: str | Path | None) -> Path:
    return Path(heatmap_dir).expanduser().resolve() if heatmap_dir else paths.heatmaps_dir()


def heatmap_path(
    dataset_name: str, field: str, sample_id: str, heatmap_dir: str | Path | None = None, write_id: str = ""
) -> Path:
    """Absolute path of the PNG for one sample's heatmap in one field, written by one write:
    ``<sample id>-<write id>.png``. Every write gets a new name, so a map is never replaced in
    place under a label that still describes the old one. Without a write id: the name earlier
    versions wrote (``<sample id>.png``); ``.parent`` is the field's folder either way."""
    name = f"{sample_id}-{write_id}.png" if write_id else f"{sample_id}.png"
    return _heatmap_base(heatmap_dir) / _dataset_dirname(dataset_name) / field / name


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
        **model_provenance(result),
    )


def model_provenance(result: CamResult) -> dict[str, Any]:
    """The label attributes that say exactly what made a map, beside the weights label: the
    architecture, the weights file's content hash, the classes file, and the size the model ran
    at (the short side, or the square's side: min of the tensor's height and width). A batch
    resumes only where these match, so maps of another checkpoint or size are made again."""
    given = result.model_provenance or {}
    return {"arch": str(given.get("arch") or ""), "weights_sha256": str(given.get("weights_sha256") or ""),
            "classes_file": str(given.get("classes_file") or ""),
            "input_size": int(min(result.input_size)) if result.input_size else 0}


def _write_png_atomic(path: Path, image: np.ndarray, tmp_dir: Path | None = None) -> None:
    # Write a temp file then rename: a crash never leaves a half-written PNG. The temp file may live
    # in another folder of the same file system (the journal's), where clean-up finds it cheaply.
    tmp_dir = tmp_dir or path.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-", suffix=".png")
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


def _write_pngs(files: Sequence[tuple[Path, np.ndarray]], tmp_dir: Path | None = None) -> None:
    """Write many PNGs atomically, in threads: PNG encoding and fsync release the GIL, and on a
    GPU machine they would otherwise take longer than computing the maps. Every write finishes
    (or fails) before this returns; the first error is raised."""
    if len(files) <= 1:
        for path, png in files:
            _write_png_atomic(path, png, tmp_dir)
        return
    with ThreadPoolExecutor(max_workers=min(_WRITE_THREADS, len(files))) as pool:
        futures = [pool.submit(_write_png_atomic, path, png, tmp_dir) for path, png in files]
    for future in futures:
        future.result()


# ---------------------------------------------------------------- heatmap files: journal and clean-up
#
# A label always points at a whole file that was written for it:
#   1. the writer's journal lists the new files and the files the labels point at now (fsync'd);
#   2. the new PNGs are written under new names (<sample id>-<write id>.png), atomically;
#   3. one set_values per field points the labels at them;
#   4. the old files are deleted, each only if no label of any dataset points at it (clones keep
#      sample ids and absolute map_paths); then the journal is emptied.
# A process that dies between two steps leaves its journal. Clean-up (clean_orphans) takes a
# journal only when its writer is gone: the writer holds an exclusive flock on it while it lives,
# and the kernel drops that lock when the process dies, however it dies. Clean-up then deletes the
# listed files that no label references at that moment, so it never touches a file of a writer
# still running (its journal is locked) nor one any dataset uses.

PENDING_DIR = ".pending"  # under <heatmaps dir>/<dataset>/: journals and temp PNGs
JOURNAL_SUFFIX = ".journal"
STALE_TEMP_SECONDS = 3600  # a temp PNG lives for one write; older ones were left by a crash
# A journal written on another machine: its flock may not reach this one (NFS mounted without
# locks), so it counts as abandoned only when unlocked here AND untouched for this long.
FOREIGN_JOURNAL_GRACE = 3600.0
DELETE_BATCH = 2048  # old files collected before one cross-dataset reference check
_REF_QUERY_PATHS = 5000  # paths per $in query
_MAP_NAME = re.compile(r"^[0-9a-fA-F]{24}(-[0-9a-f]+)?\.png$")
_HEATMAP_DOC = "fiftyone.core.labels.Heatmap"


def _pending_dir(dataset_name: str, heatmap_dir: str | Path | None) -> Path:
    return _heatmap_base(heatmap_dir) / _dataset_dirname(dataset_name) / PENDING_DIR


def _heatmap_paths_in_schema(fields: list[dict], prefix: str = "") -> list[str]:
    """Dotted paths of the Heatmap fields in a dataset document's field list, nested ones too."""
    out = []
    for f in fields or []:
        name = f"{prefix}{f.get('name')}"
        if f.get("embedded_doc_type") == _HEATMAP_DOC:
            out.append(name)
        elif f.get("fields"):
            out.extend(_heatmap_paths_in_schema(f["fields"], name + "."))
    return out


@_db_errors
def referenced_paths(paths_: Iterable[str]) -> set[str]:
    """Which of these files a label of any dataset in the database points at now: one server-side
    query per dataset that has Heatmap fields (samples and frames), whatever their names."""
    wanted = sorted({str(p) for p in paths_})
    if not wanted:
        return set()
    import fiftyone.core.odm as foo

    conn = foo.get_db_conn()
    found: set[str] = set()
    projection = {"sample_collection_name": 1, "frame_collection_name": 1, "sample_fields": 1,
                  "frame_fields": 1}
    for doc in conn["datasets"].find({}, projection):
        for coll_key, fields_key in (("sample_collection_name", "sample_fields"),
                                     ("frame_collection_name", "frame_fields")):
            fields = _heatmap_paths_in_schema(doc.get(fields_key) or [])
            if not fields or not doc.get(coll_key):
                continue
            coll = conn[doc[coll_key]]
            for k in range(0, len(wanted), _REF_QUERY_PATHS):
                part = wanted[k:k + _REF_QUERY_PATHS]
                query = {"$or": [{f"{f}.map_path": {"$in": part}} for f in fields]}
                for hit in coll.find(query, {f"{f}.map_path": 1 for f in fields}):
                    for f in fields:
                        value: Any = hit
                        for key in f.split("."):
                            value = value.get(key) if isinstance(value, dict) else None
                        values = value if isinstance(value, list) else [value]
                        for v in values:
                            mp = v.get("map_path") if isinstance(v, dict) else None
                            if mp in part:
                                found.add(mp)
    return found


def _delete_unreferenced(candidates: Iterable[str]) -> int:
    """Delete those of the files that exist and that no label of any dataset points at now."""
    existing = {p for p in set(candidates) if p and os.path.isfile(p)}
    if not existing:
        return 0
    removed = 0
    for path in sorted(existing - referenced_paths(existing)):
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


class HeatmapWriter:
    """One writer's journal of the heatmap files it is changing (see the comment above).

    push_many uses one per call unless given one; a batch passes one for the whole run, so the
    old files it replaces are checked and deleted in groups of DELETE_BATCH (one reference query
    per group, not per chunk). Use it as a context manager: on a clean exit the old files are
    deleted and the journal removed; on an exception the journal stays for clean_orphans."""

    def __init__(self, dataset_name: str, heatmap_dir: str | Path | None = None) -> None:
        self.folder = _pending_dir(dataset_name, heatmap_dir)
        self.path: Path | None = None
        self._fd: int | None = None
        self._doomed: list[str] = []  # old files whose labels point at new files now
        self._lock = threading.Lock()
        self.removed = 0

    def _header(self) -> bytes:
        return (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
                + "\n").encode()

    def _write(self, data: bytes) -> None:
        os.write(self._fd, data)
        os.fsync(self._fd)

    def _open(self) -> None:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.folder / f".new-{name}"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until close: clean-up leaves this journal alone
            self._fd = fd
            self._write(self._header())
            final = self.folder / f"{name}{JOURNAL_SUFFIX}"
            os.replace(tmp, final)  # visible under its journal name only once locked
        except BaseException:
            self._fd = None
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self.path = final

    def record(self, new: Sequence[str], old: Sequence[str]) -> None:
        """Before any PNG is written: the files this write creates and those it will replace."""
        with self._lock:
            try:
                if self._fd is None:
                    self._open()
                self._write((json.dumps({"new": list(new), "old": list(old)}) + "\n").encode())
            except OSError as exc:
                raise ImageError(f"cannot write heatmaps under {self.folder.parent}: "
                                 f"{exc.strerror or exc}") from exc

    def committed(self, old: Sequence[str]) -> None:
        """The labels point at the new files now: the old ones go (checked) in the next flush."""
        with self._lock:
            self._doomed.extend(old)
            due = len(self._doomed) >= DELETE_BATCH
        if due:
            self.flush()

    def flush(self) -> None:
        """Delete the replaced files no label references; every recorded write is settled then,
        so the journal is emptied (a crash mid-way leaves it whole or empty: both are safe)."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
            if doomed:
                self.removed += _delete_unreferenced(doomed)
            if self._fd is not None:
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
                self._write(self._header())

    def close(self, ok: bool = True) -> None:
        """ok: settle and remove the journal; else (or when settling fails: database down, disk
        full) keep it for clean_orphans. Either way the lock is released."""
        settled = False
        try:
            if ok:
                self.flush()
                settled = True
        except Exception:  # the labels are written; only the old files' deletion waits
            pass
        finally:
            with self._lock:
                if self._fd is not None:
                    if settled and self.path is not None:
                        self.path.unlink(missing_ok=True)  # before the lock goes: nobody takes it half-done
                    os.close(self._fd)  # releases the flock
                    self._fd = None

    def forget(self, new: Sequence[str]) -> None:
        """A write that failed before any label was written: its files are nobody's, delete them."""
        for path in new:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def __enter__(self) -> HeatmapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


@_db_errors
def clean_orphans(dataset: fo.Dataset | fo.DatasetView, heatmap_dir: str | Path | None = None) -> int:
    """Settle what writers that died left under this dataset's heatmap folder: for each journal no
    live writer holds, delete the files it lists that no label of any dataset references now, then
    the journal; and temp PNGs older than STALE_TEMP_SECONDS. Returns the number of files deleted.
    Cost: one listing of the journal folder, plus one reference query per dataset with heatmaps
    when something was abandoned; never proportional to the dataset's size."""
    import fcntl

    folder = _pending_dir(_root(dataset).name, heatmap_dir)
    if not folder.is_dir():
        return 0
    now = time.time()
    candidates: list[str] = []
    held: list[tuple[int, Path]] = []  # abandoned journals, locked by us until their files are settled
    removed = 0
    try:
        for path in sorted(folder.iterdir()):
            name = path.name
            if name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                        path.unlink()
                        removed += 1
                continue
            if not (name.endswith(JOURNAL_SUFFIX) or name.startswith(".new-")):
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its writer is alive
                os.close(fd)
                continue
            with open(path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            records = []
            for line in lines:
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
            header = records[0] if records and "host" in records[0] else {}
            if header.get("host", socket.gethostname()) != socket.gethostname() and \
                    now - os.fstat(fd).st_mtime < FOREIGN_JOURNAL_GRACE:
                os.close(fd)
                continue
            for rec in records:
                candidates.extend(str(p) for p in (rec.get("new") or []) + (rec.get("old") or []))
            held.append((fd, path))
        removed += _delete_unreferenced(candidates)
        for _fd, path in held:
            path.unlink(missing_ok=True)
    finally:
        for fd, _path in held:
            os.close(fd)
    return removed


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
    # model_provenance(): what made the map, compared by a batch's resume
    "arch": fo.StringField, "weights_sha256": fo.StringField, "classes_file": fo.StringField,
    "input_size": fo.IntField,
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
    writer: HeatmapWriter | None = None,
) -> list[str]:
    """Write every heatmap of several samples' results with one ``set_values`` per field.

    items: (sample_id, result) pairs. target_label: the target part of the field names
    (e.g. ``"predicted"``: one field whatever class each sample was explained for; the class
    is still each label's ``target`` attribute); None uses each heatmap's class name as
    :func:`push_heatmaps` does. extra: more attributes for every label (provenance).
    Everything is validated first; then the writer's journal lists the new files and the ones
    the labels point at now, every PNG is written under a new name (atomically), the fields are
    set, and the replaced files are deleted once no label of any dataset references them (at
    once, or in the writer's next flush when a batch passes its writer). A crash at any point
    leaves each label with the file it was written with; clean_orphans settles the rest.
    """
    dataset = _root(dataset)
    if not items:
        return []
    write_id = uuid.uuid4().hex[:16]  # this write's files get new names: nothing is replaced in place
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
                path = heatmap_path(dataset.name, field, sid, heatmap_dir, write_id)
                rows.append((sid, result, h, png, path))
        created_at = _now()
        versions = _versions()
        new = [str(path) for _k, rows in per_field.values() for *_x, path in rows]
        old = _current_files(dataset, {f: [r[0] for r in rows] for f, (_k, rows) in per_field.items()})
        own = writer is None
        writer = writer or HeatmapWriter(dataset.name, heatmap_dir)
        labelled = False
        try:
            writer.record(new, old)
            try:
                files = [(path, png) for _k, rows in per_field.values() for _s, _r, _h, png, path in rows]
                _write_pngs(files, tmp_dir=writer.folder)
            except BaseException:
                writer.forget(new)  # no label was written: these files are nobody's
                raise
            for field, (key, rows) in per_field.items():
                declare_heatmap_field(dataset, *key[:4], extra=extra, variant=key[4])
                values = {sid: _label(r, h, path, created_at, versions, extra) for sid, r, h, _p, path in rows}
                labelled = True
                # One bulk update keyed by id, not sample.save(); every attribute is declared already.
                dataset.set_values(field, values, key_field="id", dynamic=True)
            writer.committed(old)
        except BaseException:
            if own:
                writer.close(ok=not labelled)  # a label may have been written: leave it to clean-up
            raise
        if own:
            writer.close()
    return list(per_field)


def _current_files(dataset: fo.Dataset, ids_by_field: dict[str, list[str]]) -> list[str]:
    """The files our labels of these samples point at now (those a write will replace): only
    files named as we name them, in the field's own folder, so a path set by hand is never
    deleted."""
    schema = dataset.get_field_schema()
    fields = [f for f in ids_by_field if f in schema]
    if not fields:
        return []
    wanted = {f: set(ids_by_field[f]) for f in fields}
    ids = sorted(set().union(*wanted.values()))
    columns = dataset.select(ids).values(["id"] + [f"{f}.map_path" for f in fields])
    out = []
    for i, sid in enumerate(columns[0]):
        for f, col in zip(fields, columns[1:]):
            path = col[i]
            if path and sid in wanted[f]:
                p = Path(path)
                if p.parent.name == f and _MAP_NAME.match(p.name) and p.name.startswith(sid):
                    out.append(str(path))
    return out


_SHOWN: dict[str, tuple[float, list[str], object]] = {}  # dataset -> (when, fields, which push) of the latest
_SHOWN_GROUP_SECONDS = 60.0  # the calls of one push come back to back
HEATMAP_COLORSCALE = "jet"  # the app's default colormap: the App draws our maps like the explorer does


def _show_in_app(dataset: fo.Dataset, fields: list[str]) -> None:
    """Show the heatmap fields just pushed in the App, drawn with a heatmap colour scale.

    - Active (checked) fields: FiftyOne's own default (every non-dense label field, the way the
      App shows a dataset) plus only the fields of the latest push (the calls of one push_many,
      known by its write id, or of one batch declaring its fields, add up); our older heatmap
      fields are unchecked, so a sample is not a stack of tints. A list the user set keeps its other paths (an exclusion list also
      excludes our older fields).
    - Each field of ours gets a colour scale (jet, like the explorer), unless the user set one.
    - An App this process serves on this dataset takes the new scheme and refreshes at once (a
      session keeps the scheme it was launched with).
    Each field keeps its full description (what made the map) in its description and info.
    """
    now = time.monotonic()
    # One push: push_many's write id; else (a batch declaring its fields) the calling frame.
    push: object = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") != __name__:
            push = ("frame", id(frame), frame.f_code)
            break
        if frame.f_code.co_name == "push_many" and "write_id" in frame.f_locals:
            push = ("push", frame.f_locals["write_id"])
            break
        frame = frame.f_back
    last = _SHOWN.get(dataset.name)
    same = last is not None and last[2] == push and now - last[0] < _SHOWN_GROUP_SECONDS
    group = list(dict.fromkeys(([*last[1]] if same else []) + list(fields)))
    _SHOWN[dataset.name] = (now, group, push)
    config = dataset.app_config
    active = config.active_fields
    ours = set(heatmap_fields(dataset)) | set(group)
    older = sorted(ours - set(group))
    changed = False
    if active is None or (active.exclude and set(active.paths) <= _dense_fields(dataset) | ours):
        default = fo.DatasetAppConfig.default_active_fields(dataset)
        paths = [p for p in default.paths if p not in ours] + group
        new_active = ActiveFields(exclude=False, paths=paths)
    elif active.exclude:  # the user's own exclusion list: keep it, and exclude our older maps too
        paths = [p for p in active.paths if p not in ours] + older
        new_active = ActiveFields(exclude=True, paths=paths)
    else:
        paths = [p for p in active.paths if p not in ours] + group
        new_active = ActiveFields(exclude=False, paths=paths)
    if active is None or active.exclude != new_active.exclude or list(active.paths) != list(new_active.paths):
        config.active_fields = new_active
        changed = True
    scheme = config.color_scheme or fo.ColorScheme()
    scales = list(scheme.colorscales or [])
    styled = {c.get("path") for c in scales if isinstance(c, dict)}
    missing = [f for f in fields if f not in styled]
    if missing:  # the user's own colorscale for a field wins
        scheme.colorscales = scales + [{"path": f, "name": HEATMAP_COLORSCALE} for f in missing]
        config.color_scheme = scheme
        changed = True
    if changed:
        dataset.save()
    session = _SESSION
    if session is not None:
        try:
            shown = session.dataset
            if shown is not None and shown.name == dataset.name:
                session.color_scheme = None  # rebuilt from the dataset's app config, sent to the App
                session.refresh()
        except Exception:  # an App that is not connected (yet): it reads the config when it loads
            pass


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


# String attributes of a finding label, declared in the schema so that the App lists them.
_FINDING_ATTRS = ("note", "heatmap_field", "created_at", "url")


def _findings_field_ready(dataset: fo.Dataset) -> None:
    existing = dataset.get_field(FINDINGS_FIELD)
    if existing is None:
        dataset.add_sample_field(
            FINDINGS_FIELD, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications,
            description="CAM Explorer findings: notes on what a heatmap shows",
            info={MARK: {"kind": "findings"}},
        )
    else:
        doc_type = getattr(existing, "document_type", None)
        if not (doc_type and issubclass(doc_type, fo.Classifications)) or MARK not in (existing.info or {}):
            raise StoreError(
                f"field {FINDINGS_FIELD!r} of {dataset.name!r} exists and is not CAM Explorer's findings field")
    for attr in _FINDING_ATTRS:  # findings made before `url` existed lack only that one
        path = f"{FINDINGS_FIELD}.classifications.{attr}"
        if dataset.get_field(path) is None:
            dataset.add_sample_field(path, fo.StringField)


@_db_errors
def add_finding(
    dataset: fo.Dataset, sample_id: str, tag: str, note: str = "", heatmap_field: str | None = None,
    url: str | None = None,
) -> None:
    """Tag the sample ``cam:<tag>`` and append a Classification(label=tag, note, heatmap_field,
    created_at, url) to cam_findings; `url` is the explorer state the finding was made in.

    Atomic updates of the one sample document ($addToSet the tag, $push the finding), never a
    read-modify-write: a tag or finding that the App or another process adds meanwhile is kept."""
    dataset = _root(dataset)
    tag = str(tag).strip()
    sample_tag = finding_tag(tag)
    if url is not None and urllib.parse.urlsplit(str(url)).scheme.lower() not in ("http", "https"):
        # It becomes a link on the Findings page: never javascript:, data: or file:.
        raise StoreError(f"a finding's URL must be an http(s) address, got {str(url)[:80]!r}")
    with _LOCK:  # in this process: schema changes of one dataset one at a time
        sample = get_sample(dataset, sample_id)
        if heatmap_field is not None and dataset.get_field(heatmap_field) is None:
            raise StoreError(f"no field {heatmap_field!r} in {dataset.name!r} to attach the finding to")
        _findings_field_ready(dataset)
        finding = fo.Classification(label=tag, note=note, heatmap_field=heatmap_field, created_at=_now(),
                                    url=None if url is None else str(url))
        docs, key, items = dataset._sample_collection, {"_id": sample._id}, FINDINGS_FIELD + ".classifications"
        # A sample with no findings yet gets an empty list; each filter+update is atomic, so two
        # writers doing this at once create it once and both pushes land in it.
        docs.update_one({**key, FINDINGS_FIELD: None},
                        {"$set": {FINDINGS_FIELD: {"_cls": "Classifications", "classifications": []}}})
        docs.update_one({**key, FINDINGS_FIELD: {"$ne": None}, items: None}, {"$set": {items: []}})
        done = docs.update_one(key, {
            "$push": {items: finding.to_mongo()},
            "$addToSet": {"tags": sample_tag},
            "$set": {"last_modified_at": _dt.datetime.now(_dt.UTC).replace(tzinfo=None)},
        })
        if not done.matched_count:
            raise StoreError(f"sample {sample.id} was deleted from {dataset.name!r} meanwhile")
        sample.reload(hard=True)  # FiftyOne's in-process singleton must not keep a stale copy


def _findings_pipeline(skip: int, limit: int | None) -> list[dict]:
    items = f"${FINDINGS_FIELD}.classifications"
    stages: list[dict] = [
        {"$match": {FINDINGS_FIELD + ".classifications.0": {"$exists": True}}},
        {"$project": {"filepath": True, "finding": items}},
        {"$unwind": "$finding"},  # keeps each sample's list order: oldest first
    ]
    if skip:
        stages.append({"$skip": skip})
    if limit is not None:
        stages.append({"$limit": limit})
    return stages


@_db_errors
def list_findings(
    collection: fo.Dataset | fo.DatasetView, skip: int = 0, limit: int | None = None
) -> list[dict]:
    """Findings in the collection's sample order, oldest first per sample; `skip` and `limit`
    page through them on the server (a page never reads the other findings).

    Each: sample_id, filepath, tag, note, heatmap_field, created_at, url, id (of the label).
    """
    skip = int(skip)
    if skip < 0 or (limit is not None and int(limit) < 0):
        raise StoreError(f"findings page: skip and limit must be >= 0, got skip={skip}, limit={limit}")
    if (limit is not None and int(limit) == 0) or collection.get_field(FINDINGS_FIELD) is None:
        return []
    rows = collection._aggregate(post_pipeline=_findings_pipeline(skip, None if limit is None else int(limit)))
    out = []
    for row in rows:
        c = row["finding"]
        out.append({
            "sample_id": str(row["_id"]), "filepath": row.get("filepath"), "tag": c.get("label"),
            "note": c.get("note") or "", "heatmap_field": c.get("heatmap_field"),
            "created_at": c.get("created_at"), "url": c.get("url"), "id": str(c.get("_id")),
        })
    return out


_FINDINGS_INDEXED: set[str] = set()  # datasets whose finding labels are indexed (this process)


@_db_errors
def finding_labels(collection: fo.Dataset | fo.DatasetView) -> list[str]:
    """The distinct findings (labels) recorded in the collection, read from an index on them (made
    on first use), so that the Findings page never scans the samples and never shows a stale list."""
    if collection.get_field(FINDINGS_FIELD) is None:
        return []
    path = FINDINGS_FIELD + ".classifications.label"
    root = _root(collection)
    if root.name not in _FINDINGS_INDEXED:
        root.create_index(path)  # idempotent; a distinct on an indexed path reads the index
        _FINDINGS_INDEXED.add(root.name)
    return sorted(str(v) for v in collection.distinct(path))


@_db_errors
def findings_view(dataset: fo.Dataset | fo.DatasetView, labels: Sequence[str]) -> fo.DatasetView:
    """The samples holding findings with these labels, only those findings kept (stages, no ids)."""
    if dataset.get_field(FINDINGS_FIELD) is None:
        return dataset.limit(0)
    return dataset.filter_labels(FINDINGS_FIELD, F("label").is_in(list(labels)))


@_db_errors
def count_findings(collection: fo.Dataset | fo.DatasetView) -> int:
    """How many findings the collection holds, counted on the server."""
    if collection.get_field(FINDINGS_FIELD) is None:
        return 0
    return int(collection.count(FINDINGS_FIELD + ".classifications"))


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
        # The App's server (a child process) loads the CAM Explorer plugin from the repo's plugins/,
        # unless the user points FiftyOne at their own plugins folder.
        os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(Path(__file__).resolve().parents[1] / "plugins"))
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
