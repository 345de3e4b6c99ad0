"""Tokens/s of full TopK SAE training steps: this toolkit vs sparsify vs SAELens vs the GEMM floor.

A step is forward, backward and optimiser update (Adam for everyone) on one batch, with
each library's own per-step bookkeeping:

* ``saes``: :func:`saes.train` with default settings on a TopK SAE (batch checks, data
  order, schedule, decoder-gradient projection, gradient clipping, Adam, decoder
  re-normalisation, dead-latent counters, periodic metrics), timed between its per-step
  callbacks; ``saes_batchtopk``, ``saes_matryoshka`` and ``saes_mp`` the same for those
  architectures. On CUDA the trainer's default bfloat16 autocast is on;
* ``sparsify``: EleutherAI sparsify's ``SparseCoder`` stepped the way its trainer does
  (unit-norm decoder, forward with the dead mask, parallel-gradient removal, Adam); on
  CUDA its forward runs under its own bfloat16 autocast and decodes with its Triton
  kernel (the result names the decoder it used);
* ``saelens``: SAELens's ``TopKTrainingSAE.training_forward_pass`` stepped the way its
  ``SAETrainer`` does (firing statistics, gradient clipping, Adam), both with dense and
  with sparse activations; the faster of the two is the reference. On CUDA its forward
  runs under bfloat16 autocast, as its trainer's ``autocast`` option does;
* ``gemm``: the encoder product ``[batch, d] @ [d, n]`` alone, into a preallocated
  output: the floor, since only that product is inherently dense; ``gemm_bf16`` the
  same in bfloat16 (the floor for a bfloat16-autocast step).

Peers run in their own virtual environment (``--peers-python``, default
``/tmp/peers-venv/bin/python``; ``--peers-path`` adds a folder of peer packages to their
``PYTHONPATH``), ours with ``PYTHONPATH`` pointing at this checkout. Every
measurement is a separate process with the same threads, data file and shapes; rounds
interleave the runners so that machine load hits all of them alike, and each runner's
best round counts (the least disturbed one). Prints one JSON document. On CUDA each runner also reports its peak GPU memory
(``torch.cuda.max_memory_allocated``), and the step is timed without the CPU-load yardstick.

Usage::

    python bench/sae_step.py                      # both CPU shapes, 2 threads
    python bench/sae_step.py --shapes 512,8192,32,2048 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PEERS_PYTHON = "/tmp/peers-venv/bin/python"

from workers import worker_python_and_env

CPU_SHAPES = ["512,8192,32,2048", "768,16384,32,2048"]
GPU_SHAPE = "2304,65536,64,4096"  # a Gemma-2-2B residual width, 64k latents
LR = 2e-4


# ------------------------------------------------------------------ workers


def _batches(path: str, batch: int, count: int, device: str):
    from safetensors.torch import load_file

    x = load_file(path)["x"].to(device)
    rows = x.shape[0]
    return [x[(i * batch) % rows:(i * batch) % rows + batch] for i in range(count)]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _yardstick(d: int, n: int, batch: int, device: str):
    """The encoder GEMM ``[batch, d] @ [d, n]`` into a preallocated output, timed right
    after every step in every runner's process: a step's cost relative to it is robust
    to the machine load of the moment (other jobs slow both alike)."""
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, d, generator=g).to(device)
    W = torch.randn(d, n, generator=g).to(device)
    out = torch.empty(batch, n, device=device)
    return lambda: torch.mm(x, W, out=out)


def _gemm_after_step(batch: int, device: str):
    """The yardstick to time after each step, or None on CUDA: a GPU is not shared with
    other jobs the way the CPU is, and the yardstick's buffers would count in every
    runner's peak memory."""
    if device == "cuda":
        return None
    d, n = _SHAPE
    return _yardstick(d, n, batch, device)


def _timed_gemm(gemm, device: str) -> float | None:
    if gemm is None:
        return None
    t0 = time.perf_counter()
    gemm()
    _sync(device)
    return time.perf_counter() - t0


def _time_steps(step, batches, warmup: int, device: str) -> list[tuple[float, float, float | None]]:
    """``(wall s, process CPU s, yardstick GEMM wall s or None)`` of each timed step."""
    gemm = _gemm_after_step(batches[0].shape[0], device)
    for x in batches[:warmup]:
        step(x)
    _timed_gemm(gemm, device)
    _sync(device)
    times = []
    for x in batches[warmup:]:
        t0, c0 = time.perf_counter(), time.process_time()
        step(x)
        _sync(device)
        t1 = time.perf_counter()
        times.append((t1 - t0, time.process_time() - c0, _timed_gemm(gemm, device)))
    return times


_SHAPE = (0, 0)  # (d, n) of the worker's shape, set by run_worker


def _saes_trainer(d, n, k, batch, batches, device, fused_adam=False):
    import torch

    if fused_adam:  # what-if: the trainer's Adam with fused=True (one kernel per tensor)
        import functools

        torch.optim.Adam = functools.partial(torch.optim.Adam, fused=True)
    import saes
    from saes.training.trainer import Trainer

    sae = saes.TopKSAE(d, n, k, device=device)
    cfg = saes.TrainConfig(batch_size=batch, total_tokens=batch * len(batches) * 100, init_rows=batch, device=device)
    t = Trainer([sae], cfg)
    t.initialise(batches[0])
    return t


def _make_sae(arch: str, d: int, n: int, k: int, device: str):
    import saes

    if arch == "topk":
        return saes.TopKSAE(d, n, k, device=device)
    if arch == "batchtopk":
        return saes.BatchTopKSAE(d, n, k, device=device)
    if arch == "matryoshka":
        return saes.MatryoshkaSAE(d, d_sae=n, k=k, device=device)  # the default doubling groups
    if arch == "mp":
        return saes.MPSAE(d, n, k, device=device)
    raise ValueError(f"unknown architecture {arch!r}")


def worker_saes(d, n, k, batch, data, steps, warmup, device, arch="topk", fused_adam=False):
    """``saes.train`` over ``warmup + steps + 1`` batches, each step timed between two of its
    callbacks (the first step, which also compiles kernels, is never timed)."""
    import torch

    if fused_adam:  # what-if: the trainer's Adam with fused=True (one kernel per tensor)
        import functools

        torch.optim.Adam = functools.partial(torch.optim.Adam, fused=True)
    from safetensors.torch import load_file

    import saes

    rows = batch * (warmup + steps + 1)
    x = load_file(data)["x"][:rows].to(device)
    sae = _make_sae(arch, d, n, k, device)
    cfg = saes.TrainConfig(batch_size=batch, total_tokens=rows, init_rows=batch, device=device, seed=0)
    gemm = _gemm_after_step(batch, device)
    times: list[tuple[float, float, float | None]] = []
    last: list[tuple[float, float]] = []

    def tick(_info) -> None:
        _sync(device)
        now, cpu = time.perf_counter(), time.process_time()
        if last:
            times.append((now - last[0][0], cpu - last[0][1], _timed_gemm(gemm, device)))
        last[:] = [(time.perf_counter(), time.process_time())]

    saes.train(sae, x, cfg, progress=False, callback=tick)
    return times[warmup:]


def profile_saes(shape: str, threads: int, steps: int = 3, fused_adam: bool = False) -> list[dict]:
    """Where a step of this toolkit's trainer spends its time: the top ops by self CPU
    time per step (torch.profiler), with their input shapes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    d, n, k, batch = (int(v) for v in shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.safetensors")
        _write_data(shape, batch * (steps + 2), path)
        batches = _batches(path, batch, steps + 2, "cpu")
    t = _saes_trainer(d, n, k, batch, batches, "cpu", fused_adam)
    for x in batches[:2]:
        t.step(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for x in batches[2:]:
            t.step(x)
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if not e.key.startswith("aten::"):
            continue
        rows.append({"op": e.key, "shapes": str(e.input_shapes)[:120], "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "calls_per_step": e.count / steps})
    rows.sort(key=lambda r: -r["self_ms_per_step"])
    total = sum(r["self_ms_per_step"] for r in rows)
    return [{"total_aten_self_ms_per_step": round(total, 1)}] + [
        {**r, "self_ms_per_step": round(r["self_ms_per_step"], 2)} for r in rows[:25]
    ]


def worker_sparsify(d, n, k, batch, data, steps, warmup, device):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    batches = _batches(data, batch, warmup + steps, device)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(n, dtype=torch.long, device=device)
    dead_after, auxk_alpha = 10_000_000, 1 / 32  # sparsify's defaults

    def step(x):
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since > dead_after)
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            fired = torch.zeros(n, dtype=torch.bool, device=device)
            fired[out.latent_indices.flatten()] = True
            since.add_(x.shape[0])
            since[fired] = 0

    times = _time_steps(step, batches, warmup, device)
    import sparsify.utils

    _NOTES["sparsify_decoder"] = sparsify.utils.decoder_impl.__name__  # triton_decode or eager_decode
    return times


def worker_saelens(d, n, k, batch, data, steps, warmup, device, sparse=False):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    batches = _batches(data, batch, warmup + steps, device)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, device=device, use_sparse_activations=sparse))
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(n, device=device)
    freq = torch.zeros(n, device=device)
    counter = [0]

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")  # its trainer's `autocast`

    def step(x):
        with autocast:
            out = sae.training_forward_pass(TrainStepInput(
                sae_in=x, coefficients={}, dead_neuron_mask=since > 1000, n_training_steps=counter[0],
                is_logging_step=False,
            ))
        with torch.no_grad():  # SAETrainer._train_step's firing statistics
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            if did_fire.is_sparse:
                did_fire = did_fire.to_dense()
            since.add_(1)
            since[did_fire] = 0
            f = firing.sum(0)
            freq.add_(f.to_dense() if f.is_sparse else f)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        counter[0] += 1

    return _time_steps(step, batches, warmup, device)


def worker_gemm(d, n, k, batch, data, steps, warmup, device, dtype="float32"):
    import torch

    dt = getattr(torch, dtype)
    batches = [b.to(dt) for b in _batches(data, batch, warmup + steps, device)]
    W = (torch.randn(d, n, device=device) / d**0.5).to(dt)
    out = torch.empty(batch, n, device=device, dtype=dt)
    return _time_steps(lambda x: torch.mm(x, W, out=out), batches, warmup, device)


WORKERS = {
    "saes": (worker_saes, {}, "ours"),
    "saes_batchtopk": (worker_saes, {"arch": "batchtopk"}, "ours"),
    "saes_matryoshka": (worker_saes, {"arch": "matryoshka"}, "ours"),
    "saes_mp": (worker_saes, {"arch": "mp"}, "ours"),
    "saes_fused_adam": (worker_saes, {"fused_adam": True}, "ours"),
    "sparsify": (worker_sparsify, {}, "peers"),
    "saelens": (worker_saelens, {}, "peers"),
    "saelens_sparse": (worker_saelens, {"sparse": True}, "peers"),
    "gemm": (worker_gemm, {}, "ours"),
    "gemm_bf16": (worker_gemm, {"dtype": "bfloat16"}, "ours"),
}


# What a worker learnt about the run besides its timings (e.g. which decoder a peer used).
_NOTES: dict[str, str] = {}


def measure_worker(worker: str, shape: str, data: str, steps: int, warmup: int, device: str) -> dict:
    """One runner's record at ``shape`` (step times, CPU time, yardstick, peak memory)."""
    import torch

    torch.manual_seed(0)
    fn, kwargs, _ = WORKERS[worker]
    d, n, k, batch = (int(v) for v in shape.split(","))
    global _SHAPE
    _SHAPE = (d, n)
    _NOTES.clear()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    triples = fn(d, n, k, batch, data, steps, warmup, device, **kwargs)
    times = [w for w, _, _ in triples]
    gemms = [g for _, _, g in triples if g is not None]
    rec = {
        "step_s_median": statistics.median(times),
        "step_s_min": min(times),
        "step_s": times,
        "cpu_s_median": statistics.median(c for _, c, _ in triples),
        "gemm_s_median": statistics.median(gemms) if gemms else None,
        "step_over_gemm": statistics.median(w / g for w, _, g in triples) if gemms else None,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **({"notes": dict(_NOTES)} if _NOTES else {}),
    }
    if device == "cuda":
        rec["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return rec


def run_worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rec = measure_worker(args.worker, args.shape, args.data, args.steps, args.warmup, args.device)
    print("RESULT " + json.dumps(rec))


# ------------------------------------------------------------------ driver


def _spawn(worker: str, shape: str, data: str, ns: argparse.Namespace) -> dict:
    side = WORKERS[worker][2]
    python, env = worker_python_and_env(side, ns.threads, ns.omp_wait_policy, ns.peers_python,
                                        getattr(ns, "peers_path", None))
    if ns.device == "cpu":
        # sparsify's own switch for its eager decoder: it would otherwise launch its Triton
        # kernel whenever triton is importable, which fails on CPU tensors.
        env["SPARSIFY_DISABLE_TRITON"] = "1"
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--shape", shape, "--data", data,
           "--steps", str(ns.steps), "--warmup", str(ns.warmup), "--threads", str(ns.threads), "--device", ns.device]
    timeout = getattr(ns, "runner_timeout", None)
    try:
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": [f"{worker} did not finish within {timeout} s"]}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}


def _in_process(worker: str, shape: str, data: str, ns: argparse.Namespace) -> dict:
    """The same record as :func:`_spawn`, measured in this process (tiny checks only: no
    separate memory peak, and this process's packages)."""
    try:
        return measure_worker(worker, shape, data, ns.steps, ns.warmup, ns.device)
    except Exception as err:  # noqa: BLE001  (reported like a failed child: one runner cannot stop the rest)
        return {"error": [f"{type(err).__name__}: {err}"]}


def _summary(recs: list[dict], batch: int) -> dict:
    """The best round of one runner (the least disturbed), or its last error."""
    ok = [x for x in recs if "error" not in x]
    if not ok:
        return {"error": recs[-1].get("error")}
    best = min(ok, key=lambda x: x["step_s_median"])
    gemm_units = [x["step_over_gemm"] for x in ok if x.get("step_over_gemm") is not None]
    out = {
        "tokens_per_s": batch / best["step_s_median"],
        "step_ms": 1e3 * best["step_s_median"],
        "step_ms_rounds": [round(1e3 * x["step_s_median"], 1) for x in ok],
        "cpu_ms_per_step": round(1e3 * best["cpu_s_median"], 1),
        "max_rss_mib": round(best["max_rss_mib"]),
    }
    if gemm_units:
        # Least disturbed round of the load-robust measure: step time in units of the
        # encoder GEMM timed next to it in the same process.
        out["step_over_gemm"] = round(min(gemm_units), 3)
        out["step_over_gemm_rounds"] = [round(v, 3) for v in gemm_units]
    if "peak_gpu_mib" in best:
        out["peak_gpu_mib"] = round(best["peak_gpu_mib"])
    if "notes" in best:
        out["notes"] = best["notes"]
    return out


def measure_shape(
    shape: str, runners: list[str], ns: argparse.Namespace, tmp: str, *, in_process: bool = False,
    on_runner=None,
) -> dict:
    """Every runner at ``shape`` (``d,n,k,batch``), ``ns.rounds`` interleaved rounds, each
    runner in its own process (``in_process``: ours in this one, for tiny checks).
    ``on_runner(partial_result)`` is called after each runner, so a caller can keep what
    was measured if a later runner hangs."""
    d, n, k, batch = (int(v) for v in shape.split(","))
    unknown = sorted(set(runners) - set(WORKERS))
    if unknown:
        raise ValueError(f"unknown runners {unknown}; known: {sorted(WORKERS)}")
    data = os.path.join(tmp, f"x_{d}.safetensors")
    _write_data(shape, batch * (ns.steps + ns.warmup + 1), data)
    rounds: dict[str, list[dict]] = {r: [] for r in runners}
    result = {"d": d, "n": n, "k": k, "batch": batch, "runners": {}, "ratios": {}}
    for _ in range(ns.rounds):
        for r in runners:
            ours = WORKERS[r][2] == "ours"
            rounds[r].append(_in_process(r, shape, data, ns) if in_process and ours else _spawn(r, shape, data, ns))
            result["runners"] = {name: _summary(recs, batch) for name, recs in rounds.items() if recs}
            result["ratios"] = _ratios(result["runners"])
            if on_runner is not None:
                on_runner(result)
    return result


def _write_data(shape: str, rows: int, path: str) -> None:
    import torch
    from safetensors.torch import save_file

    d = int(shape.split(",")[0])
    g = torch.Generator().manual_seed(0)
    # Activations with a few dominant directions and a non-zero mean, like a residual stream.
    basis = torch.randn(d, d, generator=g) / d**0.5
    scale = torch.linspace(3.0, 0.3, d)
    x = (torch.randn(rows, d, generator=g) * scale) @ basis + 0.5
    save_file({"x": x.contiguous()}, path)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=None, help="d,n,k,batch (default: the CPU shapes, plus the GPU one on CUDA)")
    # saelens_sparse (use_sparse_activations=True) is left out by default: its backward
    # fails on CPU with torch 2.13 (aten::view on a sparse tensor).
    p.add_argument("--runners", nargs="*", default=["saes", "saes_fused_adam", "sparsify", "saelens", "gemm"])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--peers-python", default=PEERS_PYTHON)
    p.add_argument("--peers-path", default=None, help="a folder of peer packages for the peers' PYTHONPATH")
    p.add_argument("--runner-timeout", type=float, default=None, help="seconds before a runner is given up")
    # On a shared, oversubscribed machine OpenMP's default spin-waiting makes every
    # parallel region wait for a preempted partner thread (a 2-thread run became 4-20x
    # slower than a 1-thread one here); PASSIVE waiting removes that for every runner
    # alike. "default" leaves the variable as it is.
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"])
    p.add_argument("--profile", metavar="SHAPE", help="profile this toolkit's step at d,n,k,batch instead")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.device is None:
        import torch

        ns.device = "cuda" if torch.cuda.is_available() else "cpu"
    if ns.worker:
        run_worker(ns)
        return
    if ns.profile:
        # In-process: OMP_WAIT_POLICY is whatever this process was started with.
        print(json.dumps({"profile": ns.profile, "threads": ns.threads,
                          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "load": _load(),
                          "ops": profile_saes(ns.profile, ns.threads)}, indent=1))
        return
    shapes = ns.shapes or (CPU_SHAPES + ([GPU_SHAPE] if ns.device == "cuda" else []))
    if ns.device == "cuda" and "gemm_bf16" not in ns.runners:
        ns.runners.append("gemm_bf16")
    report: dict = {
        "benchmark": "sae_step",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": ns.device},
        "threads": ns.threads, "omp_wait_policy": ns.omp_wait_policy, "steps": ns.steps, "warmup": ns.warmup, "rounds": ns.rounds,
        "load_before": _load(), "shapes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            report["shapes"][shape] = measure_shape(shape, ns.runners, ns, tmp)
    report["load_after"] = _load()
    print(json.dumps(report, indent=2))


def _ratios(res: dict) -> dict:
    def tps(name):
        return res.get(name, {}).get("tokens_per_s")

    out = {}
    ours = tps("saes")
    lens = max([v for v in (tps("saelens"), tps("saelens_sparse")) if v] or [0]) or None
    pairs = {"vs_sparsify": tps("sparsify"), "vs_saelens": lens, "of_gemm": tps("gemm"), "of_gemm_bf16": tps("gemm_bf16")}
    for key, other in pairs.items():
        if ours and other:
            out[key] = round(ours / other, 3)
    fused = tps("saes_fused_adam")
    if fused:
        for key, other in pairs.items():
            if other:
                out[f"fused_adam_{key}"] = round(fused / other, 3)
    for arch in ("batchtopk", "matryoshka", "mp"):
        mine = tps(f"saes_{arch}")
        for key in ("of_gemm", "of_gemm_bf16"):
            if mine and pairs[key]:
                out[f"{arch}_{key}"] = round(mine / pairs[key], 3)
    # Peak GPU memory against each peer's (below 1: ours is lower).
    def peak(name):
        return res.get(name, {}).get("peak_gpu_mib")

    for peer in ("sparsify", "saelens"):
        if peak("saes") and peak(peer):
            out[f"peak_gpu_vs_{peer}"] = round(peak("saes") / peak(peer), 3)
    # The same comparisons in GEMM units (load-robust): other.step/gemm over ours.step/gemm.
    def rel(name):
        return res.get(name, {}).get("step_over_gemm")

    lens_rel = min([v for v in (rel("saelens"), rel("saelens_sparse")) if v] or [0]) or None
    for mine in ("saes", "saes_fused_adam"):
        if not rel(mine):
            continue
        tag = "" if mine == "saes" else "fused_adam_"
        out[f"{tag}gemm_units_of_gemm"] = round(1 / rel(mine), 3)
        for key, other in (("vs_sparsify", rel("sparsify")), ("vs_saelens", lens_rel)):
            if other:
                out[f"{tag}gemm_units_{key}"] = round(other / rel(mine), 3)
    return out


if __name__ == "__main__":
    main()
