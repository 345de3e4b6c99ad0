"""Shims over differences between the transformers releases the toolkit supports."""
from __future__ import annotations

import inspect

from torch import nn


def hf_cache_kwarg(model: nn.Module) -> str:
    """The keyword an HF model's forward takes its KV cache under.

    Recent transformers releases renamed ``past_key_values`` to ``cache`` (the old name still
    works but warns on every call); older 5.x releases know only ``past_key_values``. Passing
    ``cache`` to those would land in ``**kwargs`` and be ignored, so the signature decides.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
