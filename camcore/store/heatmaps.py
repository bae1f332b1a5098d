"""Heatmaps: pushing maps as 16-bit PNGs + Heatmap labels, reading them back, and the journal that
keeps every label pointing at a whole file written for it.

A heatmap lives in the field its identity names (:attr:`~camcore.identity.HeatmapIdentity.field_name`,
``cam_<method>_<layer>_<model>[_<target>][_<variant>]``, declared by :mod:`camcore.store.fields`).
Its map is a 16-bit grayscale PNG (``range=[0, 65535]``) under
``<heatmaps dir>/<dataset>/<field>/<sample id>-<write id>.png``; the label carries the identity's
provenance (model, weights, method, layer, smoothing, arch, weights hash, classes file, input size)
plus the target actually explained, raw_min/raw_max, blank, created_at and package versions.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import bson.errors
import cv2
import fiftyone as fo
import numpy as np
import pymongo.errors

from camcore import files, paths
from camcore.errors import ImageError, StoreError, first_line
from camcore.results import CamResult, Heatmap
from camcore.store import sampledocs
from camcore.store.datasets import LOCK, db_errors, get_sample, parse_utc, require_image, root_dataset, utc_now
from camcore.store.fields import check_field, declare_heatmap_fields, stored_identity
from camcore.store.leases import lease, schema_lease

HEATMAP_RANGE = (0, 65535)
_WRITE_THREADS = 8


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
    place under a label that still describes the old one. Without a write id: ``<sample id>.png``;
    ``.parent`` is the field's folder either way."""
    name = f"{sample_id}-{write_id}.png" if write_id else f"{sample_id}.png"
    return _heatmap_base(heatmap_dir) / _dataset_dirname(dataset_name) / field / name


def _versions() -> dict[str, str]:
    out = {"camcore": str(getattr(sys.modules.get("camcore"), "__version__", "unknown"))}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"),
                      ("pytorch_grad_cam", "grad-cam"), ("timm", "timm")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def _validated_map(h: Heatmap, result: CamResult, meta: dict | None) -> np.ndarray:
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
    width, height = (meta or {}).get("width"), (meta or {}).get("height")
    if width and height:
        if tuple(m.shape) != (height, width):
            raise ImageError(f"heatmap {h.label} is {size}, the sample is {height}x{width} "
                             "(height x width, as the App shows it)")
    return np.round(np.clip(m.astype(np.float64), 0.0, 1.0) * HEATMAP_RANGE[1]).astype(np.uint16)


def _write_png_atomic(path: Path, image: np.ndarray, tmp_dir: Path | None = None) -> None:
    # The temp file may live in another folder of the same file system (the journal's), where
    # clean-up finds it cheaply.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp_dir is not None:
            tmp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot write heatmaps under {path.parent}: {exc.strerror or exc}") from exc
    try:
        ok, png = cv2.imencode(".png", image)
    except cv2.error as exc:
        raise ImageError(f"could not write heatmap PNG {path}: {first_line(exc)}") from exc
    if not ok:
        raise ImageError(f"could not write heatmap PNG {path}")
    try:
        files.write_bytes(path, png.tobytes(), tmp_dir)
    except OSError as exc:
        raise ImageError(f"could not write heatmap PNG {path}: {exc.strerror or exc}") from exc


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
# How far another host's clock may run behind ours: a copy of a label (a clone, add_samples) made
# there is stamped last_modified_at by that clock; the reference check looks this far back. A day:
# a clock set to local time and read as UTC is off by a time zone (at most 14 h), not only drift.
CLOCK_SKEW = timedelta(days=1)
_RECENT_MIN, _RECENT_SHARE = 1000, 10  # read by the index up to max(1000, a tenth) of the documents


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


@db_errors
def referenced_paths(paths_: Iterable[str], labelled_since: datetime | None = None) -> set[str]:
    """Which of these files a label of any dataset in the database points at now: one server-side
    query per dataset that has Heatmap fields (samples and frames), whatever their names.

    labelled_since: when the first label pointing at any of these files was written (None:
    unknown). A label that points at a file, and every copy of it (a clone, add_samples, an
    import), is in a document written since then, and FiftyOne stamps each document it writes
    with last_modified_at (indexed): only those documents are read, not every sample of every
    dataset (0.4 s per overwrite at 10^6 samples). CLOCK_SKEW covers another host's slow clock."""
    wanted = sorted({str(p) for p in paths_})
    if not wanted:
        return set()
    import fiftyone.core.odm as foo

    conn = foo.get_db_conn()
    found: set[str] = set()
    since = None if labelled_since is None else (labelled_since - CLOCK_SKEW).astimezone(UTC).replace(tzinfo=None)
    # what finds the Heatmap fields, not each field's whole entry (its info and description: a
    # dataset document of 500 CAM fields is 0.5 MB, read whole at every check)
    projection = {"sample_collection_name": 1, "frame_collection_name": 1,
                  **{f"{key}.{part}": 1 for key in ("sample_fields", "frame_fields")
                     for part in ("name", "embedded_doc_type", "fields")}}
    for doc in conn["datasets"].find({}, projection):
        for coll_key, fields_key in (("sample_collection_name", "sample_fields"),
                                     ("frame_collection_name", "frame_fields")):
            fields = _heatmap_paths_in_schema(doc.get(fields_key) or [])
            if not fields or not doc.get(coll_key):
                continue
            coll = conn[doc[coll_key]]
            recent = None if since is None else _written_since(coll, since)
            for k in range(0, len(wanted), _REF_QUERY_PATHS):
                part = wanted[k:k + _REF_QUERY_PATHS]
                query: dict[str, Any] = {"$or": [{f"{f}.map_path": {"$in": part}} for f in fields]}
                if recent:
                    query = {"$and": [recent, query]}
                # The plan, named: no index serves a map_path, and MongoDB otherwise plans each of
                # the $or's branches against every index (SUBPLAN): 0.55 s at 500 Heatmap fields,
                # however few the samples.
                plan = [("last_modified_at", 1)] if recent else [("$natural", 1)]
                for hit in coll.find(query, {f"{f}.map_path": 1 for f in fields}).hint(plan):
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


def _written_since(coll: Any, since: datetime) -> dict[str, Any] | None:
    """The filter on this collection's documents written since `since` (FiftyOne's index on
    last_modified_at), when they are few enough that reading them by the index beats reading every
    document (at 10^6 documents, every one written since: 1.1 s by the index, 0.4 s without);
    else None. Counting them stops at that many index keys."""
    recent = {"$or": [{"last_modified_at": {"$gte": since}},
                      {"last_modified_at": None}]}  # no stamp (raw inserts): read too
    cap = max(_RECENT_MIN, coll.estimated_document_count() // _RECENT_SHARE)
    try:
        many = coll.count_documents(recent, limit=cap + 1, hint=[("last_modified_at", 1)])
    except pymongo.errors.OperationFailure:  # no such index (dropped): every document
        return None
    return recent if many <= cap else None


def _delete_unreferenced(candidates: Iterable[str], labelled_since: datetime | None = None) -> int:
    """Delete those of the files that exist and that no label of any dataset points at now
    (labelled_since: as referenced_paths takes it)."""
    existing = {p for p in set(candidates) if p and os.path.isfile(p)}
    if not existing:
        return 0
    removed = 0
    for path in sorted(existing - referenced_paths(existing, labelled_since)):
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


# Journals this process's writers hold open (any thread): clean-up never takes them, even where
# flock cannot tell one of our file descriptors from another.
_LIVE_JOURNALS: set[str] = set()
_LIVE_LOCK = threading.Lock()


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
        self._doomed: dict[str, datetime | None] = {}  # old files whose labels point at new files now
        self._lock = threading.Lock()
        self.removed = 0

    def _header(self) -> bytes:
        return (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
                + "\n").encode()

    def _write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:  # only _open and flush write, both with the journal open
            raise RuntimeError("the heatmap journal is not open")
        os.write(fd, data)
        os.fsync(fd)

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
        with _LIVE_LOCK:
            _LIVE_JOURNALS.add(str(final))

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

    def committed(self, old: dict[str, datetime | None]) -> None:
        """The labels point at the new files now: the old ones (each with when its label was
        written, None if not known) go, checked, in the next flush."""
        with self._lock:
            self._doomed.update(old)
            due = len(self._doomed) >= DELETE_BATCH
        if due:
            self.flush()

    def flush(self) -> None:
        """Delete the replaced files no label references; every recorded write is settled then,
        so the journal is emptied (a crash mid-way leaves it whole or empty: both are safe)."""
        with self._lock:
            doomed, self._doomed = self._doomed, {}
            if doomed:
                times = list(doomed.values())
                since = None if None in times else min(t for t in times if t is not None)
                self.removed += _delete_unreferenced(doomed, since)
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
                    with _LIVE_LOCK:
                        _LIVE_JOURNALS.discard(str(self.path))

    def forget(self, new: Sequence[str]) -> None:
        """A write that failed before any label was written: its files are nobody's, delete them."""
        for path in new:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def __enter__(self) -> HeatmapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


@db_errors
def clean_orphans(dataset: fo.Dataset | fo.DatasetView, heatmap_dir: str | Path | None = None) -> int:
    """Settle what writers that died left under this dataset's heatmap folder: for each journal no
    live writer holds, delete the files it lists that no label of any dataset references now, then
    the journal; and temp PNGs and half-opened journals older than STALE_TEMP_SECONDS. Returns the
    number of files deleted.
    Cost: one listing of the journal folder, plus one reference query per dataset with heatmaps
    when something was abandoned; never proportional to the dataset's size."""
    import fcntl

    folder = _pending_dir(root_dataset(dataset).name, heatmap_dir)
    if not folder.is_dir():
        return 0
    now = time.time()
    candidates: list[str] = []
    held: list[tuple[int, Path]] = []  # abandoned journals, locked by us until their files are settled
    removed = 0
    try:
        for path in sorted(folder.iterdir()):
            name = path.name
            # A temp PNG, or a journal being opened (its writer creates it, then locks it: one taken
            # in between failed that writer's push). Neither lists files: removed once stale.
            if name.startswith((".tmp-", ".new-")):
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                        path.unlink()
                        removed += 1
                continue
            if not name.endswith(JOURNAL_SUFFIX):
                continue
            with _LIVE_LOCK:
                # flock is per process where it is emulated (NFS): our own live journals by name
                if str(path) in _LIVE_JOURNALS:
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


def _box_provenance(h: Heatmap) -> dict:
    """A detection's heatmap names its box: which one (detection id and field, or the model's
    detection index), its label, the matched detection's score and IoU, the box (relative x, y, w, h)."""
    t = h.target
    if not t.box_ref:
        return {}
    field, _, det_id = t.box_ref.partition("/")
    out: dict[str, object] = {"box_ref": t.box_ref, "box_label": t.name,
                              "box_score": None if t.score is None else float(t.score),
                              "box_iou": None if t.iou is None else float(t.iou)}
    if det_id:
        out.update(box_field=field, box_detection_id=det_id)
    height, width = h.map.shape[:2]
    if len(t.boxes) == 1:
        x1, y1, x2, y2 = t.boxes[0]
        out["box"] = [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height]
    return out


DETECTION_LINK = "cam_heatmaps"  # on a Detection a heatmap explains: the fields of its maps


def _link_detections(dataset: fo.Dataset, written: list[tuple[str, Heatmap]]) -> None:
    """The way back from a box to its maps: a Detection of the sample's own field that a heatmap
    explains lists that heatmap's field in its ``cam_heatmaps`` attribute (shown in the App's
    tooltip of the box), added atomically to that one element (the user's other labels and
    attributes are untouched). The heatmap's label names the detection (box_detection_id)."""
    links = [(sid, h.target.box_ref.partition("/"), h.field) for sid, h in written if "/" in h.target.box_ref]
    if not links:
        return
    for det_field in {field for _sid, (field, _s, _d), _f in links}:
        path = f"{det_field}.detections.{DETECTION_LINK}"
        if dataset.get_field(path) is None:
            with schema_lease(dataset):
                if dataset.get_field(path) is None:
                    dataset.add_sample_field(path, fo.ListField, subfield=fo.StringField,
                                             description="CAM Explorer heatmap fields explaining this box")
    docs = dataset._sample_collection
    for sid, (det_field, _sep, det_id), heatmap_field in links:
        with contextlib.suppress(bson.errors.InvalidId):
            docs.update_one({"_id": bson.ObjectId(sid)},
                            {"$addToSet": {f"{det_field}.detections.$[d].{DETECTION_LINK}": heatmap_field}},
                            array_filters=[{"d._id": bson.ObjectId(det_id)}])
    # FiftyOne's in-process samples must not keep a stale copy of the detections (those fields only)
    for det_field in {field for _sid, (field, _s, _d), _f in links}:
        sampledocs.reload_fields(dataset, {sid for sid, (f, _s, _d), _f in links if f == det_field}, [det_field])


def _label(h: Heatmap, map_path: Path, created_at: str, versions: dict, extra: dict | None = None) -> fo.Heatmap:
    """The label of one map: `extra`, the identity's provenance, then what this map was for."""
    attributes = {
        **(extra or {}),
        **h.identity.provenance,
        "target": h.target.name,
        "target_index": int(h.target.index),
        "target_rule": h.target.rule,
        **_box_provenance(h),
        "raw_min": float(h.raw_range[0]),
        "raw_max": float(h.raw_range[1]),
        "blank": bool(h.blank),  # zero everywhere: the App draws nothing, and this says why
        "created_at": created_at,
        "versions": versions,
    }
    return fo.Heatmap(map_path=str(map_path), range=list(HEATMAP_RANGE), **attributes)


@db_errors
def push_heatmaps(
    dataset: fo.Dataset,
    sample_id: str,
    result: CamResult,
    heatmaps: Sequence[Heatmap] | None = None,
    heatmap_dir: str | Path | None = None,
) -> list[str]:
    """Write heatmaps of `result` for one sample as PNGs + Heatmap fields; return the field names.

    The field of each heatmap is ``h.field`` (its identity's field name). Everything is validated
    before anything is written; pushing the same heatmap again replaces the field value and the file.
    """
    dataset = root_dataset(dataset)
    chosen = list(result.heatmaps if heatmaps is None else heatmaps)
    if not chosen:
        raise StoreError("nothing to push: the result holds no heatmaps")
    for h in chosen:
        if not any(h is r for r in result.heatmaps):
            raise StoreError(f"heatmap {h.label} is not part of this result; push it with its own result")
    with LOCK:
        sid = _sample_id(dataset, sample_id)
        return push_many(dataset, [(sid, dataclasses.replace(result, heatmaps=tuple(chosen)))],
                         heatmap_dir=heatmap_dir)


def _sample_id(dataset: fo.Dataset, id_or_filename: str) -> str:
    """The id of the image sample a push names (by id: one small read, not the sample's every
    label; by file name: get_sample's lookup)."""
    key = str(id_or_filename).strip()
    doc = sampledocs.read(dataset, [key], ["_media_type"]).get(key)
    if doc is None:
        sample = get_sample(dataset, key)
        require_image(sample)
        return sample.id
    if doc.get("_media_type", "image") != "image":
        raise StoreError(f"CAM Explorer works on images, but this sample holds {doc.get('_media_type')!r} media")
    return key


# One map to write: (sample id, result, heatmap, 16-bit PNG, its path)
_Row = tuple[str, CamResult, Heatmap, np.ndarray, Path]


def _plan(
    dataset: fo.Dataset, items: Sequence[tuple[str, CamResult]], heatmap_dir: str | Path | None, write_id: str,
) -> dict[str, tuple[Heatmap, list[_Row]]]:
    """Validate every map and check every field before anything is written: field -> (its first
    heatmap, whose identity declares it; the rows to write into it)."""
    # The samples' sizes alone, read raw: a view's values() parses every field of the schema
    docs = sampledocs.read(dataset, [sid for sid, _r in items], ["metadata.width", "metadata.height"])
    metas = {sid: doc.get("metadata") for sid, doc in docs.items()}
    per_field: dict[str, tuple[Heatmap, list[_Row]]] = {}
    kept: dict[Any, Any] = {}  # identity -> as this dataset keeps it (an older name's field)
    for sid, result in items:
        if sid not in metas:
            raise StoreError(f"no sample {sid!r} in {dataset.name!r}")
        for h in result.heatmaps:
            if h.identity not in kept:
                kept[h.identity] = stored_identity(dataset, h.identity)
            if kept[h.identity] is not h.identity:
                h = dataclasses.replace(h, identity=kept[h.identity])
            field = h.field
            if field not in per_field:  # checked once per field, not per sample
                check_field(dataset, field, h.identity.meaning)
                per_field[field] = (h, [])
            rows = per_field[field][1]
            if any(r[0] == sid for r in rows):
                raise StoreError(f"two heatmaps of sample {sid} map to the same field {field!r}")
            png = _validated_map(h, result, metas[sid])
            rows.append((sid, result, h, png, heatmap_path(dataset.name, field, sid, heatmap_dir, write_id)))
    return per_field


@db_errors
def push_many(
    dataset: fo.Dataset,
    items: Sequence[tuple[str, CamResult]],
    extra: dict | None = None,
    heatmap_dir: str | Path | None = None,
    writer: HeatmapWriter | None = None,
) -> list[str]:
    """Write every heatmap of several samples' results with one ``set_values`` per field.

    items: (sample_id, result) pairs; each heatmap goes into the field its identity names (a batch
    gives its heatmaps an identity whose target is its rule, e.g. ``"predicted"``: one field
    whatever class each sample was explained for; the class is still each label's ``target``
    attribute). extra: more attributes for every label (provenance).
    Everything is validated first; then the writer's journal lists the new files and the ones
    the labels point at now, every PNG is written under a new name (atomically), the fields are
    set, and the replaced files are deleted once no label of any dataset references them (at
    once, or in the writer's next flush when a batch passes its writer). A crash at any point
    leaves each label with the file it was written with; clean_orphans settles the rest.
    """
    dataset = root_dataset(dataset)
    if not items:
        return []
    for _ in range(_PUSH_ATTEMPTS - 1):
        try:
            return _push_once(dataset, items, extra, heatmap_dir, writer)
        except _Renamed:
            # Another process declared one of these names for another map between our plan and our
            # declaration: nothing was written; planned again, the map takes the name it now gets.
            continue
    try:
        return _push_once(dataset, items, extra, heatmap_dir, writer)
    except _Renamed as exc:
        raise StoreError(f"another writer changed the fields meanwhile ({exc}); push again") from None


_PUSH_ATTEMPTS = 4


class _Renamed(Exception):
    """A field name planned outside the schema lease was given to another map under it."""


def _push_once(dataset: fo.Dataset, items: Sequence[tuple[str, CamResult]], extra: dict | None,
               heatmap_dir: str | Path | None, writer: HeatmapWriter | None) -> list[str]:
    write_id = uuid.uuid4().hex[:16]  # this write's files get new names: nothing is replaced in place
    with LOCK:
        require_image(dataset)
        per_field = _plan(dataset, items, heatmap_dir, write_id)
        created_at = utc_now()
        versions = _versions()
        labels = {(sid, field): _label(h, path, created_at, versions, extra)
                  for field, (_h, rows) in per_field.items() for sid, _r, h, _p, path in rows}
        new = [str(row[4]) for _h, rows in per_field.values() for row in rows]
        old = _current_files(dataset, {f: [row[0] for row in rows] for f, (_h, rows) in per_field.items()})
        own = writer is None
        writer = writer or HeatmapWriter(dataset.name, heatmap_dir)
        labelled = False
        try:
            writer.record(new, list(old))
            try:
                _write_pngs([(path, png) for _h, rows in per_field.values() for *_x, png, path in rows],
                            tmp_dir=writer.folder)
            except BaseException:
                writer.forget(new)  # no label was written: these files are nobody's
                raise
            declared = declare_heatmap_fields(dataset, [first.identity for first, _rows in per_field.values()],
                                              shown_with=write_id)
            if declared != list(per_field):  # another process declared a field of these names meanwhile
                writer.forget(new)  # no label was written: these files (named after the field) are nobody's
                raise _Renamed(", ".join(declared))
            # Two writers of one sample and field: each must replace the file the label points at
            # when it writes, not when it looked, or the loser's file is nobody's and nobody's to
            # delete. One writer at a time (any process or host) between reading and setting.
            with lease(f"labels:{dataset._doc.id}"):
                now = _current_files(dataset, {f: [row[0] for row in rows] for f, (_h, rows) in per_field.items()})
                replaced = {p: t for p, t in now.items() if p not in old}
                if replaced:
                    writer.record([], list(replaced))
                    old = {**old, **replaced}
                by_field: dict[str, dict[str, dict[str, fo.Heatmap]]] = {}
                for (sid, field), label in labels.items():
                    by_field.setdefault(field, {})[sid] = {field: label}
                for values in by_field.values():
                    labelled = True
                    # One bulk write per field, raw: set_values parses the whole schema and reloads
                    # every field of the samples in memory. Attributes beyond the declared ones
                    # (fields.DECLARED_ATTRIBUTES) are stored undeclared, never added to the schema.
                    sampledocs.write(dataset, values)
            try:  # the way back from a box: a convenience, the labels are written already
                _link_detections(dataset, [(sid, h) for _h, rows in per_field.values()
                                           for sid, _r, h, _p, _path in rows])
            except Exception as exc:  # noqa: BLE001 (said, never a failed push)
                warnings.warn(f"heatmaps pushed; their detections were not marked: {first_line(exc)}", stacklevel=2)
            writer.committed(old)
        except BaseException:
            if own:
                writer.close(ok=not labelled)  # a label may have been written: leave it to clean-up
            raise
        if own:
            writer.close()
            # what writers that died left behind goes with the next write, not only the next batch
            with contextlib.suppress(StoreError, OSError):
                clean_orphans(dataset, heatmap_dir)
    return list(per_field)


def _current_files(dataset: fo.Dataset, ids_by_field: dict[str, list[str]]) -> dict[str, datetime | None]:
    """The files our labels of these samples point at now (those a write will replace), each with
    when its label was written (None if the label does not say): only files named as we name
    them, in the field's own folder, so a path set by hand is never deleted."""
    ids = sorted(set().union(*ids_by_field.values()))
    if not ids:
        return {}
    docs = sampledocs.read(dataset, ids, [p for f in ids_by_field for p in (f"{f}.map_path", f"{f}.created_at")])
    out = {}
    for f, sids in ids_by_field.items():
        for sid in sids:
            label = docs.get(sid, {}).get(f)
            if not isinstance(label, dict):
                continue
            path = label.get("map_path")
            if path:
                p = Path(path)
                if p.parent.name == f and _MAP_NAME.match(p.name) and p.name.startswith(sid):
                    out[str(path)] = parse_utc(label.get("created_at"))  # when its label was written
    return out


@db_errors
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
