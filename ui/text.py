"""Strings from data or users (dataset and file names, tags, labels, notes, errors) as text.

Streamlit renders markdown (links, images, LaTeX, colour directives, HTML entities) in st.markdown,
st.caption, st.info and friends, in widget labels and button labels. Where a data string must sit
inside such an element, `escape` makes every markdown character literal; elsewhere use st.text,
st.code or a dataframe cell, which never render markup.
"""
from __future__ import annotations

import re

# Every ASCII punctuation character can be backslash-escaped in CommonMark; Streamlit adds
# :colour[...] directives, :material/...: icons and $...$ LaTeX, all made of these characters.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#!|:$~&^=])")
_LIST_START = re.compile(r"^(\s*)([-+]|\d+)(\.?\s)")  # "- x", "1. x" would open a list
# GFM turns URLs, "www." hosts and e-mail addresses in the rendered text into links, escapes or not:
# a word joiner (U+2060, invisible) inside each of those breaks the pattern, not the reading.
_AUTOLINK = re.compile(r"(?i)(https?|ftp)(:)(?=//)|(www)(?=\.)|(?<=\w)(@)")
_JOINER = "\u2060"


def escape(value: object) -> str:
    """The string shown literally inside markdown: no link, image, LaTeX, directive or HTML."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    text = _AUTOLINK.sub(lambda m: _JOINER.join(g for g in m.groups() if g) + _JOINER, text)
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return _LIST_START.sub(_literal_list_marker, text)


def _literal_list_marker(m: re.Match) -> str:
    marker = m.group(2)
    if marker.isdigit():  # "1. x": the dot is what makes it a list item
        return m.group(1) + marker + m.group(3).replace(".", "\\.", 1)
    return m.group(1) + "\\" + marker + m.group(3)


def html_text(value: object) -> str:
    """The string inside HTML we build ourselves (the class chips), which Streamlit still reads as
    markdown: every character but letters, digits and spaces becomes a numeric entity, so neither
    HTML nor markdown (images, links, LaTeX, directives, autolinks) can form from it."""
    return "".join(c if c.isalnum() or c == " " else f"&#{ord(c)};" for c in str(value))
