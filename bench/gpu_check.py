"""The steps of ``bench/gpu_check.sh`` and the report it writes (one JSON file, one markdown table).

Each step runs as its own process under the shell script's ``timeout`` and writes
``WORK/<step>.json``; the report reads them all, whatever happened to each. The steps reuse
the benchmark scripts beside this file:

* ``info``: the machine (GPU, driver, CUDA, torch, Triton, NCCL) and whether the peers
  (SAELens, sparsify) import; later steps read that from ``WORK/info.json``;
* ``kernels``: ``pytest -m gpu`` on every test file holding GPU tests (the Triton kernels
  against the torch path at real sizes, forward and backward, fp32 and bf16), together
  with the rest of ``tests/test_kernels_triton.py`` (its awkward shapes, on the device);
* ``train``: ``bench/sae_step.py``'s runners: ``saes.train`` steps for TopK, BatchTopK,
  Matryoshka and MP, the bf16 encoder GEMM, sparsify and SAELens, one process each;
* ``mp``: ``bench/mp_encode.py``: matching-pursuit encode against SAELens's, codes compared;
* ``harvest``: ``bench/harvest.py`` on a randomly initialised GPT-2-medium-shaped model:
  harvest tokens/s against a bare forward of the same layers, store writes against a plain
  fsync'd write of the same bytes;
* ``steer``: ``bench/steer.py`` on the same model shape: batched generation with and
  without a steering vector;
* ``dp``: one process under ``torchrun --nproc-per-node 1`` (NCCL on a GPU, gloo on a CPU)
  taking data-parallel training steps, against the same steps without the process group.

``--tiny`` runs every step on the CPU at tiny sizes (the dry run the test suite does, so
nothing here goes stale between GPU runs).

    python bench/gpu_check.py info --work W [--tiny] [--peers-python P] [--peers-path D | --peers-skip WHY]
    python bench/gpu_check.py step NAME --work W [--tiny]
    python bench/gpu_check.py report --work W --out OUT
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # the benchmark scripts beside this file

STEPS = ("kernels", "train", "mp", "harvest", "steer", "dp")
# Runners in the order they run: the headline comparison first, so a step stopped at its cap
# has already measured it.
TRAIN_RUNNERS = ("saes", "gemm_bf16", "sparsify", "saelens", "saes_batchtopk", "saes_matryoshka", "saes_mp")
MP_RUNNERS = ("saes", "saelens", "saes_cold", "saes_plain")
PEERS = ("sparsify", "saelens")
NO_WHEELS = ("no peer wheels in bench/gpu_wheels (make them with `bash bench/gpu_wheels.sh` on a machine that "
             "reaches the package registry)")


@dataclass(frozen=True)
class Sizes:
    """Everything a step's size depends on: the GPU sizes, or the tiny ones of the dry run."""

    device: str
    train_shape: str           # d,n,k,batch
    train_steps: int
    train_warmup: int
    mp_shape: str              # d,n,k,rows
    mp_repeats: int
    runner_timeout: float      # seconds for one runner process of train or mp
    gpt2: tuple[int, int, int]  # d_model, layers, heads (the harvest and steering model)
    harvest_layer: int
    harvest_context: int
    harvest_batch: int
    harvest_tokens: int
    harvest_shard_tokens: int
    harvest_repeats: int
    model_dtype: str
    steer_batch: int
    steer_new_tokens: int
    steer_repeats: int
    dp_shape: str              # d,n,k,batch
    dp_steps: int
    dp_timeout: float


GPU = Sizes(
    device="cuda",
    train_shape="2304,65536,64,4096", train_steps=8, train_warmup=2,
    mp_shape="2304,65536,64,4096", mp_repeats=2, runner_timeout=45.0,
    gpt2=(1024, 24, 16), harvest_layer=12, harvest_context=1024, harvest_batch=16, harvest_tokens=131072,
    harvest_shard_tokens=16384, harvest_repeats=2, model_dtype="bfloat16",
    steer_batch=32, steer_new_tokens=64, steer_repeats=3,
    dp_shape="2304,65536,64,4096", dp_steps=5, dp_timeout=40.0,
)
TINY = Sizes(
    device="cpu",
    train_shape="32,256,8,64", train_steps=2, train_warmup=1,
    mp_shape="32,256,8,64", mp_repeats=1, runner_timeout=60.0,
    gpt2=(64, 2, 2), harvest_layer=1, harvest_context=32, harvest_batch=4, harvest_tokens=256,
    harvest_shard_tokens=128, harvest_repeats=1, model_dtype="float32",
    steer_batch=2, steer_new_tokens=3, steer_repeats=1,
    dp_shape="16,64,4,32", dp_steps=2, dp_timeout=120.0,
)


@dataclass
class Peers:
    """Where SAELens and sparsify run: ``python`` with ``path`` on its PYTHONPATH; or why not."""

    python: str | None = None
    path: str | None = None
    skipped: str | None = NO_WHEELS
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.skipped is None and self.python is not None


@dataclass
class Context:
    work: Path
    tiny: bool
    peers: Peers

    @property
    def sizes(self) -> Sizes:
        return TINY if self.tiny else GPU

    def save_partial(self, name: str, result: dict) -> None:
        """What a step has so far, kept if the step is stopped before it finishes."""
        _write_json(self.work / f"{name}.json", {"status": "partial", "result": result})


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_context(work: Path, tiny: bool) -> Context:
    info = _read_json(work / "info.json") or {}
    peers = Peers(**info["result"]["peers"]) if info.get("status") == "ok" else Peers(skipped="the info step did not run")
    return Context(work, tiny, peers)


# ------------------------------------------------------------------ info


def run_group(cmd: list[str], timeout: float | None, **kw: Any) -> tuple[int | None, str, str]:
    """Run ``cmd`` in a process group of its own: ``(exit code, stdout, stderr)``, exit code
    None when it ran out of time, and then the whole group is killed (a launcher's workers
    or a test's children too, none left holding the GPU for the next step)."""
    proc = subprocess.Popen(cmd, start_new_session=True, text=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        return None, out or "", err or ""
    return proc.returncode, out or "", err or ""


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)``; exit code -1 when it could not start or ran out of time."""
    try:
        rc, out, err = run_group(cmd, timeout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        return -1, "", str(e)
    if rc is None:
        return -1, out.strip(), (err.strip() + f"\nstopped after {timeout:.0f} s").strip()
    return rc, out.strip(), err.strip()


def check_peers(python: str | None, path: str | None, skipped: str | None, timeout: float = 60.0) -> Peers:
    """Whether SAELens and sparsify import under ``python`` (``path`` on PYTHONPATH), with their versions."""
    if skipped or not python:
        return Peers(skipped=skipped or NO_WHEELS)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path:
        env["PYTHONPATH"] = path
    code = ("import importlib.metadata as m, json, sae_lens, sparsify; "
            "print('VERSIONS ' + json.dumps({p: m.version(p) for p in ('sae-lens', 'eai-sparsify')}))")
    rc, out, err = _run([python, "-c", code], timeout, env)
    found = [line[9:] for line in out.splitlines() if line.startswith("VERSIONS ")]
    if rc != 0 or not found:
        why = (err or out).splitlines()[-1] if (err or out) else f"exit {rc}"
        return Peers(python, path, skipped=f"the peers do not import: {why}")
    return Peers(python, path, skipped=None, versions=json.loads(found[-1]))


def step_info(ctx: Context, peers_python: str | None, peers_path: str | None, peers_skip: str | None) -> dict:
    import torch

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(), "device": ctx.sizes.device, "tiny": ctx.tiny,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
        except Exception as err:  # noqa: BLE001  (a version string is not worth the step)
            info["nccl"] = f"unknown ({type(err).__name__})"
        rc, out, _ = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 20)
        info["driver"] = out.splitlines()[0] if rc == 0 and out else None
    info["peers"] = asdict(check_peers(peers_python, peers_path, peers_skip))
    return info


# ------------------------------------------------------------------ kernels


def gpu_test_files() -> list[str]:
    """Every test file holding a ``@pytest.mark.gpu`` test (so new ones are run too)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


def parse_junit(path: Path) -> dict:
    """Counts, failures (test id and the first line of the message), the slowest tests and
    the properties tests recorded (``record_property``)."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    failed, skipped, times, props = [], 0, [], {}
    for c in cases:
        name = f"{c.get('classname', '')}::{c.get('name', '')}"
        times.append((float(c.get("time") or 0), name))
        for prop in c.iter("property"):
            props.setdefault(name.split("::")[-1], {})[prop.get("name")] = prop.get("value")
        bad = c.find("failure")
        if bad is None:
            bad = c.find("error")
        if bad is not None:
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            failed.append({"test": name, "message": msg[0][:300] if msg else ""})
        elif c.find("skipped") is not None:
            skipped += 1
    times.sort(reverse=True)
    return {
        "tests": len(cases), "passed": len(cases) - len(failed) - skipped, "failed": len(failed), "skipped": skipped,
        "failures": failed[:20], "slowest": [{"test": n, "s": round(t, 2)} for t, n in times[:5]],
        "properties": props,
    }


def kernel_selection(tiny: bool) -> list[str]:
    """pytest's selection: the GPU tests, and on a GPU every other test of the Triton kernel
    module too (the CPU dry run only collects the GPU tests, which skip there: the
    interpreter runs the rest in the ordinary test run)."""
    if tiny:
        return ["-m", "gpu"]
    return ["-m", "not slow", "-k", "test_kernels_triton or gpu"]


VERBOSE_RESULT = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_verbose(text: str) -> dict:
    """Counts from ``pytest -v`` lines, for a run stopped before it wrote its JUnit report."""
    outcome: dict[str, str] = {}
    for line in text.splitlines():
        m = VERBOSE_RESULT.match(line)
        if m:
            outcome[m.group(1)] = m.group(2)
    failed = [t for t, o in outcome.items() if o in ("FAILED", "ERROR")]
    skipped = sum(o in ("SKIPPED", "XFAIL") for o in outcome.values())
    return {"tests": len(outcome), "passed": len(outcome) - len(failed) - skipped, "failed": len(failed),
            "skipped": skipped, "failures": [{"test": t, "message": ""} for t in failed[:20]]}


def seconds_left(margin: float = 10.0) -> float | None:
    """Seconds until the shell script's cap for this step (``GPU_CHECK_DEADLINE``, epoch
    seconds) less ``margin``, so a step can stop its own child and still write what it has;
    None when no cap was set."""
    deadline = float(os.environ.get("GPU_CHECK_DEADLINE") or 0)
    return max(5.0, deadline - time.time() - margin) if deadline else None


def step_kernels(ctx: Context) -> dict:
    files = gpu_test_files()
    xml, log = ctx.work / "kernels.xml", ctx.work / "kernels.out"
    cmd = [sys.executable, "-m", "pytest", *kernel_selection(ctx.tiny), "-v", "-p", "no:cacheprovider",
           f"--junitxml={xml}", *files]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rec: dict[str, Any] = {"files": files, "selection": kernel_selection(ctx.tiny)}
    with open(log, "w") as out:
        rec["exit_code"] = run_group(cmd, seconds_left(), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)[0]
    if rec["exit_code"] is None:
        rec["stopped"] = "stopped before the step's cap; counts are of the tests that finished"
    text = log.read_text(errors="replace")
    rec["output_tail"] = text.strip().splitlines()[-3:]
    if rec["exit_code"] is not None and xml.exists():
        return {**rec, **parse_junit(xml)}
    counts = parse_verbose(text)
    if not counts["tests"]:
        return {**rec, "error": text.strip().splitlines()[-15:]}
    return {**rec, **counts}


# ------------------------------------------------------------------ train and mp


def _bench_ns(ctx: Context, **extra: Any) -> argparse.Namespace:
    """The settings ``bench/sae_step.py`` and ``bench/mp_encode.py`` take from their command line."""
    s = ctx.sizes
    return argparse.Namespace(device=s.device, threads=2 if ctx.tiny else 8, omp_wait_policy="default", rounds=1,
                              peers_python=ctx.peers.python, peers_path=ctx.peers.path,
                              runner_timeout=s.runner_timeout, **extra)


def _with_peers(ctx: Context, order: tuple[str, ...]) -> tuple[list[str], dict]:
    """The runners to start, and the peers' records when they cannot run."""
    if ctx.peers.available:
        return list(order), {}
    return [r for r in order if r not in PEERS], {p: {"skipped": ctx.peers.skipped} for p in order if p in PEERS}


def step_train(ctx: Context) -> dict:
    import sae_step

    s = ctx.sizes
    ns = _bench_ns(ctx, steps=s.train_steps, warmup=s.train_warmup)
    runners, skipped = _with_peers(ctx, TRAIN_RUNNERS)
    extra = {"autocast": "bfloat16" if s.device == "cuda" else "none (CPU)", "steps": s.train_steps,
             "warmup": s.train_warmup}

    def keep(partial: dict) -> None:
        ctx.save_partial("train", {**partial, **extra, "runners": {**partial["runners"], **skipped}})

    with tempfile.TemporaryDirectory() as tmp:
        res = sae_step.measure_shape(s.train_shape, runners, ns, tmp, in_process=ctx.tiny, on_runner=keep)
    res["runners"].update(skipped)
    return {**res, **extra}


def step_mp(ctx: Context) -> dict:
    import mp_encode

    s = ctx.sizes
    ns = _bench_ns(ctx, repeats=s.mp_repeats)
    runners, skipped = _with_peers(ctx, MP_RUNNERS)

    def keep(partial: dict) -> None:
        ctx.save_partial("mp", {**partial, "runners": {**partial["runners"], **skipped}})

    with tempfile.TemporaryDirectory() as tmp:
        res = mp_encode.measure_shape(s.mp_shape, runners, ns, tmp, in_process=ctx.tiny, on_runner=keep)
    res["runners"].update(skipped)
    return res


# ------------------------------------------------------------------ harvest and steering


def _gpt2_args(ctx: Context) -> argparse.Namespace:
    import harvest as harvest_bench

    s = ctx.sizes
    d, layers, heads = s.gpt2
    return harvest_bench.parse_args([
        "--d-model", str(d), "--n-layers", str(layers), "--n-heads", str(heads), "--layer", str(s.harvest_layer),
        "--context-length", str(s.harvest_context), "--batch-size", str(s.harvest_batch),
        "--speed-tokens", str(s.harvest_tokens), "--repeats", str(s.harvest_repeats),
        "--shard-tokens", str(s.harvest_shard_tokens), "--device", s.device, "--model-dtype", s.model_dtype,
        "--skip-rss", "--skip-tl", "--skip-decomposition", "--write-floor",
    ])


def step_harvest(ctx: Context) -> dict:
    import harvest as harvest_bench

    args = _gpt2_args(ctx)
    return {
        "model": f"random GPT-2, d_model={args.d_model}, {args.n_layers} layers, {args.n_heads} heads, "
                 f"{args.model_dtype}",
        "hooks": harvest_bench.hooks_for(args), "context_length": args.context_length, "batch_size": args.batch_size,
        "store_dtype": args.dtype, "shard_tokens": args.shard_tokens,
        "bare_forward": f"the same model's blocks 0..{args.layer}, no hooks",
        **harvest_bench.bench_speed(args),
    }


def step_steer(ctx: Context) -> dict:
    import harvest as harvest_bench
    import steer

    s = ctx.sizes
    model = harvest_bench.build_model(_gpt2_args(ctx))
    out = steer.measure(model, s.steer_batch, s.steer_new_tokens, s.steer_repeats,
                        prompt=" ".join(harvest_bench.VOCAB_WORDS[:8]))
    return {**out, "model_dtype": s.model_dtype, "layers": s.gpt2[1], "d_model": s.gpt2[0]}


# ------------------------------------------------------------------ data-parallel step


def step_dp(ctx: Context) -> dict:
    """``torchrun --nproc-per-node 1`` (as ``python -m torch.distributed.run``: the same
    launcher, found wherever torch is) running :func:`dp_worker`."""
    out = ctx.work / "dp_worker.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           str(Path(__file__).resolve()), "dp-worker", "--work", str(ctx.work), *(["--tiny"] if ctx.tiny else [])]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1" if ctx.tiny else os.environ.get("OMP_NUM_THREADS", "8"))
    rc, stdout, stderr = _run(cmd, ctx.sizes.dp_timeout, env)
    res = _read_json(out)
    if res is None:
        return {"launcher": "torchrun --nproc-per-node 1", "exit_code": rc,
                "error": (stdout + "\n" + stderr).strip().splitlines()[-10:]}
    return {"launcher": "torchrun --nproc-per-node 1", "exit_code": rc, **res}


def dp_worker(work: Path, tiny: bool) -> None:
    """Steps of a TopK SAE through the trainer joined to the launcher's process group (one
    rank: every gradient still goes through the all-reduce), then the same steps from the
    same start without it; both timed, weights compared."""
    import torch
    import torch.distributed as dist

    import saes
    from saes.training import distributed
    from saes.training.trainer import Trainer

    s = TINY if tiny else GPU
    distributed.init()
    dp = distributed.DataParallel(rank=dist.get_rank(), world=dist.get_world_size())
    device = s.device
    d, n, k, batch = (int(v) for v in s.dp_shape.split(","))
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(batch * (s.dp_steps + 1), d, generator=g) + 0.5).to(device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def run(data_parallel: Any) -> tuple[dict, list[float]]:
        torch.manual_seed(0)
        sae = saes.TopKSAE(d, n, k, device=device)
        cfg = saes.TrainConfig(batch_size=batch, total_tokens=batch * (s.dp_steps + 1), init_rows=batch,
                               device=device, seed=0)
        t = Trainer([sae], cfg, data_parallel=data_parallel)
        try:
            t.initialise(x[:batch])
            times = []
            for i in range(s.dp_steps + 1):
                sync()
                t0 = time.perf_counter()
                t.step(x[i * batch:(i + 1) * batch])
                sync()
                times.append(time.perf_counter() - t0)
        finally:
            t.close()
        return {key: v.detach().float().cpu() for key, v in sae.state_dict().items()}, times[1:]  # first: warm-up

    try:
        w_dp, t_dp = run(dp)
        w_one, t_one = run(False)
        diff = max(float((w_dp[key] - w_one[key]).abs().max()) for key in w_one)
        rec = {
            "backend": dist.get_backend(), "world_size": dp.world, "device": device, "shape": s.dp_shape,
            "steps_timed": len(t_dp),
            "dp_step_ms": round(1e3 * statistics.median(t_dp), 2),
            "plain_step_ms": round(1e3 * statistics.median(t_one), 2),
            "dp_overhead": round(statistics.median(t_dp) / statistics.median(t_one) - 1, 3),
            "max_abs_weight_diff": diff,
            # One rank: the all-reduce sums one gradient, so only the order of atomic adds
            # on the GPU can make the two differ.
            "same_weights_within_1e-5": diff <= 1e-5,
        }
        if dp.is_main:
            _write_json(work / "dp_worker.json", rec)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ running a step

STEP_FUNCTIONS = {"kernels": step_kernels, "train": step_train, "mp": step_mp, "harvest": step_harvest,
                  "steer": step_steer, "dp": step_dp}


def run_step(name: str, ctx: Context) -> dict:
    """Run one step and write ``WORK/<name>.json``: ``{"status": "ok" | "failed", ...}``."""
    t0 = time.perf_counter()
    try:
        result = STEP_FUNCTIONS[name](ctx)
        rec = {"status": "ok", "result": result}
    except Exception:  # noqa: BLE001  (the report says what broke; the other steps still run)
        rec = {"status": "failed", "error": traceback.format_exc().strip().splitlines()[-8:]}
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    _write_json(ctx.work / f"{name}.json", rec)
    return rec


# ------------------------------------------------------------------ report


@dataclass
class Target:
    what: str
    measured: Any
    met: bool | None  # None: not measured


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def targets(steps: dict[str, dict]) -> list[Target]:
    """The figures the GPU check exists for, each against its target."""
    train = _get(steps, "train", "result") or {}
    ratios = train.get("ratios", {})
    mp = _get(steps, "mp", "result") or {}
    out = []

    def ratio_target(what: str, value: Any, ok) -> None:
        out.append(Target(what, value, None if value is None else bool(ok(value))))

    ratio_target("TopK training step >= 0.6 of the bf16 encoder-GEMM rate", ratios.get("of_gemm_bf16"),
                 lambda v: v >= 0.6)
    decoder = _get(train, "runners", "sparsify", "notes", "sparsify_decoder")
    ratio_target(f"TopK step ahead of sparsify ({decoder or 'decoder not reported'})", ratios.get("vs_sparsify"),
                 lambda v: v > 1)
    ratio_target("TopK step vs SAELens (reference)", ratios.get("vs_saelens"), lambda v: v > 1)
    for peer in ("sparsify", "saelens"):
        ratio_target(f"TopK peak GPU memory below {peer}'s (ours / theirs)", ratios.get(f"peak_gpu_vs_{peer}"),
                     lambda v: v < 1)
    same = _get(mp, "runners", "saes", "codes_vs_saelens", "tokens_same_atoms")
    ratio_target("MP encode >= 5x SAELens's (dictionary Gram cached)", _get(mp, "ratios", "saes_vs_saelens"),
                 lambda v: v >= 5)
    ratio_target("MP codes identical to SAELens's (share of tokens with the same atoms)", same, lambda v: v == 1.0)
    ratio_target("harvest >= 0.9 of a bare forward (wall time)",
                 _get(steps, "harvest", "result", "direct", "harvest_over_bare_wall"), lambda v: v >= 0.9)
    ratio_target("steering overhead in batched generation <= 10%", _get(steps, "steer", "result", "overhead"),
                 lambda v: v <= 0.10)
    k = _get(steps, "kernels", "result") or {}
    ratio_target("GPU tests: none failed", None if "tests" not in k else f"{k['passed']} passed, {k['failed']} failed, "
                 f"{k['skipped']} skipped", lambda v: k["failed"] == 0 and k["passed"] > 0)
    ratio_target("data-parallel step equals the one-process step (largest weight difference)",
                 _get(steps, "dp", "result", "max_abs_weight_diff"), lambda v: v <= 1e-5)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _runner_table(res: dict, rate_key: str, time_key: str, extra: list[tuple[str, str]]) -> list[str]:
    head = ["runner", "tokens/s", time_key.replace("_", " ")] + [label for label, _ in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in (res.get("runners") or {}).items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |" + " |" * (len(head) - 2))
        elif "error" in r:
            err = " / ".join(r["error"] or [])[-200:].replace("|", "/")
            lines.append(f"| {name} | error: {err} |" + " |" * (len(head) - 2))
        else:
            cells = [name, _fmt(r.get(rate_key)), _fmt(r.get(time_key))] + [_fmt(_get(r, *key.split("."))) for _, key in extra]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def step_figures(name: str, rec: dict) -> str:
    """One table cell of the step's headline figures."""
    r = rec.get("result") or {}
    if name == "kernels":
        if "tests" not in r:
            return "no test report"
        fails = "; ".join(f["test"].split("::")[-1] for f in r["failures"][:3])
        text = f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped" + (f" ({fails})" if fails else "")
        shares = [float(p["dense_fallback_rows"]) for p in (r.get("properties") or {}).values()
                  if "dense_fallback_rows" in p]
        if shares:
            text += f"; fused encoder recomputed up to {100 * max(shares):.1f}% of rows densely"
        return text
    if name == "train":
        q = r.get("ratios", {})
        ours = _get(r, "runners", "saes", "tokens_per_s")
        return (f"TopK {_fmt(ours)} tok/s; {_fmt(q.get('of_gemm_bf16'))} of bf16 GEMM; "
                f"{_fmt(q.get('vs_sparsify'))}x sparsify, {_fmt(q.get('vs_saelens'))}x SAELens")
    if name == "mp":
        return (f"{_fmt(_get(r, 'ratios', 'saes_vs_saelens'))}x SAELens; same atoms on "
                f"{_fmt(_get(r, 'runners', 'saes', 'codes_vs_saelens', 'tokens_same_atoms'))} of tokens")
    if name == "harvest":
        return (f"{_fmt(_get(r, 'direct', 'harvest_over_bare_wall'))} of bare forward; store "
                f"{_fmt(_get(r, 'store', 'write_mib_per_s'))} MiB/s (disk floor "
                f"{_fmt(_get(r, 'store', 'write_floor_mib_per_s'))})")
    if name == "steer":
        ov = r.get("overhead")
        return "—" if ov is None else f"overhead {100 * ov:.1f}% ({_fmt(r.get('steered_tokens_per_s'))} tok/s steered)"
    if name == "dp":
        return (f"{r.get('backend', '—')}: {_fmt(r.get('dp_step_ms'))} ms vs {_fmt(r.get('plain_step_ms'))} ms; "
                f"largest weight difference {_fmt(r.get('max_abs_weight_diff'))}")
    return ""


def _status(name: str, work: Path) -> dict:
    """A step's record, with how the shell script saw it end (exit code, seconds, cap)."""
    rec = _read_json(work / f"{name}.json") or {}
    line = (work / f"{name}.status").read_text().split() if (work / f"{name}.status").exists() else []
    rc, secs, cap = (int(line[0]), float(line[1]), int(line[2])) if len(line) == 3 else (None, rec.get("seconds"), None)
    status = rec.get("status", "not run")
    if rc in (124, 137):
        status = "timeout" + (" (partial figures)" if rec.get("status") == "partial" else "")
    elif rc not in (None, 0) and status == "ok":
        status = f"exit {rc}"
    elif rc not in (None, 0) and not rec:
        status = f"failed (exit {rc}, no result)"
    log = work / f"{name}.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-8:] if log.exists() else []
    return {**rec, "status": status, "exit_code": rc, "seconds": secs, "cap_seconds": cap,
            **({"log_tail": tail} if status != "ok" else {})}


def build_report(work: Path) -> dict:
    info = _status("info", work)
    steps = {name: _status(name, work) for name in STEPS}
    return {
        "benchmark": "gpu_check",
        "machine": info.get("result") or {"error": info.get("error") or info.get("log_tail")},
        "steps": steps,
        "targets": [asdict(t) for t in targets(steps)],
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    peers = m.get("peers") or {}
    peer_text = (", ".join(f"{k} {v}" for k, v in peers.get("versions", {}).items())
                 if not peers.get("skipped") else f"skipped: {peers.get('skipped')}")
    lines = [
        f"# GPU check, {m.get('date', '?')}",
        "",
        (f"{m.get('gpu', 'no GPU (tiny CPU dry run)' if m.get('tiny') else 'GPU unknown')}"
         f" ({_fmt(m.get('gpu_memory_gib'))} GiB, driver {_fmt(m.get('driver'))}), CUDA {_fmt(m.get('cuda'))}, "
         f"torch {_fmt(m.get('torch'))}, Triton {_fmt(m.get('triton'))}, NCCL {_fmt(m.get('nccl'))}, "
         f"Python {_fmt(m.get('python'))}, {_fmt(m.get('cpu_count'))} CPUs; peers: {peer_text}"),
        "",
        "| step | status | seconds (cap) | figures |",
        "|---|---|---|---|",
    ]
    for name, rec in report["steps"].items():
        cap = f" ({rec['cap_seconds']})" if rec.get("cap_seconds") else ""
        figures = step_figures(name, rec) if rec.get("result") else ""
        lines.append(f"| {name} | {rec['status']} | {_fmt(rec.get('seconds'))}{cap} | {figures} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in report["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['what']} | {_fmt(t['measured'])} | {met} |")
    train = _get(report, "steps", "train", "result")
    if train and train.get("runners"):
        lines += ["", (f"Training steps at d={train['d']}, n={train['n']}, k={train['k']}, batch {train['batch']}, "
                       f"autocast {train.get('autocast')}:"), ""]
        lines += _runner_table(train, "tokens_per_s", "step_ms", [("peak GPU MiB", "peak_gpu_mib"),
                                                                  ("notes", "notes.sparsify_decoder")])
    mp = _get(report, "steps", "mp", "result")
    if mp and mp.get("runners"):
        lines += ["", f"Matching-pursuit encode at d={mp['d']}, n={mp['n']}, k={mp['k']}, {mp['batch']} rows:", ""]
        lines += _runner_table(mp, "tokens_per_s", "encode_ms", [("same atoms as SAELens", "codes_vs_saelens.tokens_same_atoms"),
                                                                 ("max coef. diff", "codes_vs_saelens.max_abs_coef_diff")])
    failed = [(n, r) for n, r in report["steps"].items() if r["status"] != "ok"]
    for name, rec in failed:
        why = rec.get("error") or rec.get("log_tail") or []
        if why:
            lines += ["", f"{name}: " + " / ".join(why[-3:])[-600:]]
    return "\n".join(lines) + "\n"


def write_report(work: Path, out: Path) -> dict:
    report = build_report(work)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "gpu_check.json", report)
    (out / "gpu_check.md").write_text(markdown(report))
    return report


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    info = sub.add_parser("info")
    step = sub.add_parser("step")
    step.add_argument("name", choices=STEPS)
    dpw = sub.add_parser("dp-worker")
    for q in (info, step, dpw):
        q.add_argument("--work", required=True, type=Path)
        q.add_argument("--tiny", action="store_true", help="CPU, tiny sizes: the dry run")
    info.add_argument("--peers-python")
    info.add_argument("--peers-path")
    info.add_argument("--peers-skip")
    rep = sub.add_parser("report")
    rep.add_argument("--work", required=True, type=Path)
    rep.add_argument("--out", required=True, type=Path)
    ns = p.parse_args(argv)
    if ns.cmd == "report":
        print(markdown(write_report(ns.work, ns.out)), end="")
        return 0
    ns.work.mkdir(parents=True, exist_ok=True)
    if ns.cmd == "dp-worker":
        dp_worker(ns.work, ns.tiny)
        return 0
    if ns.cmd == "info":
        ctx = Context(ns.work, ns.tiny, Peers())
        t0 = time.perf_counter()
        try:
            rec = {"status": "ok", "result": step_info(ctx, ns.peers_python, ns.peers_path, ns.peers_skip)}
        except Exception:  # noqa: BLE001  (the report shows it; the steps still run)
            rec = {"status": "failed", "error": traceback.format_exc().strip().splitlines()[-8:]}
        rec["seconds"] = round(time.perf_counter() - t0, 1)
        _write_json(ns.work / "info.json", rec)
        print(json.dumps(rec, default=str))
        return 0 if rec["status"] == "ok" else 1
    rec = run_step(ns.name, load_context(ns.work, ns.tiny))
    print(json.dumps(rec, default=str)[:4000])
    return 0 if rec["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
