"""Errors about the user's input, each naming the problem and the fix.

They all derive from :class:`SAEError`, itself a ``ValueError``, so callers can catch the
package's complaints apart from bugs deep inside torch.
"""
from __future__ import annotations

import re


def readme_hint(message: str, section: str) -> str:
    """``message`` followed by the README section that explains what to do.

    A message that already ends with a section (an error re-raised as another kind, as the
    command line does) keeps that one: the first names the section closest to the problem."""
    if not section or not message or _HINT.search(message):
        return message
    return f"{message} (see README.md, section \"{section}\")"


_HINT = re.compile(r'\(see README\.md, section "[^"]*"\)$')


class SAEError(ValueError):
    """Base class for bad input to the ``saes`` package.

    Each class names the README section that covers it (``readme``); the message ends with it.
    """

    readme = "Sparse autoencoders (`saes`)"

    def __str__(self) -> str:
        return readme_hint(super().__str__(), self.readme)


class ConfigError(SAEError):
    """Settings that cannot work together (k >= d_sae, group sizes, ...)."""


class DataError(SAEError):
    """Training or evaluation data that cannot be used as given."""


class ShapeMismatchError(DataError):
    """Activations whose width is not the SAE's ``d_in``."""


class NonFiniteError(DataError):
    """NaN or inf activations."""


class EmptyDataError(DataError):
    """A data source with no rows."""


class CheckpointError(SAEError):
    """A checkpoint that is missing, corrupt, or written by another configuration."""

    readme = "Nothing lost"


class FormatError(SAEError):
    """An SAE directory this package cannot read."""

    readme = "File formats"


class WriteError(OSError, SAEError):
    """A file that could not be written (disk full, read-only directory, quota).

    Writes go to a temporary file renamed into place, so the previous version of the file
    (a checkpoint, an SAE) is left exactly as it was.
    """

    readme = "Nothing lost"


class UnknownKeyWarning(UserWarning):
    """A key in a ``cfg.json`` or manifest that this toolkit does not know (ignored)."""


class DegenerateDataWarning(UserWarning):
    """Training data with little or nothing to learn from (identical or all-zero rows, an
    offset that dwarfs the spread), or on a scale float32 training cannot use as it is."""
