"""A page of a sorted view without walking every index key before it (issue 23 design 1).

`views.page` skips: in a view sorted by a field, MongoDB walks the sort index's keys up to the
position (0.37 s at 500,000 of 10^6: 2.6x the unsorted view's skip, which walks documents in
natural order). Two exact shortcuts for the explorer's own sort, (field, _id) in one direction:

- keyset: the page next to one already read (▶ or ◀ across a page boundary) is sought from the key
  of the sample at its edge, read afresh by id: O(page) keys at any position. It continues from
  that page: the caller keeps only pages read under the view's current count (ui/sidebar.py).
- the nearer end: past the middle of a sorted whole dataset, the page is read in the reverse order,
  skipping from the end: at most half the keys (the last page costs a page). Only where the
  count is exact at no cost (the whole dataset: the collection's record count, what `count` says).

And one for an unsorted view whose stages only filter (the whole dataset, a tag filter, a saved
view such as `F("uniqueness") > 0.5`): the skip evaluates the filter on every document before the
position (0.97 s a page at 10^6 for that saved view). Without an index that serves the filter,
MongoDB's skip walks the collection in its natural order: ▶ onto the next page resumes that walk
after the record of the page's last sample (find's `$_resumeAfter`; forward only: ◀ skips there).
Where MongoDB serves the filter from the sort index (field, _id) instead (it does for
`F(field) > x` once that index exists: the view is then in that order, and each skipped key
fetches its document), ▶ and ◀ continue from the key beside them as in a sorted view. Any other
plan: skip.

Where none is exact (no index on the field, values of more than one BSON type, NaN, an array),
`views.page`'s skip.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any

import fiftyone as fo
import pymongo.errors
from bson import ObjectId

from camcore.store import views
from camcore.store.datasets import db_errors, root_dataset

Rows = list[tuple[str, str]]


@db_errors
def page_at(view: fo.Dataset | fo.DatasetView, spec: views.ViewSpec, start: int, size: int = views.PAGE_SIZE,
            *, after: str | None = None, before: str | None = None) -> Rows:
    """(id, filepath) at positions start .. start+size-1, as `views.page` reads them, the cheapest
    exact way. `after`: the id of the sample at start-1 (the end of the page on screen, for ▶);
    `before`: the id of the sample at start+size (for ◀)."""
    start = max(0, int(start))
    parts = _sorted_parts(view, spec)
    if parts is not None:
        unsorted, direction = parts
        rows = None
        if after or before:
            rows = _keyset(unsorted, spec.sort_field, direction, after or before or "", bool(after), size)
        if rows is None:
            rows = _from_the_end(unsorted, spec.sort_field, direction, start, size)
        if rows is not None:
            return rows
    elif after or before:
        try:
            rows = _resumed(view, after or before or "", bool(after), size)
        except pymongo.errors.OperationFailure:
            # a server that refuses explain or the internal resume option (an older or managed
            # MongoDB, a sharded collection, a user without the right): the skip is still exact
            rows = None
        if rows is not None:
            return rows
    return views.page(view, start, size)


def _sorted_parts(view, spec: views.ViewSpec) -> tuple[fo.DatasetView, int] | None:
    """(the view without its last stage, the sort's direction) for a view in the explorer's own
    sort that an index serves; else None (skip)."""
    stages = getattr(view, "_stages", None)
    if not spec.sort_field or not stages or not isinstance(stages[-1], fo.SortBy):
        return None
    if views.sort_index_missing(root_dataset(view), spec.sort_field):
        # without an index on the field a seek (and its check of the field's ends) is a scan too
        return None
    unsorted = fo.DatasetView._build(view._dataset, view._serialize()[:-1])
    return unsorted, (-1 if spec.sort_reverse else 1)


def _read(view: fo.DatasetView, field: str, direction: int, skip: int, size: int) -> Rows:
    ordered = view.sort_by([(field, direction), ("_id", direction)])
    ordered = ordered.skip(skip).limit(size) if skip else ordered.limit(size)
    ids, paths = ordered.values(["id", "filepath"])
    return list(zip(ids, paths, strict=True))


# ---------------------------------------------------------------- keyset: from a neighbour's key


def _keyset(unsorted: fo.DatasetView, field: str, direction: int, anchor: str, forward: bool,
            size: int) -> Rows | None:
    """The `size` samples right after (forward) or right before the anchor sample in the order
    (field, _id) both in `direction`; None where a range query could miss some (skip instead)."""
    try:
        oid = ObjectId(anchor)
    except Exception:
        return None
    coll = root_dataset(unsorted)._sample_collection
    doc = coll.find_one({"_id": oid}, {field: 1})
    if doc is None:
        return None  # deleted since its page was read: skip
    value = _dig(doc, field)
    if value is not None and not _one_bracket(coll, field, _bracket(value)):
        return None
    greater = forward == (direction == 1)  # the samples wanted have greater keys than the anchor
    query = {"$or": _side(field, value, oid, greater)}
    order = direction if forward else -direction
    rows = _read(unsorted.match(query), field, order, 0, size)
    return rows if forward else rows[::-1]


def _side(field: str, value: Any, oid: ObjectId, greater: bool) -> list[dict]:
    """The samples whose key (value, _id) is above (greater) or below the anchor's. Missing and
    null values sort lowest (MongoDB's order); a range on a value matches its own type only, so
    the null side is named apart."""
    op = "$gt" if greater else "$lt"
    ties = {field: value, "_id": {op: oid}}
    if value is None:
        return [ties, {field: {"$ne": None}}] if greater else [ties]
    return [{field: {op: value}}, ties] + ([] if greater else [{field: None}])


def _dig(doc: dict, path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _bracket(value: Any) -> str | None:
    """MongoDB's comparison bracket of a value (ranges compare within one); None: not handled."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _dt.datetime):
        return "date"
    return None


def _one_bracket(coll, field: str, bracket: str | None) -> bool:
    """Every non-null value of the field in the anchor's bracket: then a range from the anchor
    misses none. BSON orders brackets apart, so the smallest and the largest value (two seeks on
    the sort's index) tell; NaN and a multikey index (an array somewhere) are refused."""
    if bracket is None:
        return False
    ends = []
    for order in (1, -1):
        doc = next(iter(coll.find({field: {"$ne": None}}, {field: 1}).sort(field, order).limit(1)), None)
        if doc is None:
            return False
        ends.append(_dig(doc, field))
    # NaN sorts below every number but no range from a number matches it: it is the smallest end
    if any(isinstance(v, list) or _bracket(v) != bracket or v != v for v in ends):
        return False
    plan = coll.find({field: {"$ne": None}}, {field: 1}).sort(field, 1).limit(1).explain()
    return not _multikey(plan.get("queryPlanner", {}).get("winningPlan", {}))


def _multikey(stage: Any) -> bool:
    if isinstance(stage, dict):
        return bool(stage.get("isMultiKey")) or any(_multikey(v) for v in stage.values())
    if isinstance(stage, list):
        return any(_multikey(v) for v in stage)
    return False


# ---------------------------------------------------------------- the nearer end of a whole dataset


def _from_the_end(unsorted: fo.DatasetView, field: str, direction: int, start: int, size: int) -> Rows | None:
    """Positions start.. read in the reverse order from the end, when that end is nearer and the
    view is a whole dataset (its count is the collection's record count); else None."""
    if not views.is_plain(unsorted):
        return None
    total = views.count(unsorted)
    if start >= total:
        return []
    wanted = min(size, total - start)
    from_end = total - start - wanted  # samples after the page
    if from_end >= start:
        return None  # the start is nearer: skip forward
    return _read(unsorted, field, -direction, from_end, wanted)[::-1]


# ---------------------------------------------------------------- an unsorted filter: resume the scan


def _resumed(view: fo.Dataset | fo.DatasetView, anchor: str, forward: bool, size: int) -> Rows | None:
    """The `size` samples right after (forward) or right before the anchor, in the order the skip
    reads an unsorted view whose stages are all filters, when MongoDB's one plan for them makes that
    order known; else None (skip)."""
    try:
        oid = ObjectId(anchor)
    except Exception:
        return None
    query = _filter_of(view)
    if query is None:
        return None
    coll = root_dataset(view)._sample_collection
    order = _plan_order(coll, query)
    if order is None:
        return None
    # the anchor, if it is still in the view (deleted or filtered out since: skip)
    found = next(iter(coll.find({"$and": [query, {"_id": oid}]}, None, show_record_id=True).limit(1)), None)
    if found is None:
        return None
    if order == "$natural":
        if not forward or "$recordId" not in found:  # MongoDB resumes a forward scan only
            return None
        reply = coll.database.command(
            "find", coll.name, filter=query, projection={"_id": 1, "filepath": 1}, hint={"$natural": 1},
            limit=int(size), singleBatch=True,
            **{"$_requestResumeToken": True, "$_resumeAfter": {"$recordId": found["$recordId"]}})
        return [(str(d["_id"]), d.get("filepath")) for d in reply["cursor"]["firstBatch"]]
    # the planner walks the (field, _id) sort index: the view is in that order, a keyset continues it
    value = _dig(found, order)
    if value is None or not _one_bracket(coll, order, _bracket(value)):
        return None
    beside = {"$and": [query, {"$or": _side(order, value, oid, forward)}]}
    step = 1 if forward else -1
    docs = coll.find(beside, {"_id": 1, "filepath": 1}).sort([(order, step), ("_id", step)]).hint(
        [(order, 1), ("_id", 1)]).limit(int(size))
    rows = [(str(d["_id"]), d.get("filepath")) for d in docs]
    return rows if forward else rows[::-1]


def _filter_of(view: fo.Dataset | fo.DatasetView) -> dict | None:
    """The view as one MongoDB filter, when every stage of its pipeline is a `$match`; else None."""
    if views.is_plain(view):
        return {}
    pipeline = view._pipeline()
    if not all(isinstance(stage, dict) and list(stage) == ["$match"] for stage in pipeline):
        return None
    matches = [stage["$match"] for stage in pipeline]
    return matches[0] if len(matches) == 1 else {"$and": matches}


def _plan_order(coll, query: dict) -> str | None:
    """The order MongoDB's only plan for the filter reads the samples in: "$natural" (a forward
    collection scan), a field name (a forward walk of the (field, _id) sort index, which serves
    FiftyOne's `$expr` comparisons on that field), or None (another plan, or more than one)."""
    planner = coll.database.command("explain", {"find": coll.name, "filter": query},
                                    verbosity="queryPlanner").get("queryPlanner", {})
    if planner.get("rejectedPlans"):
        return None
    plan = planner.get("winningPlan", {})
    if plan.get("stage") == "FETCH":
        plan = plan.get("inputStage", {})
    if plan.get("direction", "forward") != "forward":
        return None
    if plan.get("stage") == "COLLSCAN":
        return "$natural"
    keys = list(plan.get("keyPattern", {}).items())
    if plan.get("stage") == "IXSCAN" and len(keys) == 2 and keys[1] == ("_id", 1) and keys[0][1] == 1 \
            and not plan.get("isMultiKey"):
        return str(keys[0][0])
    return None
