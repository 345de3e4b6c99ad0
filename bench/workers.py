"""What the side-by-side benchmarks share: how each measuring child process is started.

Stdlib only: the benchmark scripts import it in this project's environment and in the
peers' one alike.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker_python_and_env(
    side: str, threads: int, omp_wait_policy: str, peers_python: str, peers_path: str | None = None,
) -> tuple[str, dict]:
    """The interpreter and environment of a child measuring ``side`` ("ours" or a peer):
    the same thread settings for every runner; this checkout importable only for ours, so
    a peer never sees it (and we never see a peer's packages). ``peers_path``: a folder of
    peer packages put on the peer's ``PYTHONPATH`` (installed with ``pip --target`` where
    the peers have no environment of their own)."""
    python = sys.executable if side == "ours" else peers_python
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    env.pop("PYTHONPATH", None)
    if side == "ours":
        env["PYTHONPATH"] = str(ROOT)
    elif peers_path:
        env["PYTHONPATH"] = peers_path
    return python, env
