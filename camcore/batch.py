"""Heatmaps for a whole view: resumable, written in bulk, with progress and cancel.

Never imports streamlit. One field per (model, method, layer, target rule): with the rule
"predicted" every sample is explained for its own predicted class, the field is
``cam_<model>_<method>_<layer>_predicted`` and the class lives in each label's ``target``.

Resuming: a sample is skipped for a field when its label there has the same provenance
(model, weights label and the weights file's content hash, method, layer, target rule, eigen
smoothing, the input size the model runs at) and its PNG exists. What is done is found page
by page (PAGE_SIZE samples: ids, paths and the run's labels, keyset-paged on _id) as the run
reaches it, never for the whole view up front: the first chunk starts at once and memory stays
flat on any size of view. Samples are computed in _id order, whatever the view's sort.

Writes (store.push_many with the run's store.HeatmapWriter): each map goes to a new file
(``<sample id>-<write id>.png``), then one ``set_values`` per field, then the files the labels
pointed at before are deleted (in groups, each only if no label of any dataset references it); a
sample is reported done only after its set_values. A crash at any step leaves every label with the
file it was written with, and the run's journal: the next run's store.clean_orphans deletes what
no label references (never a file of a writer still running).

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
from collections.abc import Callable, Iterator, Sequence
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
from camcore.models import LoadedModel, ModelSpec, get_spec, load_model

PREDICTED = "predicted"
LOAD_THREADS = 4
STALE_TEMP_SECONDS = store.STALE_TEMP_SECONDS  # a temp PNG older than this was left by a crash
PAGE_SIZE = 1000  # samples read at a time (ids, paths and the run's labels): memory stays flat
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


def _provenance(model: LoadedModel, method: str, layer: str, target_rule: str, eigen_smooth: bool,
                input_size: int | None) -> dict:
    """What a label must say for its map to count as done: beside the names, the weights file's
    content hash (two files called model.pth in two folders, or one file replaced, are different
    weights) and the size the model runs at (a map made at another size is made again)."""
    return {"model": model.spec.key, "weights": model.weights_label, "method": method, "layer": layer,
            "target_request": target_rule, "eigen_smooth": bool(eigen_smooth),
            "weights_sha256": model.weights.sha256, "input_size": model.spec.input_size(input_size)}


def _attr(label, name):
    try:
        return label[name]
    except (KeyError, AttributeError):
        return None


def _is_done(label, provenance: dict) -> bool:
    if not isinstance(label, fo.Heatmap) or not label.map_path or not os.path.isfile(label.map_path):
        return False
    return all(_attr(label, k) == v for k, v in provenance.items())


def _stored_done(doc, provenance: dict) -> bool:
    """_is_done on a label as stored (the dict values(_raw=True) gives): the same test, without
    building the label object, which takes FiftyOne milliseconds per label (hours over a
    million samples on a resume). tests/test_batch_paging.py checks that the two agree."""
    if not isinstance(doc, dict) or doc.get("_cls") != "Heatmap":
        return False
    if any(doc.get(k) != v for k, v in provenance.items()):
        return False
    path = doc.get("map_path")
    return bool(path) and os.path.isfile(path)


def _not_done_filter(jobs: Sequence[_Job]) -> dict:
    """A MongoDB filter for samples whose label, for some job, does not look done (what
    _stored_done checks, but the file): absent, not a Heatmap, no map_path, other provenance."""
    ors: list[dict] = []
    for job in jobs:
        f = job.field
        ors += [{f: None}, {f"{f}._cls": {"$ne": "Heatmap"}}, {f"{f}.map_path": {"$in": [None, ""]}}]
        ors += [{f"{f}.{k}": {"$ne": v}} for k, v in job.provenance.items()]
    return {"$or": ors}


def _first_pending(view: fo.Dataset | fo.DatasetView, jobs: Sequence[_Job]):
    """The _id of the first sample (in _id order) that does not look done, found by the server;
    None when every sample looks done. A run killed half-way resumes there at once instead of
    checking every done sample before its first chunk; the samples before it are checked (their
    files) after the others."""
    found = view.match(_not_done_filter(jobs)).sort_by("_id", create_index=False).limit(1).values("_id")
    return found[0] if found else None


def _pages(view: fo.Dataset | fo.DatasetView, dataset: fo.Dataset, fields: Sequence[str],
           size: int, bounds: dict | None = None) -> Iterator[list[tuple[str, str, list]]]:
    """The view's samples, a page at a time, as (id, filepath, [stored label of each field]), in
    _id order; a stored label is the document as a dict (see _stored_done), or None.

    Keyset paging (``_id > last``, sorted by _id, limited) on the view's own stages: each page costs
    the same however far the run is (no skip), and samples this run writes meanwhile are neither
    repeated nor missed, even in a view that filters on the fields being written. The labels come
    from the dataset by id (our fields are top-level): a view may exclude or filter them.
    bounds: an _id range to stay in ({"$gte": id}, {"$lt": id})."""
    last = None
    while True:
        keys = {**(bounds or {}), **({"$gt": last} if last is not None else {})}
        page = view.match({"_id": keys}) if keys else view
        oids, paths = page.sort_by("_id", create_index=False).limit(size).values(["_id", "filepath"])
        if not oids:
            return
        ids = [str(oid) for oid in oids]
        labels: dict[str, list] = {}
        if fields:  # one indexed find on the sample collection: several times faster than select()
            docs = dataset._sample_collection.find({"_id": {"$in": oids}}, {f: 1 for f in fields})
            labels = {str(d["_id"]): [d.get(f) for f in fields] for d in docs}
        yield [(sid, path, labels.get(sid, [None] * len(fields))) for sid, path in zip(ids, paths)]
        if len(oids) < size:
            return
        last = oids[-1]


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
            jobs.append(_Job(m, layer, name, _provenance(model, m, layer, rule, _eigen(m, eigen_smooth),
                                                         input_size)))

    # Declared before any compute: a field that is not ours fails here, and writers in other
    # processes find the schema complete.
    extra = label_extra(rule, input_size)
    request.declare_fields(dataset, input_size, eigen_smooth, model.pretrained, model.weights_tag)
    report.fields = {job.field for job in jobs}  # also when everything is skipped: what the run covers
    # What interrupted writers left (never a file a label references or a live writer holds).
    report.removed_orphans += store.clean_orphans(dataset, heatmap_dir)
    # What is done already is found page by page as the run reaches it, never for the whole view
    # up front: the first chunk starts at once and memory stays flat on any size of view.
    view_total = dataset_or_view.count()  # one server-side count, for progress
    todo: dict[str, list[_Job]] = {}  # samples found to compute and not settled yet -> their jobs
    # Where a resumed run starts: the first sample whose label does not look done. Those before it
    # (done by the killed run) are presumed done, and checked (their files) after the others.
    first = _first_pending(dataset_or_view, jobs)
    head = dataset_or_view.match({"_id": {"$lt": first}}).count() if first is not None else view_total
    # samples paged so far; heatmaps found to compute among them; presumed done, not checked yet
    seen = {"samples": 0, "work": 0, "presumed": head}

    def total() -> int:
        """Samples to compute: the view less those found or presumed done (exact at the end)."""
        return max(0, view_total - report.skipped - seen["presumed"])

    def work_total() -> int:
        """Heatmaps to compute: those found, plus every job of the samples not paged or presumed."""
        return max(1, seen["work"] + max(0, view_total - seen["samples"] - seen["presumed"]) * len(jobs))

    def pending_chunks() -> Iterator[list[tuple[str, str]]]:
        items: list[tuple[str, str]] = []
        fields = [job.field for job in jobs]
        segments = [] if first is None else [({"$gte": first}, False)]
        segments.append(({"$lt": first} if first is not None else None, True))  # the presumed ones
        for page, presumed in ((page, presumed) for bounds, presumed in segments
                               for page in _pages(dataset_or_view, dataset, fields, PAGE_SIZE, bounds)):
            for sid, path, labels in page:
                seen["samples"] += 1
                if presumed:
                    seen["presumed"] -= 1
                left = [job for job, doc in zip(jobs, labels) if not _stored_done(doc, job.provenance)]
                if not left:
                    report.skipped += 1
                    continue
                todo[sid] = left
                seen["work"] += len(left)
                items.append((sid, path))
                if len(items) == chunk:
                    yield items
                    items = []
        if items:
            yield items

    # Rate and ETA come from the work computed (heatmaps, and fractions of the slow ones), so they
    # exist before the first write and move within a chunk. Failed samples count as settled work.
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
        planned = work_total()
        worked = min(planned, work["settled"] + work["current"])
        per_second = worked / elapsed if elapsed > 0 else 0.0  # heatmaps per second
        rate = per_second * total() / planned
        eta = (planned - worked) / per_second if per_second > 0 else None
        progress(report.done, total(), rate, eta, message)

    compute_started = time.perf_counter()
    tell(f"{view_total} samples in the view; those already done are skipped as the run reaches them")

    def write(groups: list[list[tuple[str, object]]]) -> tuple[set[str], int, list[tuple[str, str]]]:
        """Computed results (grouped by their fields): PNGs, then one set_values per field.
        A group that fails validation (say a heatmap whose size disagrees with a sample's metadata)
        is written sample by sample, so only the bad samples fail; database errors abort."""
        fields: set[str] = set()
        count, failures = 0, []
        for items in groups:
            try:
                fields.update(store.push_many(dataset, items, target_label=rule, extra=extra,
                                              heatmap_dir=heatmap_dir, writer=journal))
                count += len(items)
                continue
            except StoreError:
                raise
            except CamError:
                pass
            for sid, result in items:  # some sample is invalid: find it, write the others
                try:
                    fields.update(store.push_many(dataset, [(sid, result)], target_label=rule, extra=extra,
                                                  heatmap_dir=heatmap_dir, writer=journal))
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
            tell(f"wrote {report.done}/{total()}" + (f", {len(failures)} failed" if failures else ""))

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
        todo.pop(sid, None)  # settled: only samples in flight stay in memory
        work["settled"] += work_left
        tell(f"failed {os.path.basename(path)}")

    def cancelled() -> bool:
        if cancel is not None and cancel.is_set():
            report.cancelled = True
        return report.cancelled

    # Images of the next chunk are decoded in threads while this chunk computes.
    loader = ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="cam-batch-load")
    chunks = pending_chunks()  # a page is read when the loop reaches it (milliseconds)

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

    # The run's journal of the files it writes and replaces (store.HeatmapWriter): replaced files
    # are deleted in groups, and a crash leaves the journal for the next run's clean-up.
    journal = store.HeatmapWriter(dataset.name, heatmap_dir)
    coming = next(chunks, None)
    next_loads = load(coming) if coming else []
    failed_run = True
    try:
        with torch.enable_grad():
            while coming is not None:
                if cancelled():
                    break
                items, coming = coming, next(chunks, None)
                loads, next_loads = next_loads, (load(coming) if coming else [])
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
                    buffered.setdefault(tuple(j.field for j in todo.pop(sid)), []).append((sid, result))
                    if time.perf_counter() - began >= FLUSH_SECONDS:
                        submit()  # a slow sample: written (and counted) now, not with its chunk
                    else:
                        poll()
                submit()
            submit()  # also after a cancel: what was computed is written
            settle()
        failed_run = False
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
        journal.close(ok=not failed_run)
    report.seconds = time.perf_counter() - started
    tell("cancelled" if report.cancelled else "finished")
    return report
