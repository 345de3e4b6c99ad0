"""Whether this machine has a device: the one check behind every ``device=`` / ``--device``.

torch parses names it cannot run on ("cuda" on a CPU-only build, "meta", "hpu"), and then
fails deep inside ``.to()`` with a traceback. Checking the name first gives one line that
says what the machine has.
"""
from __future__ import annotations

import warnings

import torch


def device_problem(name: str, label: str, setting: str = "device", when_left_out: str | None = None) -> str | None:
    """Why ``name`` cannot be used here, or None if it can.

    ``label`` starts the message (``device='cuda'`` in the library, ``--device cuda`` on the
    command line); ``setting`` is what the advice names: ``device`` (a keyword, advised as
    ``device='cpu'``) or a flag such as ``--device`` (advised as ``--device cpu``);
    ``when_left_out`` says what leaving it out picks, where the caller has a default.
    """
    cpu = f"{setting} cpu" if setting.startswith("-") else f"{setting}='cpu'"
    try:
        with warnings.catch_warnings():  # torch warns of some legacy names it still parses
            warnings.simplefilter("ignore")
            device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return f"{label} is not a device name; use cpu, cuda or cuda:N"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            left_out = f", or leave {setting} out ({when_left_out})" if when_left_out else ""
            return f"{label}: this machine has no CUDA device (torch {torch.__version__} is {build}); use {cpu}{left_out}"
        if device.index is not None and device.index >= count:
            return f"{label}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; pick one of those"
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            return f"{label}: MPS is not available on this machine; use {cpu}"
    elif device.type == "xpu":
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            return f"{label}: this machine has no XPU device; use {cpu}"
    elif device.type != "cpu":
        # meta, lazy, hpu, ...: torch parses them, but nothing here can run there.
        return f"{label}: this toolkit runs on cpu, cuda, mps or xpu; use one of those"
    return None
