"""Heatmaps for a whole view: resumable, written in bulk, with progress and cancel.

Never imports streamlit. One field per (model, method, layer, target rule): with the rule
"predicted" every sample is explained for its own predicted class, the field is
``cam_<model>_<method>_<layer>_predicted`` and the class lives in each label's ``target``.

Resuming: a sample is skipped for a field when its label there has the same provenance
(model, weights label, method, layer, target rule, eigen smoothing, input size) and its PNG
exists. Per chunk, every PNG is written first (atomically), then one ``set_values`` per
field; a sample is reported done only after that. A crash between the two leaves PNGs that
no field points at: the next run deletes them before computing, so a sample has both its
file and its field, or neither.

Compute: per chunk, images whose model inputs have the same shape share one batched forward +
backward (engine.explain_many), which feeds every method and layer of each image.
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
from camcore.errors import CamError, MethodError
from camcore.images import LoadedImage, load_image
from camcore.methods import get_method
from camcore.models import ModelSpec, get_spec, load_model

PREDICTED = "predicted"
LOAD_THREADS = 4
STALE_TEMP_SECONDS = 3600  # a temp PNG lives for one write; older ones were left by a crash
# progress(done, total, rate per second, eta seconds or None, message)
BatchProgress = Callable[[int, int, float, "float | None", str], None]


@dataclass
class BatchReport:
    done: int = 0  # samples written in this run
    skipped: int = 0  # samples already done with the same provenance
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample id, one-line reason)
    fields: set[str] = field(default_factory=set)
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

    def declare_fields(self, dataset: fo.Dataset, input_size: int | None) -> list[str]:
        """Create (or check) every field of the request, all label attributes declared."""
        extra = label_extra(self.rule, input_size)
        return [store.declare_heatmap_field(dataset, self.spec.key, m, l, self.rule, extra)
                for m in self.methods for l in self.layers]


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
            name = store.heatmap_field_name(spec.key, m, layer, rule)
            jobs.append(_Job(m, layer, name, _provenance(spec.key, model.weights_label, m, layer, rule,
                                                         eigen_smooth, input_size)))

    # What is done already, and the clean-up of an interrupted run's files.
    ids, paths = dataset_or_view.values(["id", "filepath"])
    todo: dict[str, list[_Job]] = {sid: [] for sid in ids}
    extra = label_extra(rule, input_size)
    # Declared before any compute: a field that is not ours fails here, and writers in other
    # processes find the schema complete.
    request.declare_fields(dataset, input_size)
    for job in jobs:
        labels = dataset_or_view.values(job.field)
        pointed = {label.map_path for label in labels if isinstance(label, fo.Heatmap) and label.map_path}
        report.removed_orphans += _remove_orphans(dataset, job.field, ids, pointed, heatmap_dir)
        for sid, label in zip(ids, labels):
            if not _is_done(label, job.provenance):
                todo[sid].append(job)
    pending = [(sid, path) for sid, path in zip(ids, paths) if todo[sid]]
    report.skipped = len(ids) - len(pending)
    total = len(pending)

    def tell(message: str) -> None:
        if progress is None:
            return
        elapsed = time.perf_counter() - started
        rate = report.done / elapsed if elapsed > 0 and report.done else 0.0
        eta = (total - report.done - len(report.failed)) / rate if rate > 0 else None
        progress(report.done, total, rate, eta, message)

    tell(f"{report.skipped} already done, {total} to compute")

    def write(groups: list[list[tuple[str, object]]]) -> tuple[set[str], int]:
        """One chunk's results (grouped by their fields): PNGs, then one set_values per field."""
        fields: set[str] = set()
        for items in groups:
            fields.update(store.push_many(dataset, items, target_label=rule, extra=extra, heatmap_dir=heatmap_dir))
        return fields, sum(len(items) for items in groups)

    # A chunk is written in the background while the next one computes; at most one write is in
    # flight, and samples are reported done only when their write has finished.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam-batch-write")
    writing: Future | None = None

    def settle() -> None:
        nonlocal writing
        if writing is not None:
            future, writing = writing, None
            fields, count = future.result()
            report.fields.update(fields)
            report.done += count
            tell(f"wrote {report.done}/{total}")

    def fail(sid: str, path: str, exc: BaseException) -> None:
        text = str(exc).strip()
        report.failed.append((sid, text.splitlines()[0] if text else type(exc).__name__))
        tell(f"failed {os.path.basename(path)}")

    # Images of the next chunk are decoded in threads while this chunk computes.
    loader = ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="cam-batch-load")
    chunks = [pending[k:k + chunk] for k in range(0, total, chunk)]

    def load(items: list[tuple[str, str]]) -> list[Future]:
        return [loader.submit(_load_or_error, path) for _sid, path in items]

    next_loads = load(chunks[0]) if chunks else []
    try:
        with torch.enable_grad():
            for n, items in enumerate(chunks):
                if cancel is not None and cancel.is_set():
                    report.cancelled = True
                    break
                loads, next_loads = next_loads, (load(chunks[n + 1]) if n + 1 < len(chunks) else [])
                loaded, groups = [], {}
                for (sid, path), future in zip(items, loads):
                    image = future.result()
                    if isinstance(image, CamError):
                        fail(sid, path, image)
                    else:
                        loaded.append((sid, path, image))
                chunk_layers = list(dict.fromkeys(j.layer for sid, _p, _i in loaded for j in todo[sid]))
                explainers = explain_many(model, [img for _s, _p, img in loaded], target_request, chunk_layers,
                                          input_size, max_batch=chunk)
                for (sid, path, _img), explainer in zip(loaded, explainers):
                    try:
                        if isinstance(explainer, CamError):
                            raise explainer
                        sample_jobs = todo[sid]
                        heatmaps = [explainer.heatmap(j.method, j.layer, eigen_smooth) for j in sample_jobs]
                        result = explainer.result(heatmaps)
                    except CamError as exc:
                        fail(sid, path, exc)
                        continue
                    groups.setdefault(tuple(j.field for j in sample_jobs), []).append((sid, result))
                settle()
                if groups:
                    writing = writer.submit(write, list(groups.values()))
            settle()  # also after a cancel: what was computed is written
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    report.seconds = time.perf_counter() - started
    tell("cancelled" if report.cancelled else "finished")
    return report
