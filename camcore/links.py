"""The explorer's URL is its state: one format, written by the app, the Findings page and the
FiftyOne plugin, read back by the app on a fresh session.

    /?dataset=NAME&view=SAVED_VIEW&sample=ID&model=KEY&weights=W&layers=a,b&methods=x,y&target=CLASS
    &box=RULE   (a detection model's box: top, det:<i>, class:<name>, all or id:<detection id>,
                 optionally @<score threshold>; see camcore.detection)
    &tags=a,b&field=LABEL_FIELD&label=CLASS&conf=0.5-1&file=TEXT&sort=FIELD&desc=1
                (the sidebar's Filter and sort: a link reopens the same sample at the same
                 position of the same order)

Explore is the default page, served at ``/``: its links are ``/?...``; the other pages' are
``/compare?...``, ``/batch?...``, ``/findings?...``. Links stored by older versions name Explore
``/explore?...``: the app still opens them (ui/router.py) and :func:`parse_url` reads them.
Every value is optional; unknown ones are reported by the reader, never raised.
"""
from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_BASE_URL = "http://localhost:8501"
BASE_URL_ENV = "CAM_EXPLORER_URL"  # where the explorer is served, for links made outside it
LIST_KEYS = ("layers", "methods", "tags")
SCALAR_KEYS = ("dataset", "view", "sample", "model", "weights", "target", "box", "field", "label", "conf", "file",
               "sort", "desc", "narrow", "run", "reviewed")
PAGES = ("explore", "compare", "batch", "findings", "audit", "review", "runs")
DEFAULT_PAGE = PAGES[0]  # served at the app's root: its links are /?...


@dataclass(frozen=True)
class LinkState:
    """What a URL asks for. Empty strings and tuples mean "not given"."""

    dataset: str = ""
    view: str = ""  # a saved view's name
    sample: str = ""  # a sample id
    model: str = ""
    weights: str = ""
    target: str = ""
    box: str = ""  # a detector's box rule
    layers: tuple[str, ...] = field(default_factory=tuple)
    methods: tuple[str, ...] = field(default_factory=tuple)
    # the sidebar's Filter and sort
    tags: tuple[str, ...] = field(default_factory=tuple)
    field: str = ""  # a label field (from here on `field` names this attribute, not dataclasses.field)
    label: str = ""  # a class in that field
    conf: str = ""  # "lo-hi", the labels' confidence range
    file: str = ""  # "File name contains"
    sort: str = ""  # the field sorted by
    desc: str = ""  # "1": descending
    narrow: str = ""  # the Audit page's narrowing of the view (camcore.store.audit)
    run: str = ""  # the heatmap field audited or reviewed
    reviewed: str = ""  # the review queue's position, 1-based ("37": the 37th of the narrowed view)

    def params(self) -> dict[str, str]:
        """Query parameters, in a stable order, without the empty ones."""
        out: dict[str, str] = {}
        for key in SCALAR_KEYS:
            if getattr(self, key):
                out[key] = str(getattr(self, key))
        for key in LIST_KEYS:
            if getattr(self, key):
                out[key] = ",".join(getattr(self, key))
        return out


def base_url() -> str:
    return os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL).rstrip("/")


def explorer_url(state: LinkState, page: str = "explore", base: str | None = None) -> str:
    """The explorer's URL for that state, e.g. for a finding or the FiftyOne plugin."""
    if page not in PAGES:
        raise ValueError(f"unknown page {page!r}; one of {', '.join(PAGES)}")
    query = urllib.parse.urlencode(state.params(), quote_via=urllib.parse.quote)
    path = "" if page == DEFAULT_PAGE else page
    return f"{(base or base_url()).rstrip('/')}/{path}" + (f"?{query}" if query else "")


def _split(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))


def parse(params: Mapping[str, str | Sequence[str]]) -> LinkState:
    """A LinkState from query parameters (st.query_params, or parse_qs output). Repeated keys:
    the last value wins, as in Streamlit."""
    values: dict[str, str] = {}
    for key in SCALAR_KEYS + LIST_KEYS:
        raw = params.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str):
            raw = list(raw)[-1] if list(raw) else ""
        values[key] = raw.strip()
    lists: dict[str, Any] = {k: _split(values.pop(k)) for k in LIST_KEYS if k in values}
    return LinkState(**{**values, **lists})


def parse_url(url: str) -> tuple[str, LinkState]:
    """(page, state) of an explorer URL: ``/?...`` and an old ``/explore?...`` are both Explore."""
    parts = urllib.parse.urlsplit(url)
    page = parts.path.rstrip("/").rsplit("/", 1)[-1] or DEFAULT_PAGE
    return page, parse(urllib.parse.parse_qs(parts.query))
