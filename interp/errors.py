"""Errors with messages that name the problem and the fix.

Every error the toolkit raises on bad input derives from :class:`InterpError`, so callers
can catch the toolkit's complaints apart from bugs deep inside torch.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from saes.errors import readme_hint


class InterpError(Exception):
    """Base class for errors about the user's input or files.

    Each class names the README section that covers it (``readme``); the message ends with it.
    """

    readme = "Errors"

    def __str__(self) -> str:
        # str(args[0]), not Exception's own: KeyError subclasses would repr() the message.
        return readme_hint(str(self.args[0]) if self.args else "", self.readme)


class HookNameError(InterpError, KeyError):
    """An unknown hook name."""

    readme = "Hooked models"


class LayerRangeError(InterpError, IndexError):
    """A layer index outside the model."""

    readme = "Hooked models"


class ModelLoadError(InterpError):
    """A model that could not be found or loaded."""

    readme = "Hooked models"


class StoreError(InterpError):
    """An activation store that is missing, corrupted or does not match."""

    readme = "Activation store"


class ShapeError(InterpError, ValueError):
    """Tensors whose shapes do not fit together."""


class InterpWarning(UserWarning):
    """Advice about the user's input that does not stop the run (the command line shows it
    as one ``warning:`` line)."""


class UnknownTokensWarning(InterpWarning):
    """Text whose tokens are mostly the tokenizer's unknown token (data in another language
    than the model's vocabulary); its activations say little about the text."""


class OriginWarning(InterpWarning):
    """An SAE used with another model or hook than the one its metadata records."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to ``name``, best first (for 'did you mean' hints)."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not matches:
        # Fall back on a shared suffix, e.g. "hook_resid_post" typed without a layer.
        tail = name.rsplit(".", 1)[-1]
        matches = [c for c in candidates if c.endswith(tail)][:n]
    return matches
