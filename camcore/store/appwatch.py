"""Keep the App this process serves on its dataset's saved colour scheme, whoever saved it.

Why: the FiftyOne App (1.22) does not draw with the dataset's saved scheme. Its server holds the
session's scheme (``StateDescription.color_scheme``), built from the dataset when the session was
launched or switched datasets, and a page (a first load, a tab reload, a sample opened by URL)
takes the server's copy. A push from another process (the CLI, a batch, another explorer) saves
the scheme in the dataset only, so an App launched before it kept "colour by field": each map a
one-colour tint. ``session.refresh()`` does not help: it sends the session's own stale copy again.

Nor does ``session.color_scheme = ...`` alone: the App's heatmap painter takes a field's colour
scale from its ``rgb`` (the sampled colours), which the App's GraphQL computes for a scheme the
page saves itself, but the session's events leave out; without it every field falls back on the
default scale (viridis), not the field's own (jet).

So a daemon thread reads the saved scheme (one small MongoDB read a second) and, when it changed,
puts it on the session with each scale's ``rgb`` filled in and refreshes the App: the server keeps
that state for every later page load, and the open pages take it (and the new fields) at once. A
scheme changed in the App for this session only is kept until the dataset's saved one changes.
"""
from __future__ import annotations

import threading
from typing import Any

import fiftyone as fo
from fiftyone.core.plots.plotly import get_colormap
from fiftyone.core.state import build_color_scheme

from camcore.store.datasets import datasets_collection

POLL_SECONDS = 1.0


def saved_scheme(dataset_name: str) -> dict | None:
    """The dataset's saved colour scheme as stored (a plain document), None when none is saved."""
    doc = datasets_collection().find_one({"name": dataset_name}, {"app_config.color_scheme": 1}) or {}
    return (doc.get("app_config") or {}).get("color_scheme")


def saved_groups(dataset_name: str) -> list[dict]:
    """The dataset's saved sidebar groups as plain data (name, paths, expanded), [] when none are
    saved: one small read, for the plugin's page-side check (plugins/cam-explorer: sync_app)."""
    doc = datasets_collection().find_one({"name": dataset_name}, {"app_config.sidebar_groups": 1}) or {}
    groups = (doc.get("app_config") or {}).get("sidebar_groups") or []
    return [{"name": str(g.get("name")), "paths": [str(p) for p in g.get("paths") or []],
             "expanded": g.get("expanded") is not False} for g in groups if isinstance(g, dict)]


def _comparable(scheme: fo.ColorScheme) -> dict:
    out = scheme.to_dict()
    for key in ("_id", "id"):
        out.pop(key, None)
    return out


def _with_rgb(scale: dict) -> dict:
    """A colour scale ({"name"} or {"list": [{"value", "color"}]}) with the colours the App paints with."""
    data = scale.get("name") or [[item["value"], item["color"]] for item in scale.get("list") or []]
    return {**scale, "rgb": [list(c) for c in get_colormap(data)]} if data else scale


def app_scheme(stored: dict | None, config: Any) -> fo.ColorScheme:
    """The scheme an App session should hold for this stored one: the App's defaults filled in as
    FiftyOne does at launch, and each colour scale's rgb."""
    scheme = build_color_scheme(fo.ColorScheme.from_dict(stored) if stored else None, None, config)
    scheme.colorscales = [_with_rgb(dict(c)) for c in scheme.colorscales or []] or None
    if scheme.default_colorscale:
        scheme.default_colorscale = _with_rgb(dict(scheme.default_colorscale))
    return scheme


def sync_scheme(session: Any, stored: dict | None) -> bool:
    """Give the session (and so its App server and open pages) the stored scheme (app_scheme).
    True when it had to be sent; raises RuntimeError while the session is not connected."""
    scheme = app_scheme(stored, session.config)
    if _comparable(scheme) == _comparable(session.color_scheme):
        return False
    session.color_scheme = scheme  # also sends set_color_scheme, which drops the rgb
    held = session.color_scheme  # the session's copy, rebuilt from that event: put the rgb back
    held.colorscales, held.default_colorscale = scheme.colorscales, scheme.default_colorscale
    session.refresh()  # the whole state, rgb included: kept by the server, taken by open pages
    return True


class SchemeWatch(threading.Thread):
    """The thread: started with the App session, stopped with it."""

    def __init__(self, session: Any, interval: float = POLL_SECONDS):
        super().__init__(name="cam-app-scheme-watch", daemon=True)
        self.session, self.interval = session, interval
        self._stopped = threading.Event()
        self._seen: tuple[str, dict | None] | None = None  # (dataset, stored scheme) last applied

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.check()
            except Exception:  # a database or App server hiccup: try again on the next tick
                continue

    def check(self) -> None:
        """One tick: apply the shown dataset's saved scheme if it changed since the last one applied."""
        dataset = self.session.dataset  # the App may have switched datasets
        if dataset is None:
            return
        now = (dataset.name, saved_scheme(dataset.name))
        if now == self._seen:
            return
        sync_scheme(self.session, now[1])  # a failure leaves _seen: retried next tick
        self._seen = now
