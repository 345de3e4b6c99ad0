"""Shared pieces of the reliability suites: child processes, figures for RELIABILITY.md.

Each reliability test may ``record`` the figures of its run (processes started, tokens,
faults injected, what was lost). With ``RELIABILITY_RECORD=path.jsonl`` set they are
appended there, and ``python bench/reliability.py`` turns the file into the table of
RELIABILITY.md; without it, recording does nothing.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def record(guarantee: str, test: str, **figures: Any) -> None:
    path = os.environ.get("RELIABILITY_RECORD")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"guarantee": guarantee, "test": test, **figures}) + "\n")


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env


def popen(script: Path, *args: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=child_env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(script: Path, *args: str, timeout: float = 180, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=child_env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)
