"""Errors that carry a message meant for the user (UI, CLI), never a traceback."""
from __future__ import annotations


class CamError(Exception):
    """Base class: str(error) is one clear line saying what is wrong and what to do."""


class ImageError(CamError):
    """The image is missing, unreadable or unusable."""


class ModelError(CamError):
    """Unknown model, layer, or weights that cannot be had."""


class WeightsUnavailable(ModelError):
    """No real weights could be found; untrained weights must be chosen explicitly."""


class MethodError(CamError):
    """Unknown method, or a method that does not apply to this model."""


class TargetError(CamError):
    """Unknown class name or index for the model."""


class StoreError(CamError):
    """FiftyOne I/O failed: unknown dataset or sample, field collision, database down."""


class Cancelled(CamError):
    """The user cancelled a long computation."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): what a user
    sees of a failure that is not ours, in the UI, the CLI or a report."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
