"""Auditing a view from its stored measures (camcore.store.measures), on the database.

Nothing here reads every sample in Python. A view's summary (the on-object share histogram, the
per-class table, the counts of samples with and without measures, the settings found, and a sample
of (confidence, share) points) is one MongoDB ``$facet`` aggregation over the view's own pipeline:
one scan on the server, a few hundred numbers back. A batch that stores measures leaves the whole
dataset's summary in ``dataset.info["cam_explorer"]["audit"][<heatmap field>]`` (stamped with the
sample count), so the first draw over all samples reads it instead of scanning.

Narrowing (a click on a bar, a row or a box of points) is text, kept in the URL and the sidebar's
view (``ViewSpec.narrow``): conditions joined by ``;``, each ``<measure field>:<lo>:<hi>`` (lo <= v
< hi; hi == 1 includes 1) or ``<heatmap field>.target=<class>`` or ``<measure field>=true|false``.
A class is written as is, or as a JSON string (``"a;b"``) when it holds ``;``, starts with ``"`` or
has spaces at its ends; texts written before that (in links and findings) read as they did.
Its count and first page use the index on the share field.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo

from camcore.errors import StoreError
from camcore.identity import FIELD_PREFIX, measure_of
from camcore.store import schema
from camcore.store.datasets import LOCK, MARK, db_errors, root_dataset
from camcore.store.measures import measure_links, measure_runs

BINS = 20
SCATTER_POINTS = 1500  # (confidence, share) points drawn: a random sample of the view's
HOW_TO_MEASURE = "run a batch with measures: the Batch page's 'Store measures', or {command}"


def measure_command(dataset_name: str) -> str:
    """The shell command that stores measures for a whole dataset (its name quoted for the shell)."""
    return f"python -m camcore batch --dataset {shlex.quote(dataset_name)} --measures [--object-field ground_truth]"


@dataclass(frozen=True)
class AuditRun:
    """A heatmap field with its measure fields (measure -> field)."""

    heatmap: str
    fields: dict[str, str]

    @property
    def share(self) -> str:
        return self.fields["share"]

    @property
    def target(self) -> str:
        return f"{self.heatmap}.target"


@dataclass(frozen=True)
class Summary:
    total: int  # samples in the view
    with_measures: int  # samples whose measures were stored (about set)
    with_share: int  # of them, with an object to measure the share on
    edges: tuple[float, ...]  # histogram bin edges, 0..1
    counts: tuple[int, ...]  # samples per bin
    classes: tuple[tuple[str, int, float | None, int], ...]  # (class, samples, mean share, background-dominated)
    settings: tuple[tuple[str, int], ...]  # (about, samples): more than one = mixed settings
    points: tuple[tuple[str, float, float, str], ...] = field(default=())  # (id, conf, share, class)

    def to_dict(self) -> dict:
        return {"total": self.total, "with_measures": self.with_measures, "with_share": self.with_share,
                "edges": list(self.edges), "counts": list(self.counts), "classes": [list(c) for c in self.classes],
                "settings": [list(s) for s in self.settings], "points": [list(p) for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        return cls(int(d["total"]), int(d["with_measures"]), int(d["with_share"]), tuple(d["edges"]),
                   tuple(d["counts"]), tuple(tuple(c) for c in d["classes"]),
                   tuple(tuple(s) for s in d["settings"]), tuple(tuple(p) for p in d["points"]))


def runs(dataset: fo.Dataset | fo.DatasetView) -> list[AuditRun]:
    """The heatmap fields of the dataset whose measures can be audited (a share field and an about
    field), by name."""
    found = measure_runs(dataset)
    return [AuditRun(h, f) for h, f in sorted(found.items()) if "share" in f and "about" in f]


def _edges(bins: int) -> list[float]:
    return [round(i / bins, 6) for i in range(bins + 1)]


def _facets(run: AuditRun, bins: int) -> dict:
    f = run.fields
    share, about = f"${run.share}", f"${f['about']}"
    edges = _edges(bins)
    bucket_edges = edges[:-1] + [1.0 + 1e-9]  # the last bin includes 1
    conf = f.get("conf")
    points: list[dict] = [{"$match": {run.share: {"$type": "number"}, **({conf: {"$type": "number"}} if conf else {})}},
                          {"$sample": {"size": SCATTER_POINTS}},
                          {"$project": {"c": f"${conf}" if conf else None, "s": share, "t": f"${run.target}"}}]
    return {
        "hist": [{"$match": {run.share: {"$type": "number"}}},
                 {"$bucket": {"groupBy": share, "boundaries": bucket_edges, "default": "other",
                              "output": {"n": {"$sum": 1}}}}],
        "classes": [{"$match": {f["about"]: {"$ne": None}}},
                    {"$group": {"_id": f"${run.target}", "n": {"$sum": 1}, "share": {"$avg": share},
                                "bg": {"$sum": {"$cond": [{"$eq": [f"${f['bg']}", True]}, 1, 0]}} if "bg" in f
                                else {"$sum": 0}}}],
        "settings": [{"$group": {"_id": about, "n": {"$sum": 1}}}],
        "points": points,
    }


@db_errors
def summarise(view: fo.Dataset | fo.DatasetView, run: AuditRun, bins: int = BINS) -> Summary:
    """The view's summary for one run: one $facet aggregation on the server (see the module)."""
    result = next(iter(view._aggregate(pipeline=[{"$facet": _facets(run, bins)}])))
    return _summary(result, bins)


def _summary(result: dict, bins: int) -> Summary:
    edges = _edges(bins)
    index = {round(e, 6): i for i, e in enumerate(edges[:-1])}
    counts = [0] * bins
    for row in result["hist"]:
        if row["_id"] != "other":
            counts[index.get(round(float(row["_id"]), 6), 0)] += int(row["n"])
    settings = sorted(((str(r["_id"]) if r["_id"] is not None else "", int(r["n"])) for r in result["settings"]),
                      key=lambda s: -s[1])
    total = sum(n for _a, n in settings)
    with_measures = sum(n for a, n in settings if a)
    classes = sorted(((str(r["_id"]), int(r["n"]), _num(r.get("share")), int(r.get("bg") or 0))
                      for r in result["classes"]), key=lambda c: (-c[1], c[0]))
    points = tuple((str(p["_id"]), float(p["c"]), float(p["s"]), str(p.get("t") or ""))
                   for p in result["points"] if _num(p.get("c")) is not None and _num(p.get("s")) is not None)
    return Summary(total, with_measures, sum(counts), tuple(edges), tuple(counts), tuple(classes),
                   tuple((a, n) for a, n in settings if a), points)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


# ---------------------------------------------------------------- the stored whole-dataset summary


@db_errors
def store_summary(dataset: fo.Dataset | fo.DatasetView, run: AuditRun) -> Summary:
    """Summarise the whole dataset for one run and keep it in the dataset's info (a batch calls this
    at its end), stamped with the sample count."""
    dataset = root_dataset(dataset)
    summary = summarise(dataset, run)
    with LOCK:  # one entry, atomically: a reload and a save of the whole dataset cost O(fields)
        update = schema.DatasetUpdate(dataset)
        update.set_info((MARK, "audit", run.heatmap), {"count": summary.total, "fields": _stamp(run),
                                                        "summary": summary.to_dict()})
        update.commit()
    return summary


def _stamp(run: AuditRun) -> list[str]:
    return sorted(f"{m}={f}" for m, f in run.fields.items())


def stored_summary(dataset: fo.Dataset, run: AuditRun) -> Summary | None:
    """The whole dataset's summary a batch left, if the dataset still has that many samples and
    the run still has the same measure fields."""
    entry = ((dataset.info or {}).get(MARK) or {}).get("audit", {}).get(run.heatmap)
    # The collection's own count (O(1), its metadata): a whole-dataset summary is stale once samples
    # were added or deleted; and once a measure field was deleted or renamed (in the App): the
    # background-dominated counts of a deleted bg field are not the data's any more.
    if not isinstance(entry, dict) or entry.get("count") != dataset._sample_collection.estimated_document_count():
        return None
    if entry.get("fields") != _stamp(run):
        return None
    try:
        return Summary.from_dict(entry["summary"])
    except (KeyError, TypeError, ValueError):
        return None


def audit_summary(view: fo.Dataset | fo.DatasetView, run: AuditRun) -> Summary:
    """The summary of the view: the stored one for a whole dataset when fresh, else aggregated."""
    if isinstance(view, fo.Dataset) or not view._stages:
        stored = stored_summary(root_dataset(view), run)
        if stored is not None:
            return stored
    return summarise(view, run)


# ---------------------------------------------------------------- bad input, in one line


def check(summary: Summary, dataset_name: str, run: AuditRun) -> str | None:
    """What stops an audit, in one line; None when the view can be audited."""
    if summary.with_measures == 0:
        how = HOW_TO_MEASURE.format(command=measure_command(dataset_name))
        return f"No stored measures for {run.heatmap} in this view: {how}."
    return mixed_line(summary.settings)


def mixed_line(settings: tuple[tuple[str, int], ...], run: str = "") -> str | None:
    """One line when the (about, samples) pairs name more than one setting; None otherwise."""
    if len(settings) <= 1:
        return None
    made = "; ".join(f"{n:,} samples with {about}" for about, n in settings[:3])
    of = f" of {run}" if run else ""
    return (f"Measures{of} made with different settings are mixed in this view ({made}): run the batch with "
            "measures again with one setting (it re-measures the others), or narrow the view.")


@db_errors
def settings_in(view: fo.Dataset | fo.DatasetView, run: AuditRun) -> tuple[tuple[str, int], ...]:
    """(about, samples) of the view's measured samples, most first: one $group on the server (its
    sum is the queue's length: the same scan as a count)."""
    about = run.fields["about"]
    rows = view._aggregate(pipeline=[{"$match": {about: {"$ne": None}}},
                                     {"$group": {"_id": f"${about}", "n": {"$sum": 1}}}])
    return tuple(sorted(((str(r["_id"]), int(r["n"])) for r in rows), key=lambda s: (-s[1], s[0])))


def object_of(about: str) -> str:
    """The object part of an ``about`` setting (``obj=...``): what the share was measured on."""
    parts = dict(p.split("=", 1) for p in about.split(";") if "=" in p)
    return parts.get("obj", "model")


def describe_about(about: str) -> str:
    """An ``about`` setting as people read it: "share on any object in objects · background-dominated
    below 0.5 · faithfulness on"."""
    parts = dict(p.split("=", 1) for p in about.split(";") if "=" in p)
    obj, _, label = parts.get("obj", "model").partition("[")
    label = label.rstrip("]")
    where = ("the model's own mask or box" if obj == "model" else
             f"any object in {obj}" if label == "*" else
             f"{label!r} in {obj}" if label else f"the explained class's object in {obj}")
    faith = {"1": "on", "0": "off"}.get(parts.get("f", ""), "?")
    return f"share on {where} · background-dominated below {parts.get('t', '?')} · faithfulness {faith}"


def runs_problem(view: fo.Dataset | fo.DatasetView, run_a: AuditRun, run_b: AuditRun) -> str | None:
    """What stops comparing two runs on this view, in one line: mixed settings within a run, or
    shares measured on different objects (a mask against a box, one class against any object)."""
    found = {}
    for run in (run_a, run_b):
        settings = settings_in(view, run)
        line = mixed_line(settings, run.heatmap)
        if line:
            return line
        found[run.heatmap] = object_of(settings[0][0]) if settings else None
    obj_a, obj_b = found[run_a.heatmap], found[run_b.heatmap]
    if obj_a is not None and obj_b is not None and obj_a != obj_b:
        return (f"The two runs measured the share on different objects ({run_a.heatmap}: obj={obj_a}; "
                f"{run_b.heatmap}: obj={obj_b}): measure both with the same object field, or the change "
                "compares two different things.")
    return None


# ---------------------------------------------------------------- narrowing


def narrow_filter(text: str, dataset: fo.Dataset | fo.DatasetView) -> dict:
    """The MongoDB filter a narrowing text asks for; StoreError (one line) when it names a field
    that is not a measure field or a heatmap's target, or is malformed."""
    conds: list[dict[str, Any]] = []
    schema = root_dataset(dataset).get_field_schema()
    measured = measure_links(dataset)  # a measure field is known by its info (its name may be cut)
    for part, name, value in conditions(text):
        if value is not None:
            base = name.removesuffix(".target")
            if name.endswith(".target") and base.startswith(FIELD_PREFIX) and base in schema:
                conds.append({name: value})
            elif name in measured and value in ("true", "false"):
                conds.append({name: value == "true"})
            else:
                raise StoreError(f"cannot narrow by {part!r}: not a measure field or a heatmap's class")
            continue
        name, lo, hi = (list(part.split(":")) + ["", ""])[:3]
        if name not in measured:
            raise StoreError(f"cannot narrow by {part!r}: {name!r} is not a measure field of this dataset")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            raise StoreError(f"cannot narrow by {part!r}: expected <field>:<low>:<high>") from None
        conds.append({name: {"$gte": low, ("$lte" if high >= 1.0 else "$lt"): high}})
    return {"$and": conds} if len(conds) > 1 else (conds[0] if conds else {})


def describe_narrow(text: str) -> str:
    """One plain line for the sidebar: what the narrowing keeps."""
    out = []
    for part, name, value in conditions(text):
        if value is not None:
            what = "class" if name.endswith(".target") else (measure_of(name) or ("", ""))[0]
            what = MEASURE_WORDS.get(what, what)
            out.append(f"{what} = {value}")
        else:
            name, lo, hi = (list(part.split(":")) + ["", ""])[:3]
            measure = (measure_of(name) or (name, ""))[0]
            out.append(f"{MEASURE_WORDS.get(measure, measure)} {_short(lo)}–{_short(hi)}")
    return ", ".join(out)


MEASURE_WORDS = {"conf": "confidence", "bg": "background-dominated"}


def _short(number: str) -> str:
    """A bound as people read it (3 significant digits); the narrowing itself keeps all of them."""
    try:
        return f"{float(number):.3g}"
    except ValueError:
        return number


def bin_narrow(run: AuditRun, lo: float, hi: float) -> str:
    return f"{run.share}:{lo:g}:{hi:g}"


def class_narrow(run: AuditRun, cls: str) -> str:
    return f"{run.target}={quote_value(cls)}"


def quote_value(value: str) -> str:
    """A value as a narrowing writes it: as is (the form older texts have, byte for byte), or as a
    JSON string when read as is it would come back otherwise: it holds ";" (which joins conditions),
    starts with a quote (which opens a JSON string) or has spaces at its ends (a condition is stripped)."""
    if ";" in value or value.startswith('"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


_JSON = json.JSONDecoder()


def conditions(text: str) -> list[tuple[str, str, str | None]]:
    """A narrowing's conditions: (the condition as written, its field, its value after "=" or None
    for a range). A value that opens with a quote and is a whole JSON string (up to the next ";" or
    the end) may hold ";"; any other is taken as written, as older texts wrote every class."""
    out: list[tuple[str, str, str | None]] = []
    i = 0
    while i <= len(text):
        end = _next_semicolon(text, i)
        part = text[i:end].strip()
        name, eq, value = part.partition("=")
        if eq and value.startswith('"'):
            start = text.index("=", i) + 1  # at the quote: the field's name holds no "="
            try:
                decoded, stop = _JSON.raw_decode(text, start)
            except ValueError:
                decoded, stop = None, start
            after = _next_semicolon(text, stop)
            if isinstance(decoded, str) and not text[stop:after].strip():
                out.append((text[i:after].strip(), name.strip(), decoded))
                i = after + 1
                continue
        if part:
            out.append((part, name.strip(), value if eq else None))
        i = end + 1
    return out


def _next_semicolon(text: str, start: int) -> int:
    end = text.find(";", start)
    return len(text) if end < 0 else end


def _outward(lo: float, hi: float) -> str:
    """lo..hi as text with 6 decimals, rounded outwards (one more step each way for the float
    error of the rounding itself): a range drawn around points always holds those points."""
    low = (math.floor(lo * 1e6) - 1) / 1e6
    high = (math.floor(hi * 1e6) + 2) / 1e6
    return f"{max(0.0, low):.6f}:{min(1.0, high):.6f}".replace(".000000", "")


def box_narrow(run: AuditRun, conf: tuple[float, float], share: tuple[float, float]) -> str:
    return f"{run.fields['conf']}:{_outward(*conf)};{run.share}:{_outward(*share)}"


@db_errors
def worst_first(view: fo.Dataset | fo.DatasetView, run: AuditRun, skip: int, limit: int) -> list[tuple[str, str]]:
    """(sample id, filepath) of a page of the queue: the view's measured samples, lowest share on
    the object first (through the index on the share field), then those measured without an object
    (no share), in id order."""
    scored = view.match({run.share: {"$type": "number"}})
    n_scored = scored.count() if skip + limit > 0 else 0
    out: list[tuple[str, str]] = []
    if skip < n_scored:
        page = scored.sort_by(run.share).skip(skip).limit(limit)
        out = list(zip(*page.values(["id", "filepath"]), strict=True))
    left = limit - len(out)
    if left > 0:
        rest = view.match({run.share: {"$not": {"$type": "number"}}, run.fields["about"]: {"$ne": None}})
        page = rest.sort_by("_id", create_index=False).skip(max(0, skip - n_scored)).limit(left)
        out += list(zip(*page.values(["id", "filepath"]), strict=True))
    return out


# ---------------------------------------------------------------- two runs side by side

CHANGE_EPS = 0.02  # a change in share smaller than this is "the same"


@dataclass(frozen=True)
class Change:
    sample_id: str
    filepath: str
    cls: str  # the class the chosen run (A by default) explained
    share_a: float
    share_b: float

    @property
    def change(self) -> float:
        return self.share_b - self.share_a


def _both(run_a: AuditRun, run_b: AuditRun) -> dict:
    return {run_a.share: {"$type": "number"}, run_b.share: {"$type": "number"}}


@db_errors
def most_changed(view: fo.Dataset | fo.DatasetView, run_a: AuditRun, run_b: AuditRun, limit: int = 200,
                 skip: int = 0, by: AuditRun | None = None) -> list[Change]:
    """The view's samples measured by both runs, the largest change of on-object share first
    (B - A, by size): one aggregation, a top-k sort on the server. Each with the class `by` (run A
    unless given) explained."""
    if run_a.heatmap == run_b.heatmap:
        raise StoreError("choose two different heatmap runs to compare")
    pipeline = [{"$match": _both(run_a, run_b)},
                {"$project": {"filepath": 1, "t": f"${(by or run_a).target}", "a": f"${run_a.share}",
                              "b": f"${run_b.share}",
                              "d": {"$abs": {"$subtract": [f"${run_b.share}", f"${run_a.share}"]}}}},
                {"$sort": {"d": -1, "_id": 1}}, {"$skip": int(skip)}, {"$limit": int(limit)}]
    return [Change(str(r["_id"]), str(r.get("filepath") or ""), str(r.get("t") or ""), float(r["a"]), float(r["b"]))
            for r in view._aggregate(pipeline=pipeline)]


@db_errors
def class_changes(view: fo.Dataset | fo.DatasetView, run_a: AuditRun, run_b: AuditRun,
                  eps: float = CHANGE_EPS, by: AuditRun | None = None) -> list[tuple[str, int, float, int, int]]:
    """Per class (the class `by`, run A unless given, explained): (class, samples, mean change of
    share B - A, better, worse), better first; one aggregation on the server. An untrained run's
    classes are noise: group by the trained one's."""
    d = {"$subtract": [f"${run_b.share}", f"${run_a.share}"]}
    pipeline = [{"$match": _both(run_a, run_b)},
                {"$group": {"_id": f"${(by or run_a).target}", "n": {"$sum": 1}, "mean": {"$avg": d},
                            "better": {"$sum": {"$cond": [{"$gt": [d, eps]}, 1, 0]}},
                            "worse": {"$sum": {"$cond": [{"$lt": [d, -eps]}, 1, 0]}}}}]
    rows = [(str(r["_id"]), int(r["n"]), float(r["mean"]), int(r["better"]), int(r["worse"]))
            for r in view._aggregate(pipeline=pipeline)]
    return sorted(rows, key=lambda r: (-r[2], r[0]))


@db_errors
def count_both(view: fo.Dataset | fo.DatasetView, run_a: AuditRun, run_b: AuditRun) -> int:
    return view.match(_both(run_a, run_b)).count()


# ---------------------------------------------------------------- the narrowed view's way out, one sample


@db_errors
def save_view(view: fo.Dataset | fo.DatasetView, name: str) -> bool:
    """Keep the view (the sidebar's, narrowed) as a FiftyOne saved view of its dataset; True when
    it replaced a saved view of that name (the caller says so: it is the user's view that went)."""
    dataset = root_dataset(view)
    replaced = dataset.has_saved_view(name)
    dataset.save_view(name, view, overwrite=True)
    return replaced


@db_errors
def sample_measures(dataset: fo.Dataset | fo.DatasetView, sample_id: str, run: AuditRun) -> dict[str, Any]:
    """One sample's stored measures (measure -> value), read from the database by id."""
    names = sorted(run.fields)
    values = root_dataset(dataset).select(sample_id).values([run.fields[m] for m in names])
    return {m: (v[0] if v else None) for m, v in zip(names, values, strict=True)}
