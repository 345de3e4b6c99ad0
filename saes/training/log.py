"""Training metrics: JSON lines on disk, a tqdm bar on screen."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class JsonlLog:
    """Append-only JSONL metrics file.

    On resume, records written after the checkpoint's step (by the interrupted run) are
    dropped first, so the file reads as if the run had never stopped.
    """

    def __init__(self, path: str | os.PathLike | None, resume_step: int | None = None):
        self.path = Path(path) if path is not None else None
        self._f = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self._f = open(self.path, "w", encoding="utf-8")
            return
        kept: list[str] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
        # Rewritten atomically: a second interruption right here must not lose the records kept.
        from saes.formats.durable import atomic_write_text

        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._f is not None:
            try:
                self._f.write(json.dumps(record) + "\n")
                self._f.flush()
            except OSError as err:  # full disk: say so; a cut line is dropped on resume
                from saes.errors import WriteError

                raise WriteError(
                    err.errno, f"could not append to the metrics log {self.path}: {err.strerror or err}; "
                    "free disk space and resume the run (the last checkpoint is intact)"
                ) from err

    def close(self) -> None:
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError:
                pass  # the write that failed has already said why


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, disable=not enabled, dynamic_ncols=True, desc="train")


def postfix(records: list[dict[str, Any]]) -> dict[str, str]:
    """Bar text: the first SAE's numbers, plus the range over a sweep."""
    r = records[0]
    out = {
        "fvu": f"{r['fvu']:.4f}",
        "l0": f"{r['l0']:.1f}",
        "dead": f"{r['dead_fraction']:.3f}",
        "auxk": f"{r['auxk']:.3g}",
        "lr": f"{r['lr']:.2e}",
    }
    if len(records) > 1:
        fvus = [x["fvu"] for x in records]
        out["fvu_range"] = f"{min(fvus):.3f}-{max(fvus):.3f}"
    return out
