"""Floating-point dtype names: the one table and the one parser.

Files and command lines name dtypes as strings (``"bfloat16"``; ``"torch.bfloat16"`` as
``str(torch.bfloat16)`` writes it is accepted too); code passes ``torch.dtype`` objects.
Every place that turns one into the other (SAE files, model loading, the activation store)
goes through here, so they accept the same spellings.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from saes.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def name_in(dtype: str | torch.dtype, table: Mapping[str, torch.dtype] = DTYPES) -> str | None:
    """The name ``dtype`` has in ``table``, or None when it is not one of them."""
    if isinstance(dtype, torch.dtype):
        return next((name for name, dt in table.items() if dt == dtype), None)
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        return name if name in table else None
    return None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling files carry)."""
    name = name_in(dtype)
    if name is None:
        raise ConfigError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
    return name


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; a ``torch.dtype`` is returned as it is."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = name_in(dtype)
    if name is None:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]
