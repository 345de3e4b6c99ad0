"""Run the reliability suites and write RELIABILITY.md with the figures of this run.

    python bench/reliability.py                 # the default suites (about a minute on 2 cores)
    python bench/reliability.py --slow          # also the 1 GiB store

Each test appends what it did (processes, tokens, faults injected, what was lost) to a
JSONL file through ``tests/reliability.py``; this script runs pytest with that file set,
then renders the table. The run fails (and RELIABILITY.md is not rewritten) if any test
fails.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["tests/test_distributed.py", "tests/test_faults.py", "tests/test_big_store.py",
          "tests/test_bad_input.py", "tests/test_security.py"]

# Guarantees without figures of their own (checked by assertions alone), with their tests.
STATIC = [
    ("Two processes equal one also when the batch does not split evenly (95 rows: 48 + 47)",
     "test_distributed.py::test_a_split_that_is_not_even_still_equals_one_process"),
    ("Live training puts each hook's SAEs on its own device (same weights as without placement)",
     "test_distributed.py::test_live_training_places_each_hook_on_its_device"),
    ("`interp train` works under torchrun (rank 0 saves)", "test_distributed.py::test_interp_train_under_torchrun"),
    ("A script under `accelerate launch --multi_gpu --num_processes 2` trains data-parallel, equal to one process",
     "test_distributed.py::test_accelerate_launch_trains_data_parallel"),
    ("A checkpoint written by two processes resumes in one, ending equal to a one-process run",
     "test_distributed.py::test_a_two_process_checkpoint_resumes_in_one_process"),
    ("A checkpoint write failing on rank 0 stops every rank with an error (no rank left waiting)",
     "test_distributed.py::test_a_failing_checkpoint_write_stops_every_rank_with_an_error"),
    ("Several hooks of one store trained at once, one placed on its own device, each equal to training it alone",
     "test_distributed.py::test_store_hooks_trained_together_equal_each_trained_alone"),
    ("A full disk during a harvest is a StoreError naming the shard; running it again completes the same store",
     "test_faults.py::test_full_disk_during_a_harvest_is_a_clear_error_and_resumes"),
    ("A directory turned read-only mid-run: the next checkpoint (or SAE save) is a WriteError, the previous "
     "file intact", "test_faults.py::test_read_only_directory_keeps_the_checkpoint"),
    ("EROFS, EACCES and ENOSPC from the OS each give WriteError, previous files intact",
     "test_faults.py::test_unwritable_directory_is_a_clear_error"),
    ("Every generated config / SAE shape / training run succeeds or raises the toolkit's own error",
     "test_bad_input.py::test_any_config_is_accepted_or_refused_with_a_config_error, "
     "test_any_sae_and_training_run_succeeds_or_says_what_is_wrong"),
    ("Every generated `interp train` command line ends in success or one `error:` line, never a traceback",
     "test_bad_input.py::test_any_train_command_line_ends_in_a_clear_message"),
    ("No module unpickles; torch.load only with weights_only=True", "test_security.py::test_no_loader_unpickles"),
    ("cfg.json, manifests and checkpoint state: wrong types are errors naming the key, unknown keys warnings",
     "test_security.py::test_cfg_json_*, test_manifest_*, test_checkpoint_state_is_validated"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slow", action="store_true", help="include tests marked slow")
    p.add_argument("--out", default=str(ROOT / "RELIABILITY.md"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "records.jsonl"
        env = {**os.environ, "RELIABILITY_RECORD": str(rec), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES]
        if args.slow:
            cmd += ["-m", "not gpu"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print(proc.stdout[-3000:])
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        records = [json.loads(line) for line in rec.read_text().splitlines()] if rec.exists() else []
        summary = proc.stdout.strip().splitlines()[-1]
    Path(args.out).write_text(render(records, summary), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _figures(r: dict) -> str:
    skip = {"guarantee", "test"}
    return ", ".join(f"{k} {v}" for k, v in r.items() if k not in skip)


def render(records: list[dict], summary: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability",
        "",
        "What the toolkit guarantees under faults, bad input and untrusted files, the test that",
        "checks each guarantee, and what the last run of those tests did. Regenerate with",
        "`python bench/reliability.py` (it runs the suites and rewrites this file; add `--slow`",
        "for the 1 GiB store).",
        "",
        f"Last run: {now}, {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"pytest: `{summary}`.",
        "",
        "## Guarantees with figures",
        "",
        "| guarantee | test | processes | tokens | faults injected | lost | other figures |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        r = dict(r)
        guarantee, test = r.pop("guarantee"), r.pop("test")
        procs, tokens, faults = r.pop("processes", ""), r.pop("tokens", ""), r.pop("faults", "")
        lost = [f"{k.replace('_', ' ')} {r.pop(k)}" for k in list(r)
                if k in ("lost", "duplicated", "read_as_garbage", "code_run", "escaped", "memory_errors",
                         "trained_on_bad_rows")]
        lines.append(f"| {guarantee} | `{test}` | {procs} | {tokens} | {faults} | {', '.join(lost) or '—'} | "
                     f"{_figures(r) or '—'} |")
    lines += ["", "## Guarantees checked by assertion", "", "| guarantee | test |", "|---|---|"]
    lines += [f"| {g} | `{t}` |" for g, t in STATIC]
    lines += [
        "",
        "## Limits",
        "",
        "- `cfg.json` itself carries no checksum (users edit its metadata); it is validated, and",
        "  its sizes must match the checksummed weight file.",
        "- SAE files written by other libraries (SAELens, sparsify) have no checksum; they are",
        "  read as safetensors (never unpickled), and a damaged header still fails.",
        "- A read-only directory is made with mode 555, or for root (who writes through modes)",
        "  with `chattr +i`; a full disk is a real file-size limit (RLIMIT_FSIZE) on the writer.",
        "- Data-parallel ranks each read the whole global batch and train on their slice: I/O",
        "  is replicated, compute and optimiser work are split.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
