"""Strings from data or users (dataset and file names, tags, labels, notes, errors) as text.

Streamlit renders markdown (links, images, LaTeX, colour directives, HTML entities) in st.markdown,
st.caption, st.info and friends, in widget labels and button labels. Where a data string must sit
inside such an element, `escape` makes every markdown character literal; elsewhere use st.text,
st.code or a dataframe cell, which never render markup.
"""
from __future__ import annotations

import html
import re

# Every ASCII punctuation character can be backslash-escaped in CommonMark; Streamlit adds
# :colour[...] directives, :material/...: icons and $...$ LaTeX, all made of these characters.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#!|:$~&^=@])")  # @: e-mail autolinks
_LIST_START = re.compile(r"^(\s*)([-+]|\d+)(\.?\s)")  # "- x", "1. x" would open a list
_WWW = re.compile(r"(www)\.", re.IGNORECASE)  # "www.host" autolinks


def escape(value: object) -> str:
    """The string shown literally inside markdown: no link, image, LaTeX, directive or HTML."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    text = _WWW.sub(r"\1\\.", text)
    return _LIST_START.sub(_literal_list_marker, text)


def _literal_list_marker(m: re.Match) -> str:
    marker = m.group(2)
    if marker.isdigit():  # "1. x": the dot is what makes it a list item
        return m.group(1) + marker + m.group(3).replace(".", "\\.", 1)
    return m.group(1) + "\\" + marker + m.group(3)


def html_text(value: object) -> str:
    """The string inside HTML we build ourselves (the class chips)."""
    return html.escape(str(value), quote=True)
