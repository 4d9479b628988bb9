"""Exception types, so callers can tell bad weights from bad images from missing downloads."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weights file exists but cannot be used: corrupt, truncated, tampered or of the wrong layout."""


class WeightsNotFoundError(FileNotFoundError):
    """No source of weights could be reached; the message lists what was tried and how to fix it."""


class ImageLoadError(ValueError):
    """An image file or PIL image cannot be turned into a valid input tensor."""
