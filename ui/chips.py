"""The class chips: small coloured labels in HTML we build ourselves (every data string escaped)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camcore.results import ClassScore
from ui import text

MIN_SHARE = 0.01  # specks under 1% are noise, not findings


def class_chips(classes: Sequence[ClassScore], colors: np.ndarray) -> str:
    """One chip per class found, in the class's colour of the mask overlay, with its share."""
    return " ".join(_chip(c, colors[c.index]) for c in classes if c.score >= MIN_SHARE)


def _chip(c: ClassScore, color: np.ndarray) -> str:
    rgb = tuple(int(v) for v in color)
    ink = "#000" if sum(rgb) > 380 else "#fff"
    return (f"<span style='background:rgb{rgb};color:{ink};padding:2px 8px;border-radius:8px;"
            f"margin:2px;display:inline-block;font-size:0.85em'>{text.html_text(c.name)} {c.score:.0%}</span>")


def untrained_chip(pretrained: bool) -> str:
    return ("" if pretrained else
            " · <span style='color:#c80000;font-weight:700'>UNTRAINED weights: random output</span>")
