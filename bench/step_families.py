"""Training-step time of the sparsity-penalised families (L1, JumpReLU, Gated) against SAELens's.

A step is forward, backward and optimiser update (Adam for both) on one batch, with each
library's own per-step bookkeeping:

* ``saes_<family>``: :class:`saes.training.trainer.Trainer` with the family's default
  settings (``ReLUSAE``, ``JumpReLUSAE``, ``GatedSAE``): batch checks, schedule,
  coefficient warm-up, decoder projection where rows are unit norm, gradient clipping,
  Adam, dead-latent counters, periodic metrics;
* ``saelens_<family>``: SAELens's ``StandardTrainingSAE``, ``JumpReLUTrainingSAE`` and
  ``GatedTrainingSAE`` stepped the way its ``SAETrainer._train_step`` does (coefficient
  schedulers, firing statistics, gradient clipping, Adam).

Both sides compute these families densely (every latent's code, one product per path), so
the ratios measure the bookkeeping and the formulation around the same matrix products.
Each measurement is its own process with the same threads, data file and shape; rounds
interleave the runners and each runner's best round counts (bench/sae_step.py's method,
whose timing helpers this script reuses). The ratio is SAELens's step time over ours (above
1: ours is faster); ``gemm_units`` repeats it with each step measured in units of an
encoder-sized product timed beside it in the same process (robust to machine load).
Prints one JSON document.

Usage::

    python bench/step_families.py                       # the CPU shapes, 2 threads
    python bench/step_families.py --shapes 512,4096,1024 --rounds 2 --families l1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import sae_step  # bench/ is the script's own directory: the shared timing helpers
from workers import ROOT, worker_python_and_env

FAMILIES = ("l1", "jumprelu", "gated")
CPU_SHAPES = ["512,4096,1024", "768,8192,1024"]   # d, n, batch
GPU_SHAPES = ["2304,65536,4096"]
LR = 2e-4
PEERS_PYTHON = str(ROOT / ".venv-peers" / "bin" / "python") if (ROOT / ".venv-peers").exists() else sae_step.PEERS_PYTHON


def worker_saes(family: str, d: int, n: int, batch: int, data: str, steps: int, warmup: int, device: str):
    import saes
    from saes.architectures import registry
    from saes.training.trainer import Trainer

    batches = sae_step._batches(data, batch, warmup + steps, device)
    sae = registry.for_cli(family)(d, n, device=device)
    cfg = saes.TrainConfig(batch_size=batch, total_tokens=batch * len(batches) * 100, init_rows=batch, lr=LR,
                           device=device)
    t = Trainer([sae], cfg)
    t.initialise(batches[0])
    return sae_step._time_steps(t.step, batches, warmup, device)


def worker_saelens(family: str, d: int, n: int, batch: int, data: str, steps: int, warmup: int, device: str):
    import sae_lens as sl
    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.training.optim import CoefficientScheduler

    batches = sae_step._batches(data, batch, warmup + steps, device)
    cls, cfg_cls = {"l1": (sl.StandardTrainingSAE, sl.StandardTrainingSAEConfig),
                    "jumprelu": (sl.JumpReLUTrainingSAE, sl.JumpReLUTrainingSAEConfig),
                    "gated": (sl.GatedTrainingSAE, sl.GatedTrainingSAEConfig)}[family]
    sae = cls(cfg_cls(d_in=d, d_sae=n, device=device))
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    schedulers = {name: CoefficientScheduler(c.warm_up_steps, c.value) for name, c in sae.get_coefficients().items()}
    since = torch.zeros(n, device=device)
    freq = torch.zeros(n, device=device)
    counter = [0]

    def step(x):
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={k: s.value for k, s in schedulers.items()}, dead_neuron_mask=since > 1000,
            n_training_steps=counter[0], is_logging_step=False))
        with torch.no_grad():  # SAETrainer._train_step's firing statistics
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            since.add_(1)
            since[did_fire] = 0
            freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        for s in schedulers.values():
            s.step()
        counter[0] += 1

    return sae_step._time_steps(step, batches, warmup, device)


def run_worker(ns: argparse.Namespace) -> None:
    import resource

    import torch

    torch.set_num_threads(ns.threads)
    torch.manual_seed(0)
    if ns.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    side, family = ns.worker.split("_", 1)
    d, n, batch = (int(v) for v in ns.shape.split(","))
    sae_step._SHAPE = (d, n)  # the yardstick product's shape in sae_step._time_steps
    fn = worker_saes if side == "saes" else worker_saelens
    triples = fn(family, d, n, batch, ns.data, ns.steps, ns.warmup, ns.device)
    times = [w for w, _, _ in triples]
    # No yardstick on CUDA (sae_step._gemm_after_step): a GPU is not shared the way the CPU is.
    in_gemms = [w / g for w, _, g in triples if g]
    print("RESULT " + json.dumps({
        "step_s_median": statistics.median(times), "step_s": times,
        "step_over_gemm": statistics.median(in_gemms) if in_gemms else None,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **({"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20} if ns.device == "cuda" else {}),
    }))


def _spawn(worker: str, shape: str, data: str, ns: argparse.Namespace) -> dict:
    python, env = worker_python_and_env("ours" if worker.startswith("saes_") else "peers", ns.threads,
                                        ns.omp_wait_policy, ns.peers_python)
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--shape", shape, "--data", data,
           "--steps", str(ns.steps), "--warmup", str(ns.warmup), "--threads", str(ns.threads), "--device", ns.device]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}


def _summary(recs: list[dict], batch: int) -> dict:
    ok = [r for r in recs if "error" not in r]
    if not ok:
        return {"error": recs[-1].get("error")}
    best = min(ok, key=lambda r: r["step_s_median"])
    return {"step_ms": round(1e3 * best["step_s_median"], 2), "tokens_per_s": round(batch / best["step_s_median"]),
            "step_ms_rounds": [round(1e3 * r["step_s_median"], 1) for r in ok],
            "step_over_gemm": min((round(r["step_over_gemm"], 3) for r in ok if r["step_over_gemm"]), default=None),
            "max_rss_mib": round(best["max_rss_mib"]),
            **({"peak_gpu_mib": round(best["peak_gpu_mib"])} if "peak_gpu_mib" in best else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=None, help="d,n,batch (default: the CPU shapes; on CUDA the GPU one)")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--peers-python", default=PEERS_PYTHON)
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"])
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
    shapes = ns.shapes or (GPU_SHAPES if ns.device == "cuda" else CPU_SHAPES)
    report: dict = {
        "benchmark": "step_families", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": ns.device},
        "threads": ns.threads, "steps": ns.steps, "warmup": ns.warmup, "rounds": ns.rounds,
        "load_before": sae_step._load(), "shapes": {},
    }
    runners = [f"{side}_{f}" for f in ns.families for side in ("saes", "saelens")]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            d, n, batch = (int(v) for v in shape.split(","))
            data = os.path.join(tmp, f"x_{d}.safetensors")
            sae_step._write_data(shape, batch * (ns.steps + ns.warmup), data)
            rounds: dict[str, list[dict]] = {r: [] for r in runners}
            for _ in range(ns.rounds):
                for r in runners:
                    rounds[r].append(_spawn(r, shape, data, ns))
            res = {r: _summary(recs, batch) for r, recs in rounds.items()}
            ratios = {}
            for f in ns.families:
                ours, theirs = res[f"saes_{f}"], res[f"saelens_{f}"]
                if "error" not in ours and "error" not in theirs:
                    ratios[f] = {"saelens_over_ours": round(theirs["step_ms"] / ours["step_ms"], 3)}
                    if ours["step_over_gemm"] and theirs["step_over_gemm"]:
                        ratios[f]["gemm_units"] = round(theirs["step_over_gemm"] / ours["step_over_gemm"], 3)
            report["shapes"][shape] = {"d": d, "n": n, "batch": batch, "runners": res, "ratios": ratios}
    report["load_after"] = sae_step._load()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
