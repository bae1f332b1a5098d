"""The registries' defaults, importable without torch.

The CLI builds its parser (and answers --help and usage errors) from these alone, so that
neither torch nor FiftyOne is imported before a command that needs them runs. camcore/models.py,
camcore/methods.py and camcore/metrics.py re-export them: import them from there everywhere else.
"""
from __future__ import annotations

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_METHOD = "gradcam"
DEFAULT_BACKGROUND_THRESHOLD = 0.5  # less than half the mass on the object: background-dominated
