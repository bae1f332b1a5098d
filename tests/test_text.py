"""Data strings reach markdown and our own HTML only as text (issue 22 item 5): the markdown
source the app hands Streamlit holds no unescaped image, link, LaTeX or HTML made from data."""
from __future__ import annotations

import re

import numpy as np

from camcore.results import ClassScore
from ui import chips
from ui.save_panel import pushed_message

BAIT = "![f](http://127.0.0.2:9/x.png) <img src=http://127.0.0.2:9/y> [l](http://127.0.0.2:9/l) $x$ :red[r]"
# A markdown construct that would still form: "![" or "[" + "](" unescaped, a raw tag, a URL scheme.
_FORMS = re.compile(r"(?<!\\)!(?<!\\)\[|(?<!\\)\]\(|(?<!\\)<img|https?://|(?<!\\)\$")


def test_push_success_message_escapes_the_file_name():
    msg = pushed_message(["cam_gradcam_layer4"], [], BAIT + ".png")
    assert not _FORMS.search(msg), msg
    assert msg.replace("\\", "").replace("\u2060", "").count(BAIT) == 1  # still readable, literally


def test_replaced_message_escapes_the_file_name_too():
    msg = pushed_message(["a"], ["a"], BAIT)
    assert not _FORMS.search(msg), msg


def test_class_chips_hold_no_markdown_or_html_made_from_the_class_name():
    html = chips.class_chips([ClassScore(index=0, name=BAIT, score=0.5)], np.zeros((1, 3), np.uint8))
    inner = re.fullmatch(r"<span style='[^']*'>(.*)</span>", html).group(1)
    # Inside the chip: letters, digits, spaces and entities only; markdown still parses inside HTML.
    assert re.fullmatch(r"(?:[\w %]|&#\d+;)*", inner), inner
    assert "http" in inner and "://" not in inner
