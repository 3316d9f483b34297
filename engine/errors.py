"""Errors that reach a user: each names the problem and what to do about it."""
from __future__ import annotations


class KeystrokeError(Exception):
    """A failure with a message meant for a person, not a traceback."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}" + (f" ({hint})" if hint else ""))


class ModelError(KeystrokeError):
    """A model file is missing, truncated, corrupt or of an unsupported kind."""


class PositionError(KeystrokeError):
    """A line/column outside the document."""
