"""What a training run reports to its user in one line (exit code 2) instead of a traceback."""

from __future__ import annotations


class TrainingError(ValueError):
    """The run was given something it cannot use: data, a resume file, an output folder."""


class TrainingStateError(TrainingError):
    """A file that is not a readable training state written by :class:`training.engine.Trainer`."""
