"""Heatmaps for a whole view: resumable, written in bulk, with progress and cancel.

Never imports streamlit. One field per (model, method, layer, target rule): with the rule
"predicted" every sample is explained for its own predicted class, the field is
``cam_<model>_<method>_<layer>_predicted`` and the class lives in each label's ``target``.

Resuming: a sample is skipped for a field when its label there has the same provenance
(model, weights label, method, layer, target rule, eigen smoothing, input size) and its PNG
exists. Per write, every PNG is written first (atomically), then one ``set_values`` per
field; a sample is reported done only after that. A crash between the two leaves PNGs that
no field points at: the next run deletes them before computing, so a sample has both its
file and its field, or neither.

Compute: per chunk, images whose model inputs have the same shape share one batched forward +
backward (engine.explain_many), which feeds every method and layer of each image. The heatmaps
are then computed one by one: progress is reported per heatmap (and inside slow ones, e.g.
Score-CAM), and a cancel takes effect at the next heatmap or inside the current one. Computed
samples are written once per chunk, except a slow one (its heatmaps took FLUSH_SECONDS or more,
e.g. Score-CAM): it is written, and counted done, as soon as it is computed.

Failures: a sample that cannot be read, computed or validated for writing (e.g. a heatmap whose
size disagrees with the sample's metadata) is reported in ``BatchReport.failed`` and the others
are written; a database error (StoreError) aborts the run.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import fiftyone as fo
import torch

from camcore import store
from camcore import targets as targets_mod
from camcore.engine import explain_many
from camcore.errors import CamError, Cancelled, MethodError, StoreError, first_line
from camcore.images import LoadedImage, load_image
from camcore.methods import get_method
from camcore.models import ModelSpec, get_spec, load_model

PREDICTED = "predicted"
LOAD_THREADS = 4
STALE_TEMP_SECONDS = 3600  # a temp PNG lives for one write; older ones were left by a crash
FLUSH_SECONDS = 2.0  # a sample whose heatmaps took this long is written at once, not with its chunk
PROGRESS_INTERVAL = 0.25  # seconds between progress calls about computing (writes always report)
# progress(done, total, rate per second, eta seconds or None, message): done counts samples
# written; rate and eta come from the heatmaps computed so far (in samples per second).
BatchProgress = Callable[[int, int, float, "float | None", str], None]


@dataclass
class BatchReport:
    done: int = 0  # samples written in this run
    skipped: int = 0  # samples already done with the same provenance
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample id, one-line reason)
    fields: set[str] = field(default_factory=set)  # every field the run covers, written to or not
    seconds: float = 0.0
    cancelled: bool = False
    removed_orphans: int = 0  # PNGs without a field, left by an interrupted run

    def to_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped,
                "failed": [{"sample_id": s, "error": m} for s, m in self.failed],
                "fields": sorted(self.fields), "seconds": round(self.seconds, 3),
                "cancelled": self.cancelled, "removed_orphans": self.removed_orphans}


@dataclass(frozen=True)
class _Job:
    method: str
    layer: str
    field: str
    provenance: dict


def _provenance(model: str, weights: str, method: str, layer: str, target_rule: str,
                eigen_smooth: bool, input_size: int | None) -> dict:
    return {"model": model, "weights": weights, "method": method, "layer": layer,
            "target_request": target_rule, "eigen_smooth": bool(eigen_smooth),
            "input_size_request": int(input_size or 0)}


def _attr(label, name):
    try:
        return label[name]
    except (KeyError, AttributeError):
        return None


def _is_done(label, provenance: dict) -> bool:
    if not isinstance(label, fo.Heatmap) or not label.map_path or not os.path.isfile(label.map_path):
        return False
    return all(_attr(label, k) == v for k, v in provenance.items())


def _remove_orphans(dataset: fo.Dataset, field_name: str, ids: Sequence[str], pointed: set[str],
                    heatmap_dir) -> int:
    """Delete the PNGs of this run's samples that no label of the field points at, and temp files
    older than STALE_TEMP_SECONDS. Files of other samples are left alone: another writer (a Ray
    worker, another batch) may be between writing its PNGs and its set_values for them."""
    folder = store.heatmap_path(dataset.name, field_name, "x", heatmap_dir).parent
    if not folder.is_dir():
        return 0
    removed = 0
    now = time.time()
    for sid in ids:
        path = store.heatmap_path(dataset.name, field_name, sid, heatmap_dir)
        if str(path) not in pointed and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    for path in folder.glob(".tmp-*"):
        try:
            if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                path.unlink(missing_ok=True)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


@dataclass(frozen=True)
class BatchRequest:
    """A checked batch request: names resolved, every method usable on the model."""

    spec: ModelSpec
    methods: tuple[str, ...]
    layers: tuple[str, ...]
    rule: str  # "predicted", or the class name
    target_request: str | None  # what the explainer is asked for (None: each image's prediction)

    def variant(self, method: str, eigen_smooth: bool, pretrained: bool, weights_tag: str = "") -> str:
        return store.field_variant(eigen_smooth=_eigen(method, eigen_smooth), pretrained=pretrained,
                                   weights_tag=weights_tag)

    def field_name(self, method: str, layer: str, eigen_smooth: bool = False, pretrained: bool = True,
                   weights_tag: str = "") -> str:
        """The field run_batch writes (method, layer) into: the same name push_many gives it."""
        return store.heatmap_field_name(self.spec.key, method, layer, self.rule,
                                        self.variant(method, eigen_smooth, pretrained, weights_tag))

    def declare_fields(self, dataset: fo.Dataset, input_size: int | None, eigen_smooth: bool = False,
                       pretrained: bool = True, weights_tag: str = "") -> list[str]:
        """Create (or check) every field of the request, all label attributes declared."""
        extra = label_extra(self.rule, input_size)
        return [store.declare_heatmap_field(dataset, self.spec.key, m, layer, self.rule, extra,
                                            self.variant(m, eigen_smooth, pretrained, weights_tag))
                for m in self.methods for layer in self.layers]


def _eigen(method: str, eigen_smooth: bool) -> bool:
    """eigen_smooth as the engine applies it, and as the label stores it (Eigen-CAM has none)."""
    return bool(eigen_smooth and get_method(method).supports_eigen_smooth)


def label_extra(rule: str, input_size: int | None) -> dict:
    """The batch's own attributes on every label, beside the engine's provenance."""
    return {"target_request": rule, "input_size_request": int(input_size or 0)}


def check_request(model_key: str, methods: Sequence[str], layers: Sequence[str] | None,
                  target_rule: str) -> BatchRequest:
    """Resolve and check the names of a batch before anything is loaded or written."""
    spec = get_spec(model_key)
    layer_names = tuple(dict.fromkeys(spec.layer(n).name for n in (layers or [spec.default_layer])))
    method_keys = tuple(dict.fromkeys(get_method(m).key for m in methods))
    if not method_keys:
        raise MethodError("choose at least one method")
    for m in method_keys:
        reason = get_method(m).unsupported_reason(spec.task, spec.family)
        if reason:
            raise MethodError(f"{reason} (model '{spec.key}')")
        if get_method(m).layer_independent:
            raise MethodError(f"{m} is not offered in batches yet (it ignores layers)")
    rule = str(target_rule or PREDICTED).strip()
    if rule.lower() == PREDICTED:
        return BatchRequest(spec, method_keys, layer_names, PREDICTED, None)
    rule = spec.class_names()[targets_mod.class_index(spec.class_names(), rule)]
    return BatchRequest(spec, method_keys, layer_names, rule, rule)


def _load_or_error(path: str) -> LoadedImage | CamError:
    try:
        return load_image(path)
    except CamError as exc:
        return exc


def run_batch(
    dataset_or_view: fo.Dataset | fo.DatasetView,
    model_key: str,
    weights: str = "auto",
    methods: Sequence[str] = ("gradcam",),
    layers: Sequence[str] | None = None,
    target_rule: str = PREDICTED,
    eigen_smooth: bool = False,
    input_size: int | None = None,
    chunk: int = 8,
    progress: BatchProgress | None = None,
    cancel: threading.Event | None = None,
    heatmap_dir: str | Path | None = None,
    device: str | None = None,
) -> BatchReport:
    """Compute and store heatmaps for every sample of a view; see the module docstring."""
    started = time.perf_counter()
    report = BatchReport()
    request = check_request(model_key, methods, layers, target_rule)
    spec, rule, target_request = request.spec, request.rule, request.target_request
    chunk = max(1, int(chunk))

    dataset = store._root(dataset_or_view)
    store.require_image(dataset)
    model = load_model(spec.key, weights, device)
    jobs = []
    for m in request.methods:
        for layer in request.layers:
            name = request.field_name(m, layer, eigen_smooth, model.pretrained, model.weights_tag)
            jobs.append(_Job(m, layer, name, _provenance(spec.key, model.weights_label, m, layer, rule,
                                                         _eigen(m, eigen_smooth), input_size)))

    # What is done already, and the clean-up of an interrupted run's files.
    ids, paths = dataset_or_view.values(["id", "filepath"])
    todo: dict[str, list[_Job]] = {sid: [] for sid in ids}
    extra = label_extra(rule, input_size)
    # Declared before any compute: a field that is not ours fails here, and writers in other
    # processes find the schema complete.
    request.declare_fields(dataset, input_size, eigen_smooth, model.pretrained, model.weights_tag)
    for job in jobs:
        labels = dataset_or_view.values(job.field)
        pointed = {label.map_path for label in labels if isinstance(label, fo.Heatmap) and label.map_path}
        report.removed_orphans += _remove_orphans(dataset, job.field, ids, pointed, heatmap_dir)
        for sid, label in zip(ids, labels):
            if not _is_done(label, job.provenance):
                todo[sid].append(job)
    pending = [(sid, path) for sid, path in zip(ids, paths) if todo[sid]]
    report.skipped = len(ids) - len(pending)
    report.fields = {job.field for job in jobs}  # also when everything is skipped: what the run covers
    total = len(pending)
    # Rate and ETA come from the work computed (heatmaps, and fractions of the slow ones), so they
    # exist before the first write and move within a chunk. Failed samples count as settled work.
    work_total = sum(len(todo[sid]) for sid, _p in pending) or 1
    work = {"settled": 0.0, "current": 0.0}
    last_told = [0.0]

    def tell(message: str, force: bool = True) -> None:
        if progress is None:
            return
        now = time.perf_counter()
        if not force and now - last_told[0] < PROGRESS_INTERVAL:
            return
        last_told[0] = now
        elapsed = now - compute_started
        worked = min(work_total, work["settled"] + work["current"])
        per_second = worked / elapsed if elapsed > 0 else 0.0  # heatmaps per second
        rate = per_second * total / work_total
        eta = (work_total - worked) / per_second if per_second > 0 else None
        progress(report.done, total, rate, eta, message)

    compute_started = time.perf_counter()
    tell(f"{report.skipped} already done, {total} to compute")

    def write(groups: list[list[tuple[str, object]]]) -> tuple[set[str], int, list[tuple[str, str]]]:
        """Computed results (grouped by their fields): PNGs, then one set_values per field.
        A group that fails validation (say a heatmap whose size disagrees with a sample's metadata)
        is written sample by sample, so only the bad samples fail; database errors abort."""
        fields: set[str] = set()
        count, failures = 0, []
        for items in groups:
            try:
                fields.update(store.push_many(dataset, items, target_label=rule, extra=extra,
                                              heatmap_dir=heatmap_dir))
                count += len(items)
                continue
            except StoreError:
                raise
            except CamError:
                pass
            for sid, result in items:  # some sample is invalid: find it, write the others
                try:
                    fields.update(store.push_many(dataset, [(sid, result)], target_label=rule, extra=extra,
                                                  heatmap_dir=heatmap_dir))
                    count += 1
                except StoreError:
                    raise
                except CamError as exc:
                    failures.append((sid, first_line(exc)))
        return fields, count, failures

    # Writes run in the background while the next samples compute; at most one is in flight, and
    # samples are reported done only when their write has finished.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam-batch-write")
    writing: Future | None = None
    buffered: dict[tuple[str, ...], list[tuple[str, object]]] = {}  # computed, not yet submitted

    def settle() -> None:
        nonlocal writing
        if writing is not None:
            future, writing = writing, None
            fields, count, failures = future.result()
            report.fields.update(fields)
            report.done += count
            for sid, reason in failures:
                report.failed.append((sid, reason))
            tell(f"wrote {report.done}/{total}" + (f", {len(failures)} failed" if failures else ""))

    def submit() -> None:
        """Write what is buffered (after the write in flight, if any, has finished)."""
        nonlocal writing, buffered
        settle()
        if buffered:
            writing = writer.submit(write, list(buffered.values()))
            buffered = {}

    def poll() -> None:
        """Count a write that has finished (without waiting for one that has not)."""
        if writing is not None and writing.done():
            settle()

    def fail(sid: str, path: str, exc: BaseException, work_left: int) -> None:
        report.failed.append((sid, first_line(exc)))
        work["settled"] += work_left
        tell(f"failed {os.path.basename(path)}")

    def cancelled() -> bool:
        if cancel is not None and cancel.is_set():
            report.cancelled = True
        return report.cancelled

    # Images of the next chunk are decoded in threads while this chunk computes.
    loader = ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="cam-batch-load")
    chunks = [pending[k:k + chunk] for k in range(0, total, chunk)]

    def load(items: list[tuple[str, str]]) -> list[Future]:
        return [loader.submit(_load_or_error, path) for _sid, path in items]

    def compute(sid: str, path: str, explainer) -> list | CamError | None:
        """The sample's heatmaps, one by one, with progress and cancel; None when cancelled, the
        error when one fails. (Write errors from poll() are not the sample's: they propagate.)"""
        sample_jobs = todo[sid]
        name = os.path.basename(path)
        heatmaps = []
        for i, j in enumerate(sample_jobs):
            if cancelled():
                return None

            def inside(fraction: float, message: str, j=j) -> None:
                work["current"] = max(0.0, min(1.0, float(fraction)))
                tell(f"{name}: {j.method} on {j.layer} {work['current']:.0%}", force=False)

            try:
                heatmaps.append(explainer.heatmap(j.method, j.layer, eigen_smooth, inside, cancel))
            except Cancelled:
                report.cancelled = True
                return None
            except CamError as exc:
                work["current"] = 0.0
                work["settled"] += len(sample_jobs) - i
                return exc
            work["current"] = 0.0
            work["settled"] += 1
            tell(f"{name}: {j.method} on {j.layer}", force=False)
            poll()
        return heatmaps

    next_loads = load(chunks[0]) if chunks else []
    try:
        with torch.enable_grad():
            for n, items in enumerate(chunks):
                if cancelled():
                    break
                loads, next_loads = next_loads, (load(chunks[n + 1]) if n + 1 < len(chunks) else [])
                loaded = []
                for (sid, path), future in zip(items, loads):
                    image = future.result()
                    if isinstance(image, CamError):
                        fail(sid, path, image, len(todo[sid]))
                    else:
                        loaded.append((sid, path, image))
                chunk_layers = list(dict.fromkeys(j.layer for sid, _p, _i in loaded for j in todo[sid]))
                explainers = explain_many(model, [img for _s, _p, img in loaded], target_request, chunk_layers,
                                          input_size, max_batch=chunk)
                for (sid, path, _img), explainer in zip(loaded, explainers):
                    if cancelled():
                        break
                    if isinstance(explainer, CamError):
                        fail(sid, path, explainer, len(todo[sid]))
                        continue
                    began = time.perf_counter()
                    heatmaps = compute(sid, path, explainer)
                    if heatmaps is None:  # cancelled: this sample's heatmaps are dropped, not written
                        break
                    try:
                        if isinstance(heatmaps, CamError):
                            raise heatmaps
                        result = explainer.result(heatmaps)
                    except CamError as exc:
                        fail(sid, path, exc, 0)
                        continue
                    buffered.setdefault(tuple(j.field for j in todo[sid]), []).append((sid, result))
                    if time.perf_counter() - began >= FLUSH_SECONDS:
                        submit()  # a slow sample: written (and counted) now, not with its chunk
                    else:
                        poll()
                submit()
            submit()  # also after a cancel: what was computed is written
            settle()
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    report.seconds = time.perf_counter() - started
    tell("cancelled" if report.cancelled else "finished")
    return report
