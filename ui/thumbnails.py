"""The strip of samples around the current one; a click opens that sample."""
from __future__ import annotations

import os

import streamlit as st

from ui import cache, data, sidebar, text
from ui.state import Explore

STRIP = 8  # thumbnails shown around the current sample


def thumbnail_strip(sel: sidebar.Selection) -> None:
    """A strip of the samples around the current one (one page read); a click opens that sample."""
    cols = st.columns(STRIP)
    folder = cache.common_folder(sel.dataset)
    for col, (pos, sid, path) in zip(cols, sel.neighbours(STRIP), strict=False):
        try:
            thumb = cache.thumbnail(path, os.path.getmtime(path))
        except OSError:
            thumb = None
        if thumb is not None:
            col.image(thumb, width="stretch")
        else:
            col.caption("(unreadable)")
        current = sid == sel.sample_id
        name = data.relative_label(path, folder)
        short = name if len(name) <= 18 else "…" + name[-17:]  # the end names the file
        # The current one is highlighted (primary), not disabled: a greyed button reads "unavailable".
        # Button labels render markdown: the name goes through text.escape.
        col.button(("● " if current else "") + text.escape(short), key=Explore.thumb(sid),
                   on_click=sidebar.choose_sample, args=(sid, pos), type="primary" if current else "secondary",
                   width="stretch", help=text.escape(name) + (" (shown now)" if current else ""))
