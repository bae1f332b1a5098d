"""How the FiftyOne App shows our heatmap fields: saved in the dataset's App config, so that every
App (opened before or after a push, in any process) draws them the same way.

- Colour: FiftyOne 1.22 draws a Heatmap with its colour scale only when the scheme colours "by
  value"; "by field" (the App's default) draws each map as a one-colour tint of the field's colour.
  So our fields get a per-field colour scale (jet, like the explorer) in
  ``dataset.app_config.color_scheme.colorscales`` and the scheme's ``color_by`` becomes "value"
  unless the user chose one.
- One map at a time: only the newest heatmap field is switched on (active); our older ones are
  switched off, so maps never stack into a wash.
- Grouped: our fields sit in one sidebar group, ``CAM heatmaps``, after the labels; their measure
  fields (floats, flags, settings: the App's "primitives") in ``CAM measures`` under it.

An App that is already open keeps the scheme and the sidebar groups it loaded: :func:`app_updates`
gives the App operations (``set_color_scheme``, ``set_active_fields``) and :func:`sidebar_groups`
the saved groups, which an operator triggers to apply them now (the groups through the plugin's
browser-side ``set_sidebar_groups``: FiftyOne 1.22 keeps an open App's groups even across
``reload_dataset``); an App this process serves is refreshed through
:func:`camcore.store.app.refresh_app` (colours and switched-on fields), and kept on the saved scheme
whoever writes it by :mod:`camcore.store.appwatch`; any open page takes the saved groups within
about two seconds through the plugin's own check (``sync_app``, :func:`appwatch.saved_groups`).
"""
from __future__ import annotations

import copy
import operator
from typing import Any

import fiftyone as fo
from fiftyone.core.odm.dataset import ActiveFields, SidebarGroupDocument

from camcore.store import app, schema
from camcore.store.datasets import MARK

HEATMAP_COLORSCALE = "jet"  # the app's default colormap: the App draws our maps like the explorer does
COLOR_BY = "value"  # the only colour mode in which the App 1.22 draws a Heatmap with its scale
SIDEBAR_GROUP = "CAM heatmaps"
MEASURE_GROUP = "CAM measures"  # the measure fields (camm_*), under the heatmaps' group


def ours(dataset: fo.Dataset) -> list[str]:
    """Our heatmap fields (marked in their field info), in schema order. Read from the sample
    class's declared fields: the schema API builds a filtered copy of every field per call."""
    return [name for name in dataset._sample_doc_cls._fields_ordered if _is_ours(dataset, name)]


def _is_ours(dataset: fo.Dataset, name: str) -> bool:
    mark = (getattr(dataset._sample_doc_cls._fields.get(name), "info", None) or {}).get(MARK)
    return isinstance(mark, dict) and mark.get("kind") == "heatmap"


class _Ours:
    """Is a path one of our heatmap fields: the fields at hand (not declared here yet) or a declared one."""

    def __init__(self, dataset: fo.Dataset, fields: list[str]):
        self.dataset, self.fields = dataset, set(fields)

    def __contains__(self, name: object) -> bool:
        return name in self.fields or (isinstance(name, str) and _is_ours(self.dataset, name))


def _show_in_app(dataset: fo.Dataset, fields: list[str], group: str | None = None,
                 update: schema.DatasetUpdate | None = None) -> None:
    """Style the heatmap fields just declared for the App (see the module's docstring): as part of
    `update`, or written (and an App this process serves refreshed) now. `group` (a push's or a
    run's id) is accepted for the callers' sake: the newest field alone is switched on.

    Reads the stored config as plain documents and writes only the entries that change (a colour
    scale and a sidebar path per field at hand, the switched-on list), each guarded by what it
    assumes: the config holds an entry per field, and converting, rewriting or walking it whole
    on each push cost time that grew with the fields."""
    config = schema.stored_app_config(dataset)
    own: Any = update or schema.DatasetUpdate(dataset)
    if not config:  # no App config stored at all: write one whole
        config = fo.DatasetAppConfig().to_mongo().to_dict()
        own.app_config("$set", "", config)
        own = _Whole(own, config)
    fields = list(dict.fromkeys(fields))
    mine = _Ours(dataset, fields)
    _activate(dataset, config, fields[-1:], mine, own)
    _color(dataset, config, fields, own)
    _group(dataset, config, fields, mine, own)
    if update is None:
        own.commit()
        app.refresh_app(dataset.name)


class _Whole:
    """The App config being written whole: changes go into that document (written by its $set)."""

    def __init__(self, update: schema.DatasetUpdate, config: dict):
        self.update, self.config = update, config

    def app_config(self, op: str, path: str, value: object) -> None:
        schema._apply_plain(self.config, path, op, value)

    def guard(self, path: str, value: object) -> None:
        pass

    def commit(self) -> None:
        self.update.commit()


def _color(dataset: fo.Dataset, config: dict, fields: list[str], update: Any) -> None:
    """A colour scale for each of these fields (a user's own scale for a field wins) and colour by
    value (unless the user chose a mode)."""
    scheme = config.get("color_scheme")
    if scheme is None:  # the first time: every field of ours
        scheme = fo.ColorScheme().to_mongo().to_dict()
        every = dict.fromkeys(ours(dataset) + fields)
        scheme["colorscales"] = [{"path": f, "name": HEATMAP_COLORSCALE} for f in every]
        scheme["color_by"] = COLOR_BY
        update.app_config("$set", "color_scheme", scheme)
        return
    scales = scheme.get("colorscales")
    styled = _paths(scales)
    missing = [{"path": f, "name": HEATMAP_COLORSCALE} for f in fields if f not in styled]
    if missing:
        if isinstance(scales, list):
            update.app_config("$push", "color_scheme.colorscales", missing)
        else:
            update.app_config("$set", "color_scheme.colorscales", missing)
    if not scheme.get("color_by"):
        update.app_config("$set", "color_scheme.color_by", COLOR_BY)


def _paths(scales: Any) -> set:
    """The paths the colour scales are for: an entry per field, so built at C speed (a Python loop
    over them was a tenth of a millisecond at 500 fields, on every push and batch set-up)."""
    try:
        return set(map(operator.itemgetter("path"), scales or []))
    except (KeyError, TypeError):  # an entry without a path, or not a dict
        return {c.get("path") for c in scales or [] if isinstance(c, dict)}


def _group(dataset: fo.Dataset, config: dict, fields: list[str], mine: _Ours, update: Any) -> None:
    """Our fields in one sidebar group after the labels (the App puts any field a group list
    leaves out in its default group): new paths pushed to that group, ours pulled from others."""
    stored = config.get("sidebar_groups")
    names = [g.get("name") for g in stored or []]
    if stored is None or SIDEBAR_GROUP not in names:  # the group is made once: the list written whole
        groups = (copy.deepcopy(stored) if stored is not None else  # FiftyOne's default groups then
                  [g.to_mongo().to_dict() for g in fo.DatasetAppConfig.default_sidebar_groups(dataset)])
        _regroup(groups, list(dict.fromkeys(ours(dataset) + fields)))
        update.app_config("$set", "sidebar_groups", groups)
        return
    for i, g in enumerate(stored):
        paths = list(g.get("paths") or [])
        if g.get("name") != SIDEBAR_GROUP:
            taken = [p for p in paths if p in mine]
            if taken:
                update.guard(f"sidebar_groups.{i}.name", g.get("name"))
                update.app_config("$pullAll", f"sidebar_groups.{i}.paths", taken)
            continue
        update.guard(f"sidebar_groups.{i}.name", SIDEBAR_GROUP)
        # Only our fields were put in this group: one still declared stays. Set arithmetic over the
        # names, not a read of each field's info (that grew a push's cost with the field count).
        listed = set(paths)
        gone = listed.difference(dataset._sample_doc_cls._fields, mine.fields)
        kept = [p for p in paths if p not in gone] if gone else paths
        new = [f for f in fields if f not in listed]
        if kept != paths:  # a field deleted or renamed elsewhere leaves the group: written whole
            update.app_config("$set", f"sidebar_groups.{i}.paths", kept + new)
        elif new:
            update.app_config("$push", f"sidebar_groups.{i}.paths", new)


def _regroup(groups: list[dict], mine: list[str]) -> None:
    """Put our fields in our group (made after "labels" if absent), out of every other group."""
    ours_ = set(mine)
    for g in groups:
        if g.get("name") != SIDEBAR_GROUP:
            g["paths"] = [p for p in (g.get("paths") or []) if p not in ours_]
    cam = next((g for g in groups if g.get("name") == SIDEBAR_GROUP), None)
    if cam is None:
        cam = SidebarGroupDocument(name=SIDEBAR_GROUP, paths=[], expanded=True).to_mongo().to_dict()
        names = [g.get("name") for g in groups]
        groups.insert(names.index("labels") + 1 if "labels" in names else len(groups), cam)
    cam["paths"] = list(dict.fromkeys([p for p in (cam.get("paths") or []) if p in ours_] + list(mine)))


def group_measures(dataset: fo.Dataset, update: schema.DatasetUpdate, fields: list[str], every: list[str]) -> None:
    """Put measure fields in their own sidebar group (MEASURE_GROUP, after the heatmaps' group), as
    part of `update`. The group is made once, with `every` measure field of the dataset (those
    written before it existed leave the App's primitives then); after that, `fields` (the ones
    being added) are pushed to it and taken out of any other group. A measure field the user moved
    to a group of their own later stays there, and their groups and edits are kept."""
    config = schema.stored_app_config(dataset)
    if not config:  # no App config yet (written with the first heatmap field): nothing to group into
        return
    stored = config.get("sidebar_groups")
    if stored is None or MEASURE_GROUP not in [g.get("name") for g in stored]:
        mine = list(dict.fromkeys([*every, *fields]))
        if not mine:
            return
        groups = (copy.deepcopy(stored) if stored is not None else
                  [g.to_mongo().to_dict() for g in fo.DatasetAppConfig.default_sidebar_groups(dataset)])
        _into_group(groups, MEASURE_GROUP, mine, after=SIDEBAR_GROUP)
        update.guard("sidebar_groups", stored)  # written whole: only over the list it was made from
        update.app_config("$set", "sidebar_groups", groups)
        return
    wanted = set(fields)
    for i, g in enumerate(stored):
        paths = list(g.get("paths") or [])
        if g.get("name") == MEASURE_GROUP:
            new = [f for f in dict.fromkeys(fields) if f not in paths]
            if new:
                update.guard(f"sidebar_groups.{i}.name", MEASURE_GROUP)
                update.app_config("$push", f"sidebar_groups.{i}.paths", new)
        elif wanted & set(paths):
            update.guard(f"sidebar_groups.{i}.name", g.get("name"))
            update.app_config("$pullAll", f"sidebar_groups.{i}.paths", [p for p in paths if p in wanted])


def _into_group(groups: list[dict], name: str, fields: list[str], after: str) -> None:
    """Put `fields` in the group `name` (made after the group `after`, else after "labels", else
    last, if absent), out of every other group."""
    wanted = set(fields)
    for g in groups:
        if g.get("name") != name:
            g["paths"] = [p for p in (g.get("paths") or []) if p not in wanted]
    target = next((g for g in groups if g.get("name") == name), None)
    if target is None:
        target = SidebarGroupDocument(name=name, paths=[], expanded=True).to_mongo().to_dict()
        names = [g.get("name") for g in groups]
        anchor = after if after in names else "labels"
        groups.insert(names.index(anchor) + 1 if anchor in names else len(groups), target)
    target["paths"] = list(dict.fromkeys([*(target.get("paths") or []), *fields]))


def _activate(dataset: fo.Dataset, config: dict, shown: list[str], mine: _Ours, update: Any) -> None:
    """Switch on `shown` and off our other heatmap fields in the App config."""
    active = config.get("active_fields")
    paths_now = list((active or {}).get("paths") or [])
    exclude = bool((active or {}).get("exclude"))
    if active is None or (exclude and set(paths_now) <= _dense_fields(dataset) | mine.fields | set(ours(dataset))):
        default = fo.DatasetAppConfig.default_active_fields(dataset)
        new = {"exclude": False, "paths": [p for p in default.paths if p not in mine] + shown}
    elif exclude:  # the user's own exclusion list: keep it, and exclude our older maps too
        older = sorted((set(ours(dataset)) | mine.fields) - set(shown))
        new = {"exclude": True, "paths": [p for p in paths_now if p not in mine] + older}
    else:
        new = {"exclude": False, "paths": [p for p in paths_now if p not in mine] + shown}
    if active is None or exclude != new["exclude"] or paths_now != new["paths"]:
        update.app_config("$set", "active_fields", ActiveFields(**new).to_mongo().to_dict())


def _dense_fields(dataset: fo.Dataset) -> set[str]:
    """Heatmap and Segmentation fields: the ones the App leaves unchecked by default."""
    out = set()
    for name, f in dataset._sample_doc_cls._fields.items():
        doc_type = getattr(f, "document_type", None)
        if isinstance(f, fo.EmbeddedDocumentField) and doc_type and issubclass(doc_type, (fo.Heatmap, fo.Segmentation)):
            out.add(name)
    return out


def app_updates(dataset: fo.Dataset) -> list[tuple[str, dict]]:
    """(App operator, params) that make an App already open on this dataset take its saved style
    now: the colour mode and scales, and the switched-on fields. An operator triggers them."""
    dataset.reload()
    config = dataset.app_config
    out: list[tuple[str, dict]] = []
    scheme = config.color_scheme
    if scheme is not None:
        params: dict[str, Any] = {"colorscales": [dict(c) for c in (scheme.colorscales or [])]}
        if scheme.color_by:
            params["color_by"] = scheme.color_by
        out.append(("set_color_scheme", params))
    active = config.active_fields
    if active is not None and not active.exclude:
        out.append(("set_active_fields", {"fields": list(active.paths)}))
    return out


def sidebar_groups(dataset: fo.Dataset) -> list[dict[str, Any]]:
    """The dataset's saved sidebar groups as plain data (name, paths, expanded), for an App that is
    already open (the plugin's set_sidebar_groups); [] when none are saved."""
    dataset.reload()
    return [{"name": g.name, "paths": list(g.paths or []), "expanded": g.expanded is not False}
            for g in dataset.app_config.sidebar_groups or []]
