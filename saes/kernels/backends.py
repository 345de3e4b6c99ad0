"""Which backend runs the kernels: torch (any device) or Triton (CUDA, or its CPU interpreter).

Kept apart from the package's dispatch functions so that the backends themselves
(:mod:`saes.kernels.triton_ops`) can ask whether the interpreter is on without importing
the package that imports them.
"""
from __future__ import annotations

import functools
import os

import torch

from saes.errors import ConfigError

BACKENDS = ("torch", "triton")
ENV = "SAES_KERNELS"


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """Whether ``import triton`` works here (cached)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreter_on() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend(t: torch.Tensor) -> str:
    """The backend used for tensors like ``t``: "triton" or "torch".

    ``SAES_KERNELS`` (read on every call, so tests and benchmarks can switch it) forces
    one; unset or "auto" picks Triton for CUDA tensors when it is importable.
    """
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in (*BACKENDS, "auto"):
        raise ConfigError(f"{ENV}={choice!r} is not a kernel backend; use one of {BACKENDS} or leave it unset")
    if choice == "torch":
        return "torch"
    if choice == "triton":
        if not triton_importable():
            raise ConfigError(f"{ENV}=triton but triton is not importable; pip install triton, or set {ENV}=torch")
        if not t.is_cuda and not interpreter_on():
            raise ConfigError(
                f"{ENV}=triton needs CUDA tensors (these are on {t.device}); set TRITON_INTERPRET=1 to run the "
                f"Triton kernels in the CPU interpreter, or {ENV}=torch"
            )
        return "triton"
    return "triton" if t.is_cuda and triton_importable() else "torch"
