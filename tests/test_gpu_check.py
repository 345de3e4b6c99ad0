"""The GPU check (bench/gpu_check.sh) cannot go stale between GPU runs.

Every step runs here on the CPU at tiny sizes, through the same functions the script's
processes call (the peers skipped, as on a machine without their wheels), and the report
is built from what they wrote. Without a GPU the script itself prints one line and exits 0.
A timed-out step and a failed one still leave a report that says so.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check

SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _script(env_extra: dict, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(env_extra, GPU_CHECK_PYTHON=sys.executable)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def _no_nvidia_smi_path() -> str:
    """PATH without any nvidia-smi: the folders of bash's own tools, nothing else."""
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "nvidia-smi").exists()]
    return os.pathsep.join(keep)


def test_without_a_gpu_the_script_says_so_in_one_line_and_exits_0(tmp_path):
    out = tmp_path / "out"
    for args, env in (((), {}), ((str(out),), {}), ((), {"OUT": str(out)})):
        proc = _script(env, *args, path=_no_nvidia_smi_path())
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("gpu_check: no NVIDIA GPU"), proc.stdout
        assert proc.stderr == ""
    assert not out.exists()  # nothing was measured, so nothing was written


def test_a_driver_without_a_cuda_torch_is_one_line_too(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    proc = _script({}, str(tmp_path / "out"), path=f"{fake}{os.pathsep}{_no_nvidia_smi_path()}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and "sees no CUDA device" in proc.stdout, proc.stdout
    assert not (tmp_path / "out").exists()


def test_every_step_runs_at_tiny_sizes_and_the_report_says_what_it_measured(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    peers = gpu_check.check_peers(None, None, gpu_check.NO_WHEELS)
    (work / "info.json").write_text(json.dumps({"status": "ok", "result": {
        "date": "today", "device": "cpu", "tiny": True, "peers": gpu_check.asdict(peers)}}))
    ctx = gpu_check.load_context(work, tiny=True)
    assert not ctx.peers.available and ctx.peers.skipped == gpu_check.NO_WHEELS
    recs = {name: gpu_check.run_step(name, ctx) for name in gpu_check.STEPS}
    for name, rec in recs.items():
        assert rec["status"] == "ok", (name, rec.get("error"))
        assert json.loads((work / f"{name}.json").read_text())["status"] == "ok"

    kernels = recs["kernels"]["result"]
    assert "tests/test_kernels_triton.py" in kernels["files"]
    assert kernels["tests"] >= 40 and kernels["failed"] == 0 and kernels["skipped"] == kernels["tests"]  # no CUDA

    train = recs["train"]["result"]
    for runner in gpu_check.TRAIN_RUNNERS:
        if runner in gpu_check.PEERS:
            assert train["runners"][runner] == {"skipped": gpu_check.NO_WHEELS}
        else:
            assert train["runners"][runner]["tokens_per_s"] > 0, runner
    assert train["ratios"]["of_gemm_bf16"] > 0 and "mp_of_gemm_bf16" in train["ratios"]

    mp = recs["mp"]["result"]
    assert all(mp["runners"][r]["tokens_per_s"] > 0 for r in gpu_check.MP_RUNNERS if r not in gpu_check.PEERS)
    assert mp["runners"]["saelens"] == {"skipped": gpu_check.NO_WHEELS}

    harvest = recs["harvest"]["result"]
    s = gpu_check.TINY
    windows = s.harvest_tokens // s.harvest_context
    assert harvest["rows_stored_per_run"] == windows * (s.harvest_context - 1)  # BOS positions are not stored
    assert harvest["direct"]["harvest_over_bare_wall"] > 0 and harvest["store"]["write_mib_per_s"] > 0
    assert harvest["store"]["write_floor_mib_per_s"] > 0

    steer = recs["steer"]["result"]
    assert steer["plain_tokens_per_s"] > 0 and steer["steered_tokens_per_s"] > 0

    dp = recs["dp"]["result"]
    assert dp["exit_code"] == 0 and dp["backend"] == "gloo" and dp["world_size"] == 1
    assert dp["same_weights_within_1e-5"], dp

    report = gpu_check.write_report(work, out)
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["steps"].keys() == set(gpu_check.STEPS)
    assert all(saved["steps"][n]["status"] == "ok" for n in gpu_check.STEPS)
    md = (out / "gpu_check.md").read_text()
    for name in gpu_check.STEPS:
        assert f"| {name} | ok |" in md
    assert "| sparsify | skipped: no peer wheels" in md
    by_what = {t["what"]: t for t in report["targets"]}
    assert by_what["GPU tests: none failed"]["met"] is False  # nothing ran on a GPU here: not a pass
    assert by_what["MP encode >= 5x SAELens's (dictionary Gram cached)"]["met"] is None  # SAELens skipped


def test_the_report_says_which_step_timed_out_or_failed(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    partial = {"d": 8, "n": 16, "k": 2, "batch": 4, "runners": {"saes": {"tokens_per_s": 10.0, "step_ms": 400.0}},
               "ratios": {"of_gemm_bf16": 0.5}}
    (work / "train.json").write_text(json.dumps({"status": "partial", "result": partial}))
    (work / "train.status").write_text("124 120 120\n")
    (work / "train.log").write_text("runner saes done\nstill waiting for sparsify\n")
    (work / "mp.json").write_text(json.dumps({"status": "failed", "error": ["RuntimeError: out of memory"]}))
    (work / "mp.status").write_text("1 3 60\n")
    (work / "harvest.status").write_text("137 50 50\n")  # killed, wrote nothing
    report = gpu_check.write_report(work, out)
    steps = report["steps"]
    assert steps["train"]["status"] == "timeout (partial figures)" and steps["train"]["cap_seconds"] == 120
    assert steps["train"]["log_tail"][-1] == "still waiting for sparsify"
    assert steps["mp"]["status"] == "failed"
    assert steps["harvest"]["status"] == "timeout"
    assert steps["steer"]["status"] == "not run"
    topk = {t["what"]: t for t in report["targets"]}["TopK training step >= 0.6 of the bf16 encoder-GEMM rate"]
    assert topk["measured"] == 0.5 and topk["met"] is False
    md = (out / "gpu_check.md").read_text()
    assert "| train | timeout (partial figures) | 120 (120) |" in md
    assert "mp: RuntimeError: out of memory" in md


@pytest.mark.slow
def test_the_script_end_to_end_on_the_cpu(tmp_path):
    """``bash bench/gpu_check.sh OUT --tiny``: every step in its own process under its cap,
    the report and the log in OUT; with the peers' environment when this checkout has one."""
    peers = ROOT / ".venv-peers" / "bin" / "python"
    env = {"GPU_CHECK_PEERS_PYTHON": str(peers)} if peers.exists() else {}
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--tiny"], env={**os.environ, **env,
                          "GPU_CHECK_PYTHON": sys.executable}, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    report = json.loads((out / "gpu_check.json").read_text())
    for name, rec in report["steps"].items():
        assert rec["status"] == "ok" and rec["exit_code"] == 0 and rec["cap_seconds"] > 0, (name, rec)
    if peers.exists():
        runners = report["steps"]["train"]["result"]["runners"]
        assert runners["sparsify"]["tokens_per_s"] > 0 and runners["saelens"]["tokens_per_s"] > 0
        codes = report["steps"]["mp"]["result"]["runners"]["saes"]["codes_vs_saelens"]
        assert codes["tokens_same_atoms"] == 1.0
    assert "== dp: exit 0" in (out / "gpu_check.log").read_text()


def test_a_stopped_test_run_is_counted_from_its_verbose_lines():
    text = ("tests/test_kernels_triton.py::test_a[d768-n16384-k32-fp32] PASSED [ 1%]\n"
            "tests/test_kernels_triton.py::test_a[d768-n16384-k32-bf16] FAILED [ 2%]\n"
            "tests/test_saes_training.py::test_b SKIPPED (needs a CUDA device) [ 3%]\n"
            "some other line PASSED\n")
    counts = gpu_check.parse_verbose(text)
    assert (counts["tests"], counts["passed"], counts["failed"], counts["skipped"]) == (3, 1, 1, 1)
    assert counts["failures"][0]["test"].endswith("bf16]")
