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

Compute is one Explainer pass per image (one forward + backward feeds every method and layer).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fiftyone as fo
import torch

from camcore import store
from camcore import targets as targets_mod
from camcore.engine import Explainer
from camcore.errors import CamError, MethodError
from camcore.images import load_image
from camcore.methods import get_method
from camcore.models import get_spec, load_model

PREDICTED = "predicted"
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


def _remove_orphans(dataset: fo.Dataset, field_name: str, pointed: set[str], heatmap_dir) -> int:
    """Delete PNGs (and temp files) in the field's folder that no label of the field points at."""
    folder = store.heatmap_path(dataset.name, field_name, "x", heatmap_dir).parent
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        if path.is_file() and str(path) not in pointed and (path.suffix == ".png"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


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
    spec = get_spec(model_key)
    layer_names = list(dict.fromkeys(spec.layer(n).name for n in (layers or [spec.default_layer])))
    method_keys = list(dict.fromkeys(get_method(m).key for m in methods))
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
        rule, target_request = PREDICTED, None
    else:
        rule = spec.class_names()[targets_mod.class_index(spec.class_names(), rule)]
        target_request = rule
    chunk = max(1, int(chunk))

    dataset = store._root(dataset_or_view)
    store.require_image(dataset)
    model = load_model(spec.key, weights, device)
    jobs = []
    for m in method_keys:
        for layer in layer_names:
            name = store.heatmap_field_name(spec.key, m, layer, rule)
            jobs.append(_Job(m, layer, name, _provenance(spec.key, model.weights_label, m, layer, rule,
                                                         eigen_smooth, input_size)))

    # What is done already, and the clean-up of an interrupted run's files.
    ids, paths = dataset_or_view.values(["id", "filepath"])
    todo: dict[str, list[_Job]] = {sid: [] for sid in ids}
    for job in jobs:
        if dataset.get_field(job.field) is None:
            labels = [None] * len(ids)
            all_pointed: set[str] = set()
        else:
            store._check_field(dataset, job.field, store._meaning(spec.key, job.method, job.layer, rule))
            labels = dataset_or_view.values(job.field)
            all_pointed = {p for p in dataset.values(f"{job.field}.map_path") if p}
        report.removed_orphans += _remove_orphans(dataset, job.field, all_pointed, heatmap_dir)
        for sid, label in zip(ids, labels):
            if not _is_done(label, job.provenance):
                todo[sid].append(job)
    pending = [(sid, path) for sid, path in zip(ids, paths) if todo[sid]]
    report.skipped = len(ids) - len(pending)
    total = len(pending)
    extra_by_job = {job.field: {"target_request": rule, "input_size_request": int(input_size or 0)}
                    for job in jobs}

    def tell(message: str) -> None:
        if progress is None:
            return
        elapsed = time.perf_counter() - started
        rate = report.done / elapsed if elapsed > 0 and report.done else 0.0
        eta = (total - report.done - len(report.failed)) / rate if rate > 0 else None
        progress(report.done, total, rate, eta, message)

    tell(f"{report.skipped} already done, {total} to compute")
    buffer: dict[tuple[str, ...], list[tuple[str, object]]] = {}  # job fields -> [(sid, result)]

    def flush() -> None:
        for fields_key, items in buffer.items():
            # extra attributes are the same for every job of a run
            written = store.push_many(dataset, items, target_label=rule, extra=extra_by_job[fields_key[0]],
                                      heatmap_dir=heatmap_dir)
            report.fields.update(written)
            report.done += len(items)
        buffer.clear()

    in_buffer = 0
    with torch.enable_grad():
        for sid, path in pending:
            if cancel is not None and cancel.is_set():
                report.cancelled = True
                break
            try:
                image = load_image(path)
                sample_jobs = todo[sid]
                explainer = Explainer(model, image, target_request, tuple(j.layer for j in sample_jobs),
                                      False, input_size)
                heatmaps = [explainer.heatmap(j.method, j.layer, eigen_smooth) for j in sample_jobs]
                result = explainer.result(heatmaps)
            except CamError as exc:
                text = str(exc).strip()
                report.failed.append((sid, text.splitlines()[0] if text else type(exc).__name__))
                tell(f"failed {os.path.basename(path)}")
                continue
            key = tuple(j.field for j in sample_jobs)
            buffer.setdefault(key, []).append((sid, result))
            in_buffer += 1
            if in_buffer >= chunk:
                flush()
                in_buffer = 0
                tell(f"wrote {report.done}/{total}")
        if in_buffer:  # also after a cancel: what was computed is written
            flush()
    report.seconds = time.perf_counter() - started
    tell("cancelled" if report.cancelled else "finished")
    return report
