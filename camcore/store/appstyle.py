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

An App that is already open keeps the scheme it loaded: :func:`app_updates` gives the App
operations (``set_color_scheme``, ``set_active_fields``) that an operator triggers to apply it now;
an App this process serves is refreshed through :func:`camcore.store.app.refresh_app`.
"""
from __future__ import annotations

from typing import Any

import fiftyone as fo
from fiftyone.core.odm.dataset import ActiveFields, SidebarGroupDocument

from camcore.store import app, schema
from camcore.store.datasets import MARK

HEATMAP_COLORSCALE = "jet"  # the app's default colormap: the App draws our maps like the explorer does
COLOR_BY = "value"  # the only colour mode in which the App 1.22 draws a Heatmap with its scale
SIDEBAR_GROUP = "CAM heatmaps"


def ours(dataset: fo.Dataset) -> list[str]:
    """Our heatmap fields (marked in their field info), in schema order."""
    out = []
    for name, field in dataset.get_field_schema().items():
        mark = (getattr(field, "info", None) or {}).get(MARK)
        if isinstance(mark, dict) and mark.get("kind") == "heatmap":
            out.append(name)
    return out


def _show_in_app(dataset: fo.Dataset, fields: list[str], group: str | None = None) -> None:
    """Style the heatmap fields just declared for the App (see the module's docstring) and refresh
    an App this process serves. `group` (a push's or a run's id) is accepted for the callers'
    sake: the newest field alone is switched on either way."""
    config = dataset.app_config
    mine = list(dict.fromkeys(ours(dataset) + list(fields)))
    newest = list(fields)[-1:]
    changed = _activate(dataset, config, newest, mine)
    changed = _color(config, mine) or changed
    changed = _group(dataset, config, mine) or changed
    if changed:
        schema.save_app_config(dataset)  # not dataset.save(): its cost grows with the field count
    app.refresh_app(dataset.name)


def _color(config: Any, fields: list[str]) -> bool:
    """A colour scale for each of our fields (a user's own scale for a field wins) and colour by
    value (unless the user chose a mode); True if the scheme changed."""
    scheme = config.color_scheme or fo.ColorScheme()
    scales = list(scheme.colorscales or [])
    styled = {c.get("path") for c in scales if isinstance(c, dict)}
    missing = [f for f in fields if f not in styled]
    if not missing and scheme.color_by:
        return False
    scheme.colorscales = scales + [{"path": f, "name": HEATMAP_COLORSCALE} for f in missing]
    if not scheme.color_by:
        scheme.color_by = COLOR_BY
    config.color_scheme = scheme
    return True


def _group(dataset: fo.Dataset, config: Any, fields: list[str]) -> bool:
    """Our fields in one sidebar group after the labels (the App puts any field a group list
    leaves out in its default group); True if the groups changed."""
    groups = list(config.sidebar_groups or fo.DatasetAppConfig.default_sidebar_groups(dataset))
    before = [(g.name, list(g.paths or [])) for g in groups]
    mine = set(fields)
    for g in groups:
        if g.name != SIDEBAR_GROUP:
            g.paths = [p for p in (g.paths or []) if p not in mine]
    cam = next((g for g in groups if g.name == SIDEBAR_GROUP), None)
    if cam is None:
        cam = SidebarGroupDocument(name=SIDEBAR_GROUP, paths=[], expanded=True)
        names = [g.name for g in groups]
        groups.insert(names.index("labels") + 1 if "labels" in names else len(groups), cam)
    cam.paths = list(dict.fromkeys([p for p in (cam.paths or []) if p in mine] + list(fields)))
    if config.sidebar_groups is not None and [(g.name, list(g.paths or [])) for g in groups] == before:
        return False
    config.sidebar_groups = groups
    return True


def _activate(dataset: fo.Dataset, config: Any, shown: list[str], mine: list[str] | None = None) -> bool:
    """Switch on `shown` and off our other heatmap fields in the App config; True if it changed."""
    active = config.active_fields
    our = set(ours(dataset) if mine is None else mine) | set(shown)
    older = sorted(our - set(shown))
    if active is None or (active.exclude and set(active.paths) <= _dense_fields(dataset) | our):
        default = fo.DatasetAppConfig.default_active_fields(dataset)
        paths = [p for p in default.paths if p not in our] + shown
        new_active = ActiveFields(exclude=False, paths=paths)
    elif active.exclude:  # the user's own exclusion list: keep it, and exclude our older maps too
        paths = [p for p in active.paths if p not in our] + older
        new_active = ActiveFields(exclude=True, paths=paths)
    else:
        paths = [p for p in active.paths if p not in our] + shown
        new_active = ActiveFields(exclude=False, paths=paths)
    if active is None or active.exclude != new_active.exclude or list(active.paths) != list(new_active.paths):
        config.active_fields = new_active
        return True
    return False


def _dense_fields(dataset: fo.Dataset) -> set[str]:
    """Heatmap and Segmentation fields: the ones the App leaves unchecked by default."""
    return {name for name, f in dataset.get_field_schema().items()
            if isinstance(f, fo.EmbeddedDocumentField) and f.document_type
            and issubclass(f.document_type, (fo.Heatmap, fo.Segmentation))}


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
