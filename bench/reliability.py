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
          "tests/test_bad_input.py", "tests/test_security.py", "tests/test_faults_saves.py",
          "tests/test_security_files.py", "tests/test_faults_runs.py", "tests/test_faults_store.py",
          "tests/test_cli_fuzz.py"]

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
    ("A save interrupted between its files (weights, then cfg.json; SNMF tensors, then snmf.json), or weights "
     "copied from another save, is refused and names the fix; a stale temporary is removed only when no live "
     "writer holds it (flock) and its name follows the writer's own pattern",
     "test_faults_saves.py::test_a_save_interrupted_*, test_weights_copied_*, test_snmf_save_interrupted_*, "
     "test_a_live_writers_temporary_*, test_a_checkpoint_write_removes_temporaries_*"),
    ("NaN or inf weights are refused, naming the tensor and file, by every reader (this toolkit's files, SAELens, "
     "sparsify, Gemma Scope, dictionary_learning, checkpoints, SNMF); an SAE holding NaN is not saved; a "
     "checkpoint's input_scale must be finite and > 0",
     "test_security_files.py::test_non_finite_*, test_an_sae_with_non_finite_weights_is_not_saved, "
     "test_a_checkpoint_with_non_finite_tensors_is_refused, test_checkpoint_input_scale_*"),
    ("Checkpoint state entries and tensors (Adam moments against their parameter's shape and dtype, step counts "
     "whole and >= 0, dead-latent counters) are checked: 22 kinds of damage, each a CheckpointError naming the "
     "key or tensor", "test_security_files.py::test_checkpoint_state_entries_are_type_checked, "
     "test_checkpoint_tensors_are_checked_against_their_parameters, test_a_damaged_checkpoint_stops_resume_*"),
    ("JSON nested 5,000 deep in cfg.json, config.json, snmf.json or a checkpoint's state is a FormatError or "
     "CheckpointError naming the file, not a RecursionError", "test_security_files.py::test_deeply_nested_json_*"),
    ("Weights in another dtype than cfg.json gives are refused (this toolkit's files); integer or boolean weights "
     "are refused in every format; a float mismatch in a SAELens file is cast with a warning, as SAELens casts",
     "test_security_files.py::test_our_weights_in_another_dtype_*, test_foreign_weights_must_be_floating_point_*"),
    ("Deleting `saes.format_version` from cfg.json does not switch the checksum off",
     "test_security_files.py::test_deleting_format_version_does_not_switch_the_checksum_off"),
    ("A tensor of the same shape, or live training on another text, is other data too: the resume is refused; a "
     "checkpoint from before data identities resumes with a warning",
     "test_faults_runs.py::test_a_tensor_of_the_same_shape_is_other_data_too, "
     "test_live_training_resumed_on_another_text_is_refused, "
     "test_a_checkpoint_without_a_data_identity_resumes_with_a_warning"),
    ("Identical rows, all-zero rows and 1e6 + 1e-3 noise (fvu 0, l0 0) each give a DegenerateDataWarning saying "
     "the SAE learns nothing", "test_faults_runs.py::test_rows_with_nothing_to_learn_are_named"),
    ("Ctrl-C in `saes.train` checkpoints the step reached and raises TrainingInterrupted; the resumed run ends "
     "bit-identical to an uninterrupted one", "test_faults_runs.py::test_ctrl_c_in_the_library_checkpoints_and_resumes_exactly"),
    ("Manifests nested 5,000 deep or not UTF-8 are a StoreError naming the file; `.jsonl`/`.txt` data nested "
     "5,000 deep, not UTF-8, with NaN or a non-text `text` field is an InterpError naming the file and line",
     "test_faults_store.py::test_manifest_nested_thousands_deep_or_not_utf8_is_a_store_error, "
     "test_data_not_utf8_or_nested_thousands_deep_names_the_file_and_line"),
    ("A sparse 1 GiB manifest is refused before it is read (was 2.2 GiB of memory)",
     "test_faults_store.py::test_a_sparse_gigabyte_manifest_is_refused_before_it_is_read"),
    ("A manifest lists at most 200,000 shards; 10^6 shards are refused by size before reading (was 1.5 GiB)",
     "test_faults_store.py::test_shard_count_is_bounded"),
    ("A shard listed twice, the same content under two names, or overlapping window ranges are refused (was: "
     "200,000 entries read as 99.2 M rows)", "test_faults_store.py::test_a_shard_listed_twice_is_refused"),
    ("Rows, windows, widths and dtype a manifest claims are checked against each shard's safetensors header at "
     "open: 10^9 claimed rows are refused naming the shard and both counts (was an allocator failure)",
     "test_faults_store.py::test_claimed_rows_and_shapes_are_checked_against_the_shard_headers"),
    ("Store shards are written 0644 like the manifest (were 0600)",
     "test_faults_store.py::test_shards_are_written_world_readable"),
    ("Ctrl-C in a harvest in a Python session: HarvestInterrupted, complete shards only, SIGINT's handler "
     "restored; an ignored SIGINT stays ignored",
     "test_faults_store.py::test_ctrl_c_in_process_is_a_harvest_interrupted_and_the_handler_is_restored"),
    ('Every subcommand, fuzzed from its own parser (valid, edge, NaN/inf, empty, 300-character, missing/directory/socket paths, junk): no traceback, one `error:` line; 770 calls with `-m slow` gave 0 tracebacks (42, from 9 causes, before)',
     'test_cli_fuzz.py::test_any_command_line_ends_in_success_or_one_error_line'),
    ('Known bad command lines (devices the machine lacks, 10**26 sizes and seeds, too-long names, damaged steering files, patch templates, pkck hooks, `world train --steps -1`, a hand-edited cfg.json) end in one line naming the problem',
     'test_bad_input.py::test_known_bad_command_lines_end_in_one_line_naming_the_problem'),
    ('A full disk while `interp patch` writes its page: one error line, the previous page intact, no temporary file',
     'test_bad_input.py::test_a_full_disk_leaves_no_cut_off_patch_page'),
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
        "- `cfg.json` carries no checksum of its own (users edit its metadata). It records the",
        "  sha256 of the weights file it was saved with (`saes.weights_sha256`), it is validated,",
        "  and the sizes it claims must match the weights' shapes before an SAE is built.",
        "- A temporary is known to be abandoned by its `flock`; where there is no flock (Windows,",
        "  some network file systems) only temporaries older than an hour are removed, and a",
        "  second writer of a directory is not refused.",
        "- A tensor's data identity hashes its shape and 4,096 rows spread over it; two tensors",
        "  differing only in other rows are not told apart. A stream of batches and a live run on",
        "  a generator of texts have no identity, and their resumes are not checked.",
        "- The command-line fuzz stops jobs of minutes where they start and cuts SAE training to",
        "  256 tokens: it checks how a command reads its input up to the first real work.",
        "- Ctrl-C is handled from the moment a harvest holds its store's lock until it returns;",
        "  before that (imports, loading the model) a SIGINT acts as in any Python program.",
        "- `interp train` saves the SAE into `--out` just after releasing the training lock; a",
        "  second run let in at that moment finds the finished checkpoint.",
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
