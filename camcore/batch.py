"""Heatmaps for a whole view: resumable, written in bulk, with progress and cancel.

Never imports streamlit. What to compute is one :class:`BatchOptions` (camcore.batch_options,
checked there without torch, re-exported here: model, weights, methods, layers, target rule,
smoothing, input size, chunk, device, heatmap folder), shared by
:func:`run_batch`, the Ray driver and its workers (camcore.distributed), the CLI's ``batch`` and
the Batch page. One field per (model, method, layer, target rule), named by its
:class:`~camcore.identity.HeatmapIdentity`, built once per run: with the rule
``predicted`` every sample is explained for its own predicted class, the field is
``cam_<method>_<layer>_<model>[_variant]`` (no target part) and the class lives in each label's
``target``; the rule itself is each label's ``target_request``.

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
backward (engine.explain_many), which feeds every method and layer of each image. A detector's
several box rules (top:<k>, a field's boxes) are one run: per image one forward kept with its
graph (engine.KeptForward), then per box one backward (gradient methods) or nothing (Eigen-CAM). The heatmaps
are then computed one by one (engine.iter_heatmaps): progress is reported per heatmap (and inside
slow ones, e.g. Score-CAM), and a cancel takes effect at the next heatmap or inside the current
one. Computed samples are written once per chunk, except a slow one (its heatmaps took
FLUSH_SECONDS or more, e.g. Score-CAM): it is written, and counted done, as soon as it is computed.

Failures: a sample that cannot be read, computed or validated for writing (e.g. a heatmap whose
size disagrees with the sample's metadata) is reported in ``BatchReport.failed`` and the others
are written; a database error (StoreError) aborts the run.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from camcore import detection, store
from camcore.batch_options import (  # re-exported: what a batch computes, checked without torch
    PREDICTED,
    BatchOptions,
    BoxFacts,
    TargetRule,
    box_batches,
    forget_shared_facts,
    shared_facts,
)
from camcore.engine import Explainer, KeptForward, explain_many, iter_heatmaps
from camcore.errors import CamError, Cancelled, StoreError, first_line
from camcore.identity import HeatmapIdentity
from camcore.images import LoadedImage, load_image
from camcore.measures import (
    ObjectLabel,
    measure,
    object_label,
    sample_item,
)
from camcore.models import LoadedModel, load_model
from camcore.progress import BatchProgress, Meter
from camcore.results import CamResult, Heatmap
from camcore.store import audit as audit_store
from camcore.store import measures as measure_store
from camcore.store import scan
from camcore.store.scan import Collection

LOAD_THREADS = 4
STALE_TEMP_SECONDS = store.STALE_TEMP_SECONDS  # a temp PNG older than this was left by a crash
PAGE_SIZE = 1000  # samples read at a time (ids, paths and the run's labels): memory stays flat
FLUSH_SECONDS = 2.0  # a sample whose heatmaps took this long is written at once, not with its chunk
PROGRESS_INTERVAL = 0.25  # seconds between progress calls about computing (writes always report)
# The label attributes (of HeatmapIdentity.provenance) a resume compares, beside target_request.
RESUME_KEYS = ("model", "weights", "method", "layer", "eigen_smooth", "weights_sha256", "input_size")

__all__ = ["PREDICTED", "BatchOptions", "BatchReport", "BatchProgress", "BatchRun", "TargetRule", "BoxFacts",
           "box_batches", "declare_fields", "forget_shared_facts", "shared_facts",
           "resume_provenance", "run_batch", "run_batches"]


def declare_fields(dataset: Collection, options: BatchOptions,
                   model: LoadedModel | None = None) -> list[str]:
    """Create (or check) every field of checked options: before any compute, so that a field that
    is not ours fails at once, and writers in other processes find the schema complete. The App
    switches the run's fields on together (one group)."""
    run = uuid.uuid4().hex
    return store.declare_heatmap_fields(dataset, options.identities(model), shown_with=run)


@dataclass
class BatchReport:
    done: int = 0  # samples written in this run
    skipped: int = 0  # samples already done with the same provenance
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample id, one-line reason)
    fields: set[str] = field(default_factory=set)  # every field the run covers, written to or not
    seconds: float = 0.0
    cancelled: bool = False
    removed_orphans: int = 0  # PNGs without a field, left by an interrupted run
    no_box: int = 0  # of the skipped: samples without the box a detector's field is for
    # A stopped resumed run: samples before where it started (an earlier run's), not checked yet
    done_before: int = 0

    def to_dict(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "done_before": self.done_before,
                "failed": [{"sample_id": s, "error": m} for s, m in self.failed],
                "fields": sorted(self.fields), "seconds": round(self.seconds, 3),
                "cancelled": self.cancelled, "removed_orphans": self.removed_orphans,
                **({"no_box": self.no_box} if self.no_box else {})}


def resume_provenance(identity: HeatmapIdentity) -> dict:
    """What a label must say for its map to count as done: beside the names, the weights file's
    content hash (two files called model.pth in two folders, or one file replaced, are different
    weights), the size the model runs at (a map made at another size is made again) and the
    target rule (a batch field's identity names the rule as its target)."""
    given = identity.provenance
    return {**{k: given[k] for k in RESUME_KEYS}, "target_request": identity.target}


@dataclass(frozen=True)
class _Job:
    """One field of the run: its identity, and what a label there says when it is done."""

    identity: HeatmapIdentity
    field: str
    provenance: dict

    @classmethod
    def of(cls, identity: HeatmapIdentity) -> _Job:
        return cls(identity, identity.field_name, resume_provenance(identity))

    @property
    def method(self) -> str:
        return self.identity.method

    @property
    def layer(self) -> str:
        return self.identity.layer

    @property
    def rule(self) -> str:
        """The target (box) rule this field is for: a batch field's identity names it as its target."""
        return str(self.identity.target)

    def stamp(self, h: Heatmap) -> Heatmap:
        """h with this field's identity (the target rule, not the class; the planned input size)."""
        if (h.method, h.layer) != (self.method, self.layer):
            raise CamError(f"computed {h.method} on {h.layer} for the field of {self.method} on {self.layer}")
        return dataclasses.replace(h, identity=self.identity)


def _rules(options: BatchOptions | Sequence[BatchOptions]) -> list[BatchOptions]:
    """Checked options: one, or a detector's box rules (equal but for target_rule, else ValueError)."""
    rules = [o.checked() for o in ([options] if isinstance(options, BatchOptions) else options)]
    if not rules:
        raise ValueError("no options to run")
    if len(rules) > 1:
        if rules[0].spec.task != "detection":
            raise ValueError("several target rules in one run are a detector's box rules")
        if any(dataclasses.replace(r, target_rule=rules[0].target_rule) != rules[0] for r in rules):
            raise ValueError("one run's box rules share every other option")
        if len({str(r.target_rule) for r in rules}) != len(rules):
            raise ValueError("one run's box rules are different rules")
    return rules


def _load_or_error(path: str) -> LoadedImage | CamError:
    try:
        return load_image(path)
    except CamError as exc:
        return exc


Written = tuple[set[str], int, list[tuple[str, str]]]  # fields, samples written, (sample id, reason)


class BatchRun:
    """One run over a view: plan (what is done, to do, orphans), compute, write, progress.

    options may be several (a detector's box rules, equal but for target_rule): then each image
    runs one forward, kept with its graph (engine.KeptForward), that every rule's box reuses: one
    backward per box for the gradient methods, nothing more for Eigen-CAM."""

    def __init__(self, view: Collection, options: BatchOptions | Sequence[BatchOptions],
                 progress: BatchProgress | None = None, cancel: threading.Event | None = None) -> None:
        self.started = time.perf_counter()
        self.measuring: dict[str, dict[str, str]] = {}  # heatmap field -> {measure: field} when measuring
        self.object_kind = ""  # "detections" | "segmentation" of the measures' object field
        self.object_names: dict[int, str] = {}  # its mask targets
        self.objects: dict[str, ObjectLabel | None] = {}  # sample id -> its object label, while in flight
        self.measured: dict[str, dict[str, object]] = {}  # sample id -> {measure field: value}, not yet written
        self.view = view
        self.rules = _rules(options)  # checked; one per box rule (else one)
        self.options = self.rules[0]
        self.by_rule = {str(r.target_rule): r for r in self.rules}
        self.kept: KeptForward | None = KeptForward() if len(self.rules) > 1 else None
        self.cancel = cancel
        self.report = BatchReport()
        self.meter = Meter(progress, PROGRESS_INTERVAL)
        self.dataset = store.root_dataset(view)
        self.model: LoadedModel  # loaded by plan()
        self.jobs: list[_Job] = []
        self.todo: dict[str, list[_Job]] = {}  # samples found to compute and not settled yet -> their jobs
        self.view_total = 0
        self.first = None  # _id of the first sample that did not look done; None: all did
        self.paged = 0  # samples paged so far
        self.presumed = 0  # samples before `first`: presumed done, not checked yet
        self.found_work = 0  # heatmaps found to compute among the paged samples
        self.settled = 0.0  # heatmaps computed (or given up with their failed sample)
        self.current = 0.0  # the fraction done of the heatmap being computed
        self.journal: store.HeatmapWriter  # opened by run(), with the writer thread
        self.writer: ThreadPoolExecutor
        self.writing: Future | None = None  # at most one write in flight
        self.buffered: dict[tuple[str, ...], list[tuple[str, CamResult]]] = {}  # computed, not yet submitted

    def run(self) -> BatchReport:
        self.plan()
        self.meter.start()
        self.tell(f"{self.view_total} samples in the view; those already done are skipped as the run reaches them")
        # The run's journal of the files it writes and replaces (store.HeatmapWriter): replaced files
        # are deleted in groups, and a crash leaves the journal for the next run's clean-up.
        self.journal = store.HeatmapWriter(self.dataset.name, self.options.heatmap_dir)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam-batch-write")
        loader = ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="cam-batch-load")
        ok = False
        try:
            with torch.enable_grad():
                self.compute(loader)
            ok = True
        finally:
            if self.kept is not None:
                self.kept.drop()  # the last image's graph
            loader.shutdown(wait=True, cancel_futures=True)
            self.writer.shutdown(wait=True)
            self.journal.close(ok=ok)
        if self.measuring and self.report.done:  # the Audit page's first draw over all samples reads it
            for job in self.jobs:
                audit_store.store_summary(self.dataset, audit_store.AuditRun(job.field, self.measuring[job.field]))
        self.report.seconds = time.perf_counter() - self.started
        # A resumed run starts after what the last run wrote and checks that at its end: stopped
        # before, those samples are done already (counted, not checked), not "left".
        self.report.done_before = self.presumed * len(self.rules) if self.report.cancelled else 0
        self.tell("cancelled" if self.report.cancelled else "finished")
        return self.report

    # -- plan: what is done, what to do, what interrupted runs left

    def plan(self) -> None:
        """Load the model, declare the fields, clean up orphans and find where to start. What is
        done is found page by page as the run reaches it (`chunks`), never for the whole view up
        front: the first chunk starts at once and memory stays flat on any size of view."""
        options = self.options
        store.require_image(self.dataset)
        self.check_measures()
        self.model = load_model(options.model, options.weights, options.device)
        # as the dataset keeps them: a field of an older name that holds the same map is resumed there
        identities = [store.stored_identity(self.dataset, identity)
                      for rule in self.rules for identity in rule.identities(self.model)]
        self.jobs = [_Job.of(identity) for identity in identities]
        store.declare_heatmap_fields(self.dataset, identities, shown_with=uuid.uuid4().hex)
        if options.measures is not None:
            self.measuring = {job.field: measure_store.declare_measure_fields(self.dataset, job.identity)
                              for job in self.jobs}
        self.report.fields = {job.field for job in self.jobs}  # also when all is skipped: what the run covers
        # What interrupted writers left (never a file a label references or a live writer holds).
        self.report.removed_orphans += store.clean_orphans(self.dataset, options.heatmap_dir)
        self.view_total = scan.count(self.view)  # one server-side count, for progress
        # Where a resumed run starts: the first sample whose label does not look done. Those before
        # it (done by the killed run) are presumed done, and checked (their files) after the others.
        self.first = scan.first_pending(self.view, [(job.field, job.provenance) for job in self.jobs],
                                        self.about_filter())
        self.presumed = scan.count(self.view, before=self.first) if self.first is not None else self.view_total

    def check_measures(self) -> None:
        """The measures' object field, checked before anything is loaded or written."""
        field = self.options.measures.object_field if self.options.measures is not None else None
        if not field:
            return
        self.object_kind = store.datasets.object_field_kind(self.dataset, field)
        if self.object_kind == "segmentation":
            self.object_names = store.datasets.mask_targets(self.dataset, field)

    def about_fields(self) -> list[str]:
        return [self.measuring[job.field]["about"] for job in self.jobs] if self.measuring else []

    def about_filter(self) -> list[dict]:
        """Mongo conditions of samples whose measures are missing or made with other settings."""
        if not self.measuring or self.options.measures is None:
            return []
        return [{f: {"$ne": self.options.measures.about}} for f in self.about_fields()]

    def rows(self) -> Iterator[tuple[str, str, list]]:
        """The view's samples as (id, path, their stored labels), a page at a time: from the first
        pending sample on, then those before it (presumed done: their files are checked now).
        When measuring, each row's labels continue with the jobs' ``about`` measures and the
        object field's label."""
        fields = [job.field for job in self.jobs] + self.about_fields()
        if self.object_kind and self.options.measures is not None:
            fields.append(str(self.options.measures.object_field))
        segments = [] if self.first is None else [({"$gte": self.first}, False)]
        segments.append(({"$lt": self.first} if self.first is not None else None, True))
        for bounds, presumed in segments:
            for page in scan.pages(self.view, self.dataset, fields, PAGE_SIZE, bounds):
                for row in page:
                    self.paged += 1
                    if presumed:
                        self.presumed -= 1
                    yield row

    def chunks(self) -> Iterator[list[tuple[str, str]]]:
        """(sample id, path) of the samples to compute, `chunk` at a time; the others are skipped."""
        items: list[tuple[str, str]] = []
        about = self.options.measures.about if self.options.measures is not None else None
        n = len(self.jobs)
        for sid, path, docs in self.rows():
            labels, abouts = docs[:n], (docs[n:2 * n] if self.measuring else [about] * n)
            left = [job for job, doc, said in zip(self.jobs, labels, abouts, strict=True)
                    if not scan.stored_done(doc, job.provenance) or said != about]
            self.report.skipped += sum(1 for r in self.rules if not any(j.rule == r.target_rule for j in left))
            if not left:
                continue
            self.todo[sid] = left
            if self.object_kind:
                self.objects[sid] = object_label(self.object_kind, docs[-1], self.object_names)
            self.found_work += len(left)
            items.append((sid, path))
            if len(items) == self.options.chunk:
                yield items
                items = []
        if items:
            yield items

    # -- compute

    def compute(self, loader: ThreadPoolExecutor) -> None:
        """Every chunk in turn; the next chunk's images decode in threads while one computes."""
        def load(items: list[tuple[str, str]] | None) -> list[Future]:
            return [loader.submit(_load_or_error, path) for _sid, path in items or []]

        chunks = self.chunks()  # a page is read when the loop reaches it (milliseconds)
        coming = next(chunks, None)
        next_loads = load(coming)
        while coming is not None and not self.cancelled():
            items, coming = coming, next(chunks, None)
            loads, next_loads = next_loads, load(coming)
            self.compute_chunk(items, loads)
            self.submit()
        self.submit()  # also after a cancel: what was computed is written
        self.settle()

    def compute_chunk(self, items: list[tuple[str, str]], loads: list[Future]) -> None:
        loaded = []
        for (sid, path), future in zip(items, loads, strict=True):
            image = future.result()
            if isinstance(image, CamError):
                self.fail(sid, path, image, len(self.todo[sid]))
            else:
                loaded.append((sid, path, image))
        if self.kept is not None:
            self.compute_boxes(loaded)
            return
        requests = self.requests(loaded)
        loaded = [item for item in loaded if requests.get(item[0], "") is not None]
        layers = list(dict.fromkeys(j.layer for sid, _p, _i in loaded for j in self.todo[sid]))
        explainers = explain_many(self.model, [img for _s, _p, img in loaded],
                                  [requests.get(sid, self.options.class_request) for sid, _p, _i in loaded],
                                  layers, self.options.input_size, max_batch=self.options.chunk)
        for (sid, path, _img), explainer in zip(loaded, explainers, strict=True):
            if self.cancelled():
                return
            if isinstance(explainer, CamError):
                self.unexplained(sid, path, explainer, self.todo[sid])
            elif not self.explain(sid, path, explainer, self.todo[sid]):
                return

    def compute_boxes(self, loaded: list[tuple[str, str, LoadedImage]]) -> None:
        """Several box rules (a detector's top:<k>, a field's boxes): image by image, one forward
        kept with its graph (self.kept, one image's graph at a time), and for each rule an Explainer
        on it: one backward per box for the gradient methods, no pass for Eigen-CAM. The maps equal
        a fresh pass's per box (tests/test_batch_boxes.py)."""
        for sid, path, image in loaded:
            boxes: dict[str, list] = {}  # a field's boxes of this sample, read once for all its rules
            layers = tuple(dict.fromkeys(j.layer for j in self.todo.get(sid, [])))  # one forward serves all
            for rule in self.rules:
                if self.cancelled():
                    return
                jobs = [j for j in self.todo.get(sid, []) if j.rule == str(rule.target_rule)]
                if not jobs:
                    continue
                try:
                    request = self.request_for(sid, rule, boxes)
                    if request is None:
                        self.no_box(sid, jobs)
                        continue
                    explainer = Explainer(self.model, image, request, layers, False, rule.input_size,
                                          kept=self.kept)
                except (CamError, RuntimeError) as exc:
                    self.unexplained(sid, path, exc if isinstance(exc, CamError) else CamError(first_line(exc)), jobs)
                    continue
                if not self.explain(sid, path, explainer, jobs):
                    return

    def request_for(self, sid: str, rule: BatchOptions, boxes: dict[str, list]) -> str | None:
        """What the explainer is asked for under one rule: a field rule as the sample's own box
        rule (None: the sample has no such box), any other rule as it is."""
        text = str(rule.target_rule)
        if not text.startswith("field:"):
            return rule.class_request
        field = text.split(":")[1]
        if field not in boxes:
            boxes[field] = store.sample_boxes(self.dataset[sid], field)
        return detection.field_box_rule(text, boxes[field])

    def unexplained(self, sid: str, path: str, exc: CamError, jobs: list[_Job]) -> None:
        """No explainer for these jobs: the sample lacks their box (skipped), or it failed."""
        if detection.is_missing_box(exc):
            self.no_box(sid, jobs)
        else:
            self.fail(sid, path, exc, len(jobs), jobs)

    def explain(self, sid: str, path: str, explainer: Explainer, jobs: list[_Job]) -> bool:
        """Compute and buffer these jobs' heatmaps (and measures) of one sample; False when cancelled."""
        jobs = list(jobs)
        began = time.perf_counter()
        heatmaps = self.compute_sample(sid, path, explainer, jobs)
        if heatmaps is None:  # cancelled: this sample's heatmaps are dropped, not written
            return False
        try:
            if isinstance(heatmaps, CamError):
                raise heatmaps
            result = explainer.result([job.stamp(h) for job, h in zip(jobs, heatmaps, strict=True)])
            self.measure_sample(sid, path, explainer, jobs, heatmaps)
        except CamError as exc:
            self.fail(sid, path, exc, 0, jobs)
            return True
        self.settle_jobs(sid, jobs)
        self.buffered.setdefault(tuple(j.field for j in jobs), []).append((sid, result))
        if time.perf_counter() - began >= FLUSH_SECONDS:
            self.submit()  # a slow sample: written (and counted) now, not with its chunk
        else:
            self.poll()
        return True

    def settle_jobs(self, sid: str, jobs: list[_Job]) -> None:
        """These jobs of the sample are settled (computed, failed, or without their box): only
        samples with jobs in flight stay in memory."""
        left = [j for j in self.todo.get(sid, []) if j not in jobs]
        if left:
            self.todo[sid] = left
        else:
            self.todo.pop(sid, None)
            self.objects.pop(sid, None)

    def requests(self, loaded: list[tuple[str, str, LoadedImage]]) -> dict[str, str | None]:
        """A detector's field rule (field:<f>:<i>[:<class>]) as each sample's own box rule (None:
        the sample has no such box, skipped now); empty for every other rule (one request for all)."""
        if not str(self.options.target_rule).startswith("field:"):
            return {}
        out: dict[str, str | None] = {}
        for sid, path, _img in loaded:
            try:
                out[sid] = self.request_for(sid, self.options, {})
            except CamError as exc:
                self.fail(sid, path, exc, len(self.todo[sid]))
                out[sid] = None
                continue
            if out[sid] is None:
                self.no_box(sid)
        return out

    def no_box(self, sid: str, jobs: list[_Job] | None = None) -> None:
        """The sample has not the box these jobs (default: all of its jobs) are for: skipped (not
        failed), nothing written; counted once per box rule."""
        jobs = list(self.todo.get(sid, [])) if jobs is None else jobs
        if jobs:
            self.settled += len(jobs)
            self.report.skipped += 1
            self.report.no_box += 1
            self.settle_jobs(sid, jobs)

    def measure_sample(self, sid: str, path: str, explainer: Explainer, jobs: list[_Job],
                       heatmaps: list[Heatmap]) -> None:
        """The measures of the sample's heatmaps, kept until its heatmaps are written."""
        options = self.options.measures
        if options is None:
            return
        item = None
        if self.object_kind:
            item = sample_item(sid, path, self.objects.get(sid), explainer.target.name, options.object_label)
        values: dict[str, object] = {}
        faiths = explainer.faithfulness_of(heatmaps) if options.faithfulness else [None] * len(heatmaps)
        for job, h, faith in zip(jobs, heatmaps, faiths, strict=True):
            for name, value in measure(explainer, h, item, options, faith).items():
                values[self.measuring[job.field][name]] = value
        self.measured.setdefault(sid, {}).update(values)  # several box rules: each adds its fields

    def compute_sample(self, sid: str, path: str, explainer: Explainer,
                       jobs: list[_Job]) -> list[Heatmap] | CamError | None:
        """These jobs' heatmaps of the sample, one by one, with progress and cancel; None when
        cancelled, the error when one fails. (Write errors from poll() are not the sample's: they
        propagate.)"""
        name = os.path.basename(path)
        heatmaps: list[Heatmap] = []
        steps = iter_heatmaps(explainer, [(j.method, j.layer) for j in jobs], self.options.eigen_smooth,
                              progress_for=lambda _i, method, layer: self.inside(name, method, layer),
                              cancel=self.cancel)
        try:
            for step in steps:
                self.current = 0.0
                if step.heatmap is None:
                    self.settled += len(jobs) - step.index
                    return step.exception or CamError(f"{step.method} on {step.layer}: no heatmap")
                heatmaps.append(step.heatmap)
                self.settled += 1
                self.tell(f"{name}: {step.method} on {step.layer}", force=False)
                self.poll()
        except Cancelled:
            self.report.cancelled = True
            return None
        return heatmaps

    def cancelled(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.report.cancelled = True
        return self.report.cancelled

    def fail(self, sid: str, path: str, exc: BaseException, work_left: int, jobs: list[_Job] | None = None) -> None:
        """The sample failed: for these jobs (one box rule's), else all of them."""
        self.report.failed.append((sid, first_line(exc)))
        if jobs is None:
            self.objects.pop(sid, None)
            self.measured.pop(sid, None)
            self.todo.pop(sid, None)  # settled: only samples in flight stay in memory
        else:
            self.settle_jobs(sid, jobs)
        self.settled += work_left  # failed samples count as settled work
        self.tell(f"failed {os.path.basename(path)}")

    # -- write: in the background while the next samples compute

    def write(self, groups: list[list[tuple[str, CamResult]]], measured: dict | None = None) -> Written:
        """Computed results (grouped by their fields): PNGs, then one set_values per field.
        A group that fails validation (say a heatmap whose size disagrees with a sample's metadata)
        is written sample by sample, so only the bad samples fail; database errors abort."""
        fields: set[str] = set()
        count, failures = 0, []
        for items in groups:
            try:
                fields.update(self.push(items))
                count += len(items)
                continue
            except StoreError:
                raise
            except CamError:
                pass
            for sid, result in items:  # some sample is invalid: find it, write the others
                try:
                    fields.update(self.push([(sid, result)]))
                    count += 1
                except StoreError:
                    raise
                except CamError as exc:
                    failures.append((sid, first_line(exc)))
        if measured:  # after the maps: a crash in between leaves measures missing, and a resume fills them
            failed = {sid for sid, _ in failures}
            by_field: dict[str, dict[str, object]] = {}
            for sid, values in measured.items():
                if sid not in failed:
                    for name, value in values.items():
                        by_field.setdefault(name, {})[sid] = value
            measure_store.write_measures(self.dataset, by_field)
        return fields, count, failures

    def push(self, items: list[tuple[str, CamResult]]) -> list[str]:
        # One group's fields are one rule's (a field's name holds its rule): its labels say that rule.
        rule = str(items[0][1].heatmaps[0].identity.target) if items and items[0][1].heatmaps else ""
        extra = self.by_rule.get(rule, self.options).label_extra
        return store.push_many(self.dataset, items, extra=extra,
                               heatmap_dir=self.options.heatmap_dir, writer=self.journal)

    def submit(self) -> None:
        """Write what is buffered (after the write in flight, if any, has finished)."""
        self.settle()
        if self.buffered:
            groups = list(self.buffered.values())
            measured = {sid: self.measured.pop(sid) for items in groups for sid, _ in items if sid in self.measured}
            self.writing = self.writer.submit(self.write, groups, measured)
            self.buffered = {}

    def settle(self) -> None:
        """Wait for the write in flight, if any, and count its samples done."""
        if self.writing is None:
            return
        future, self.writing = self.writing, None
        fields, count, failures = future.result()
        self.report.fields.update(fields)
        self.report.done += count
        self.report.failed.extend(failures)
        self.tell(f"wrote {self.report.done}/{self.total()}" + (f", {len(failures)} failed" if failures else ""))

    def poll(self) -> None:
        """Count a write that has finished (without waiting for one that has not)."""
        if self.writing is not None and self.writing.done():
            self.settle()

    # -- progress: rate and ETA from the heatmaps computed (and fractions of slow ones), so they
    # exist before the first write and move within a chunk

    def total(self) -> int:
        """Samples to compute: the view less those found or presumed done (exact at the end); with
        several box rules, a sample counts once per rule (as done and skipped do)."""
        return max(0, (self.view_total - self.presumed) * len(self.rules) - self.report.skipped)

    def work_total(self) -> int:
        """Heatmaps to compute: those found, plus every job of the samples not paged or presumed."""
        unpaged = max(0, self.view_total - self.paged - self.presumed)
        return max(1, self.found_work + unpaged * len(self.jobs))

    def tell(self, message: str, force: bool = True) -> None:
        planned = self.work_total()
        worked = min(planned, self.settled + self.current)
        total = self.total()
        self.meter.tell(self.report.done, total, message, worked=worked, left=planned - worked,
                        unit=total / planned, force=force)

    def inside(self, name: str, method: str, layer: str) -> Callable[[float, str], None]:
        """Progress inside one heatmap (slow methods report fractions of it)."""
        def progress(fraction: float, _message: str) -> None:
            self.current = max(0.0, min(1.0, float(fraction)))
            self.tell(f"{name}: {method} on {layer} {self.current:.0%}", force=False)

        return progress


def run_batch(view: Collection, options: BatchOptions, *, progress: BatchProgress | None = None,
              cancel: threading.Event | None = None) -> BatchReport:
    """Compute and store heatmaps for every sample of a view; see the module docstring."""
    return BatchRun(view, options, progress, cancel).run()


def _one_run(runs: Sequence[BatchOptions]) -> bool:
    """Whether these options are one detector's box rules (one run can serve them all)."""
    try:
        _rules(runs)
    except ValueError:
        return False
    return True


def run_batches(view: Collection, runs: Sequence[BatchOptions], *,
                progress: BatchProgress | None = None, cancel: threading.Event | None = None) -> BatchReport:
    """A detector's box rules (box_batches) in one run: each image's forward serves every rule
    (one backward per box for the gradient methods; BatchRun). Done, skipped and no_box count a
    sample once per rule; each rule's fields resume on their own. Options that differ otherwise:
    run_batch for each in turn, one report."""
    if len(runs) > 1 and _one_run(runs):
        return BatchRun(view, runs, progress, cancel).run()
    total = BatchReport()
    for options in runs:
        if cancel is not None and cancel.is_set():
            total.cancelled = True
            break
        report = run_batch(view, options, progress=progress, cancel=cancel)
        total.done += report.done
        total.skipped += report.skipped
        total.done_before += report.done_before
        total.no_box += report.no_box
        total.failed += report.failed
        total.fields |= report.fields
        total.seconds += report.seconds
        total.cancelled = total.cancelled or report.cancelled
        total.removed_orphans += report.removed_orphans
    return total
