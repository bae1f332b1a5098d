"""A class asked for by a user, found in a model's class names (targets and detection both ask)."""
from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path

import numpy as np

from camcore.errors import TargetError

# The class names of the built-in models' weights, as torchvision's weights metadata lists them
# ("imagenet", "voc", "coco"): kept here as data so that a picker or a form lists a model's classes
# without importing torch (tests/test_registries.py checks them against torchvision's lists).
CATEGORIES_FILE = Path(__file__).with_name("categories.json")


@functools.cache
def builtin_categories(name: str) -> tuple[str, ...]:
    """One list of CATEGORIES_FILE ("imagenet", "voc" or "coco"), index = the model's output."""
    return tuple(json.loads(CATEGORIES_FILE.read_text(encoding="utf-8"))[name])


def class_index(names: tuple[str, ...], requested: str | int) -> int:
    """A class by index, by name (exact, else case-insensitive when that is unambiguous) or as
    'index:name' (the name must be that index's)."""
    if isinstance(requested, (int, np.integer)):
        if 0 <= int(requested) < len(names):
            return int(requested)
        raise TargetError(f"Class index {requested} is out of range: this model has {len(names)} classes.")
    text = " ".join(str(requested).split())
    head, sep, tail = text.partition(":")
    if head.strip().isdigit():
        index = class_index(names, int(head))
        if sep and tail.strip() and tail.strip().lower() != names[index].lower():
            raise TargetError(f"Class {index} is '{names[index]}', not '{tail.strip()}'.")
        return index
    if text in names:  # ImageNet has both 'Cardigan' (a dog) and 'cardigan' (a sweater)
        return names.index(text)
    lowered = [n.lower() for n in names]
    matches = [i for i, n in enumerate(lowered) if n == text.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        spelled = " or ".join(f"'{names[i]}' ({i})" for i in matches)
        raise TargetError(f"Class '{text}' is ambiguous: {spelled}; give the exact name or the index.")
    close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(names[lowered.index(c)] for c in close)}?" if close else ""
    raise TargetError(f"Unknown class '{text}' for this model ({len(names)} classes).{hint}")
