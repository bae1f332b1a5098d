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

import calendar
import datetime
import hashlib
import json
import threading
import time
from typing import Any

import fiftyone as fo
from fiftyone.core.plots.plotly import get_colormap
from fiftyone.core.state import build_color_scheme

from camcore.store.datasets import datasets_collection

POLL_SECONDS = 1.0
# The least time between two redraws of a page's samples for changes made elsewhere (a batch writes
# chunk after chunk): a redraw reloads the page's dataset, whose sidebar counts cost the App server
# time in proportion to the samples, so bigger datasets wait longer (a steady share of its time),
# up to SAMPLES_EVERY_MAX
SAMPLES_EVERY = 10.0
SAMPLES_PER_EVERY = 20_000  # up to this many samples: SAMPLES_EVERY; twice as many: twice as long
SAMPLES_EVERY_MAX = 120.0
# In the environment of an App server the explorer launched (its session's watch keeps the scheme)
WATCHED_ENV = "CAM_EXPLORER_APP_WATCHED"
SIDEBAR_GROUPS_OP = "@cam-explorer/cam/set_sidebar_groups"  # the plugin's browser-side operator


def saved_scheme(dataset_name: str) -> dict | None:
    """The dataset's saved colour scheme as stored (a plain document), None when none is saved."""
    doc = datasets_collection().find_one({"name": dataset_name}, {"app_config.color_scheme": 1}) or {}
    return (doc.get("app_config") or {}).get("color_scheme")


def saved_groups(dataset_name: str) -> list[dict]:
    """The dataset's saved sidebar groups as plain data (name, paths, expanded), [] when none are saved."""
    return _groups(_saved_config(dataset_name))


def _saved_config(dataset_name: str) -> dict:
    return _saved_doc(dataset_name).get("app_config") or {}


def _saved_doc(dataset_name: str) -> dict:
    """The dataset's document, with only what a page is kept on (and where its samples are)."""
    return datasets_collection().find_one(
        {"name": dataset_name},
        {"app_config.sidebar_groups": 1, "app_config.color_scheme": 1, "app_config.active_fields": 1,
         "sample_collection_name": 1}) or {}


def samples_mark(doc: dict) -> int:
    """When the dataset's samples last changed, in ms since the epoch (their newest
    ``last_modified_at``, which FiftyOne sets on every sample write and indexes: one index entry
    read, whatever the dataset's size); 0 when it has none. A page drawn before shows stale samples."""
    name = doc.get("sample_collection_name")
    if not name:
        return 0
    newest = list(newest_sample(datasets_collection().database[name]))
    stamp = newest[0].get("last_modified_at") if newest else None
    return _ms(stamp) if stamp is not None else 0


def newest_sample(samples: Any) -> Any:
    """The cursor on a sample collection's newest change (its last_modified_at only)."""
    return samples.find({}, {"_id": 0, "last_modified_at": 1}).sort("last_modified_at", -1).limit(1)


def redraw_interval(doc: dict) -> float:
    """The least seconds between two redraws of a page's samples (SAMPLES_EVERY per
    SAMPLES_PER_EVERY samples, at most SAMPLES_EVERY_MAX), from the collection's size as its
    metadata holds it (no scan)."""
    name = doc.get("sample_collection_name")
    count = datasets_collection().database[name].estimated_document_count() if name else 0
    return min(SAMPLES_EVERY_MAX, SAMPLES_EVERY * max(1.0, count / SAMPLES_PER_EVERY))


def _ms(stamp: datetime.datetime) -> int:
    """A stored (naive UTC) datetime in ms since the epoch: MongoDB keeps ms."""
    return int(calendar.timegm(stamp.utctimetuple())) * 1000 + stamp.microsecond // 1000


def _groups(config: dict) -> list[dict]:
    return [{"name": str(g.get("name")), "paths": [str(p) for p in g.get("paths") or []],
             "expanded": g.get("expanded") is not False} for g in config.get("sidebar_groups") or []
            if isinstance(g, dict)]


def _digest(value: object) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def page_updates(dataset_name: str, seen: str | None, watched: bool,
                 known: list[str] | None = None) -> tuple[str, list[tuple[str, dict]]]:
    """What an open App page showing this dataset needs, asked by the page itself every few
    seconds (the plugin's sync_app): (the version of the saved config it will then show, the App
    operations to run). `seen`: the version the page last got (None on its first call).
    `known`: on the first call, the top-level fields the page's schema holds (None: not said).

    - The sidebar groups, on the first call and when they changed since `seen` (a page loads the
      saved ones; FiftyOne 1.22 then keeps them for as long as it shows the dataset, whatever the
      session sends).
    - Unless an explorer's session watch keeps this App's scheme (`watched`, set by launch_app):
      the saved colour scheme on the first call and on each change (a page loads its session's
      launch scheme, not the dataset's), the saved switched-on fields on each change, and, first,
      reload_dataset on each change (the page's schema learns the new fields); with it, on each
      change of the groups.
    - The first call can come seconds after the page loaded (the page retries until the App has
      listed the plugin's operators): a push in between changed nothing the page shows. So it
      gets the groups anyway, and where its schema lacks a field the saved config names (or it did
      not say which it holds), reload_dataset and the switched-on fields too. A reload at every
      page open would refetch the whole dataset (its schema too) a second time: only when stale.
    - In any App, when the samples changed since the page last drew them (a map replaced in a
      field it already has, by another process: nothing above changed), reload_dataset (the
      grid's tiles take new copies; the plugin then has the samples the page opened read again),
      at most every redraw_interval seconds (a batch writes chunk after chunk).
    The plugin's set_sidebar_groups op always comes first: it records the version in the page."""
    doc = _saved_doc(dataset_name)
    config = doc.get("app_config") or {}
    groups, colours, parts, now, core = _page_state(dataset_name, config, watched)
    before = {p[:1]: p[1:] for p in (seen or "").split(".") if p}
    mark, clock = samples_mark(doc), time.time()
    drawn, _, drawn_at = before.get("m", "").partition("@")
    samples_changed = bool(seen) and str(mark) != drawn
    redraw = samples_changed and clock - _seconds(drawn_at) >= redraw_interval(doc)
    stale = not seen and _page_lacks_fields(dataset_name, config, known)
    send_groups = not seen or before.get("g") != now["g"]
    # Without the explorer's session (whose refresh reloads the page's dataset), the page must
    # reload it itself: a new field is not in its schema yet (its group would show "No fields").
    # With it too when the groups changed: the session refreshes on a colour change only, and a
    # batch's measure fields come after its maps (or alone, measuring maps made before).
    # (a version is _version's: "<core>.m<mark>@<when drawn>")
    reload = stale or bool(seen and core != seen.rsplit(".m", 1)[0] and (not watched or send_groups))
    # the samples changed since the page drew them: their new copies (the App's own reload_samples
    # redraws its cached ones, and a replaced map's old file is gone: the tile drawn blank; its
    # useUpdateSamples with the new copies, even with a redraw after it, left the tile as it was)
    reload = reload or redraw
    # the samples' mark the page will have drawn, with when; a change too soon after the last
    # redraw stays pending (the page keeps its old mark) until a later check
    version = f"{core}.m{before['m']}" if "m" in before and not (redraw or reload) else _version(core, mark, clock)
    if seen == version:
        return version, []
    ops: list[tuple[str, dict]] = [("reload_dataset", {})] if reload else []
    ops += [(SIDEBAR_GROUPS_OP, {"groups": groups if send_groups else [], "version": version})]
    if "s" in now and before.get("s") != now["s"]:
        # with each scale's rgb: the page's painter draws a field from its scale's rgb, and the
        # App's own set_color_scheme puts the scales on the page as given (the rgb only comes
        # back with the server's answer, which under load did not reach the tile: drawn viridis)
        ops.append(("set_color_scheme", {**colours, "colorscales": [_with_rgb(c) for c in colours["colorscales"]]}))
    if "a" in now and ((seen and before.get("a") != now["a"]) or stale):
        ops.append(("set_active_fields", {"fields": parts["a"]}))
    return version, ops


def page_version(dataset_name: str, watched: bool) -> str:
    """The version (page_updates') of what a page shows once it has taken the dataset's saved
    groups (and, unwatched, colours and switched-on fields) and drawn its samples now:
    compute_cams hands it over with the groups it sends, so the page's next check does not send
    them, and reload it, again."""
    doc = _saved_doc(dataset_name)
    core = _page_state(dataset_name, doc.get("app_config") or {}, watched)[4]
    return _version(core, samples_mark(doc), time.time())


def _version(core: str, mark: int, clock: float) -> str:
    """A page's version: the saved config's parts, then the samples' mark it drew and when."""
    return f"{core}.m{mark}@{int(clock)}"


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _page_state(dataset_name: str, config: dict, watched: bool) -> tuple[list[dict], dict, dict, dict, str]:
    """(the saved groups, colours, the parts a page is kept on, their digests, the version)."""
    groups = _groups(config)
    parts: dict[str, object] = {"g": [dataset_name, groups]}
    scheme = config.get("color_scheme") if not watched else None
    active = config.get("active_fields") if not watched else None
    colours: dict = {}
    if scheme:
        colours = {"colorscales": [dict(c) for c in scheme.get("colorscales") or []]}
        if scheme.get("color_by"):
            colours["color_by"] = scheme["color_by"]
        parts["s"] = colours
    if active and not active.get("exclude"):
        parts["a"] = list(active.get("paths") or [])
    now = {key: _digest(value) for key, value in parts.items()}
    return groups, colours, parts, now, ".".join(f"{key}{value}" for key, value in now.items())


def _page_lacks_fields(dataset_name: str, config: dict, known: list[str] | None) -> bool:
    """Does a page whose schema holds the top-level fields `known` lack a field of the dataset that
    the saved groups or switched-on fields name? True when the page did not say (None)."""
    named = {p.split(".")[0] for g in _groups(config) for p in g["paths"]}
    named |= {str(p).split(".")[0] for p in (config.get("active_fields") or {}).get("paths") or []}
    named = {n for n in named if n and not n.startswith("_") and n != "frames"}
    if not named:
        return False
    if known is None:
        return True
    if not named - set(known):
        return False
    doc = datasets_collection().find_one({"name": dataset_name}, {"sample_fields.name": 1}) or {}
    fields = {f.get("name") for f in doc.get("sample_fields") or []}
    return bool((named & fields) - set(known))


def _comparable(scheme: fo.ColorScheme) -> dict:
    out = scheme.to_dict()
    for key in ("_id", "id"):
        out.pop(key, None)
    return out


def scale_colours(scales: Any) -> list[dict]:
    """For colour scales a page holds without their colours ([{"path", "name"} or {"path", "list":
    [{"value", "color"}]}], as the page's own check reports them): [{"path", "name", "list", "rgb"}]
    to paint them with. Malformed entries and unknown scale names are left out (the App keeps its
    default for them, as it would anyway).

    Why: a page takes a colour scheme without the scales' rgb whenever it comes from a session's
    state (a Python session's state update or reconnect, another tab's change), and the App then
    draws every such field in its default scale (viridis), not the field's own (jet)."""
    out: list[dict] = []
    for scale in scales if isinstance(scales, list) else []:
        if not isinstance(scale, dict) or not isinstance(scale.get("path"), str):
            continue
        name = scale.get("name") if isinstance(scale.get("name"), str) else None
        items = scale.get("list") if isinstance(scale.get("list"), list) else None
        try:
            filled = _with_rgb({"path": scale["path"], "name": name, "list": items})
        except (KeyError, TypeError, ValueError):  # an unknown name or a malformed list
            continue
        if "rgb" in filled:
            out.append(filled)
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
