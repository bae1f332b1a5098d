"""How the FiftyOne App shows our heatmap fields: saved in the dataset's App config, so that every
App (opened before or after a push, in any process) draws them the same way.

- Colour: FiftyOne 1.22 draws a Heatmap with its colour scale only when the scheme colours "by
  value"; "by field" (the App's default) draws each map as a one-colour tint of the field's colour.
  So our fields get a per-field colour scale (jet, like the explorer) in
  ``dataset.app_config.color_scheme.colorscales`` and the scheme's ``color_by`` becomes "value"
  unless the user chose one.
- One map at a time: only the newest heatmap field is switched on (active); our older ones are
  switched off, so maps never stack into a wash.
- Grouped: our fields sit in one sidebar group, ``CAM heatmaps``, after the labels.

An App that is already open keeps the scheme and the sidebar groups it loaded: :func:`app_updates`
gives the App operations (``set_color_scheme``, ``set_active_fields``) and :func:`sidebar_groups`
the saved groups, which an operator triggers to apply them now (the groups through the plugin's
browser-side ``set_sidebar_groups``: FiftyOne 1.22 keeps an open App's groups even across
``reload_dataset``); an App this process serves is refreshed through
:func:`camcore.store.app.refresh_app` (colours and switched-on fields; its groups on its next load).
"""
from __future__ import annotations

import copy
from typing import Any

import fiftyone as fo
from fiftyone.core.odm.dataset import ActiveFields, SidebarGroupDocument

from camcore.store import app, schema
from camcore.store.datasets import MARK

HEATMAP_COLORSCALE = "jet"  # the app's default colormap: the App draws our maps like the explorer does
COLOR_BY = "value"  # the only colour mode in which the App 1.22 draws a Heatmap with its scale
SIDEBAR_GROUP = "CAM heatmaps"


def ours(dataset: fo.Dataset) -> list[str]:
    """Our heatmap fields (marked in their field info), in schema order. Read from the sample
    class's declared fields: the schema API builds a filtered copy of every field per call."""
    fields = dataset._sample_doc_cls._fields
    out = []
    for name in dataset._sample_doc_cls._fields_ordered:
        mark = (getattr(fields.get(name), "info", None) or {}).get(MARK)
        if isinstance(mark, dict) and mark.get("kind") == "heatmap":
            out.append(name)
    return out


def _show_in_app(dataset: fo.Dataset, fields: list[str], group: str | None = None,
                 update: schema.DatasetUpdate | None = None) -> None:
    """Style the heatmap fields just declared for the App (see the module's docstring): as part of
    `update`, or written (and an App this process serves refreshed) now. `group` (a push's or a
    run's id) is accepted for the callers' sake: the newest field alone is switched on.

    Works on the stored config as plain documents: FiftyOne's config objects convert and compare
    every colour scale and sidebar path on each change."""
    config = copy.deepcopy(schema.stored_app_config(dataset))
    mine = list(dict.fromkeys(ours(dataset) + list(fields)))
    changed = _activate(dataset, config, list(fields)[-1:], mine)
    changed = _color(config, mine) or changed
    changed = _group(dataset, config, mine) or changed
    if update is not None:
        if changed:
            update.set_app_config(config)
        return
    if changed:
        own = schema.DatasetUpdate(dataset)
        own.set_app_config(config)
        own.commit()
    app.refresh_app(dataset.name)


def _color(config: dict, fields: list[str]) -> bool:
    """A colour scale for each of our fields (a user's own scale for a field wins) and colour by
    value (unless the user chose a mode); True if the scheme changed."""
    scheme = config.get("color_scheme")
    if scheme is None:
        scheme = config["color_scheme"] = fo.ColorScheme().to_mongo().to_dict()
    scales = list(scheme.get("colorscales") or [])
    styled = {c.get("path") for c in scales if isinstance(c, dict)}
    missing = [f for f in fields if f not in styled]
    if not missing and scheme.get("color_by"):
        return False
    scheme["colorscales"] = scales + [{"path": f, "name": HEATMAP_COLORSCALE} for f in missing]
    if not scheme.get("color_by"):
        scheme["color_by"] = COLOR_BY
    return True


def _group(dataset: fo.Dataset, config: dict, fields: list[str]) -> bool:
    """Our fields in one sidebar group after the labels (the App puts any field a group list
    leaves out in its default group); True if the groups changed."""
    stored = config.get("sidebar_groups")
    if stored is None:  # the first time only: FiftyOne's default groups for this schema
        stored = [g.to_mongo().to_dict() for g in fo.DatasetAppConfig.default_sidebar_groups(dataset)]
    groups = copy.deepcopy(stored)
    mine = set(fields)
    for g in groups:
        if g.get("name") != SIDEBAR_GROUP:
            g["paths"] = [p for p in (g.get("paths") or []) if p not in mine]
    cam = next((g for g in groups if g.get("name") == SIDEBAR_GROUP), None)
    if cam is None:
        cam = SidebarGroupDocument(name=SIDEBAR_GROUP, paths=[], expanded=True).to_mongo().to_dict()
        names = [g.get("name") for g in groups]
        groups.insert(names.index("labels") + 1 if "labels" in names else len(groups), cam)
    cam["paths"] = list(dict.fromkeys([p for p in (cam.get("paths") or []) if p in mine] + list(fields)))
    if config.get("sidebar_groups") is not None and groups == stored:
        return False
    config["sidebar_groups"] = groups
    return True


def _activate(dataset: fo.Dataset, config: dict, shown: list[str], mine: list[str] | None = None) -> bool:
    """Switch on `shown` and off our other heatmap fields in the App config; True if it changed."""
    active = config.get("active_fields")
    our = set(ours(dataset) if mine is None else mine) | set(shown)
    older = sorted(our - set(shown))
    paths_now = list((active or {}).get("paths") or [])
    exclude = bool((active or {}).get("exclude"))
    if active is None or (exclude and set(paths_now) <= _dense_fields(dataset) | our):
        default = fo.DatasetAppConfig.default_active_fields(dataset)
        new = {"exclude": False, "paths": [p for p in default.paths if p not in our] + shown}
    elif exclude:  # the user's own exclusion list: keep it, and exclude our older maps too
        new = {"exclude": True, "paths": [p for p in paths_now if p not in our] + older}
    else:
        new = {"exclude": False, "paths": [p for p in paths_now if p not in our] + shown}
    if active is None or exclude != new["exclude"] or paths_now != new["paths"]:
        config["active_fields"] = ActiveFields(**new).to_mongo().to_dict()
        return True
    return False


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
