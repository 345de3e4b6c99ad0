"""Step time of a transcoder: this toolkit vs sparsify's and SAELens's, on the same shapes.

A step is forward, backward and Adam update on one batch of pairs (the input x and the
target y of the same tokens, ``d_out = d``), with each library's own per-step bookkeeping:

* ``saes_skip`` / ``saes``: :class:`saes.training.trainer.Trainer` with default settings
  (the loop ``saes.train`` runs: batch checks, schedule, decoder-gradient projection,
  gradient clipping, Adam, decoder re-normalisation, dead latents, AuxK, periodic
  metrics) on a TopK skip-transcoder / TopK transcoder, fed rows ``[x | y]`` as its paired
  sources produce them;
* ``sparsify_skip`` / ``sparsify``: EleutherAI sparsify's ``SparseCoder`` with
  ``transcode=True`` (and ``skip_connection=True``), stepped as its trainer steps
  transcoders: forward with the target and the dead mask, FVU + AuxK, Adam (no decoder
  normalisation for transcoders, as its trainer);
* ``saelens_skip``: SAELens 6.54 has transcoder classes for inference but no transcoder
  training, so its ``SkipTranscoder`` (ReLU codes, dense) is stepped by hand as its
  standard SAE training steps: MSE to the target plus an L1 penalty weighted by decoder
  norms, gradient clipping, Adam. Its codes are dense, so its step is not the same
  computation as a TopK one: the ratio says what a SAELens user's transcoder step costs;
* ``gemm``: the encoder product ``[batch, d] @ [d, n]`` alone: the floor.

Every measurement is a separate process with the same threads, data and shapes (peers in
their own environment, ``--peers-python``); rounds interleave the runners and each one's
best round counts. Prints one JSON document.

Usage::

    python bench/step_transcoders.py --peers-python .venv-peers/bin/python
    python bench/step_transcoders.py --shapes 512,8192,32,2048 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import worker_python_and_env

PEERS_PYTHON = "/tmp/peers-venv/bin/python"
CPU_SHAPES = ["512,8192,32,2048", "768,16384,32,2048"]
GPU_SHAPE = "2304,65536,64,4096"
LR = 2e-4
DEAD_AFTER, AUXK_ALPHA, L1 = 10_000_000, 1 / 32, 5.0  # sparsify's AuxK defaults; SAELens's default L1 coefficient


# ------------------------------------------------------------------ workers


def _pairs(path: str, batch: int, count: int, device: str):
    from safetensors.torch import load_file

    t = load_file(path)
    x, y = t["x"].to(device), t["y"].to(device)
    rows = x.shape[0]
    return [(x[(i * batch) % rows:(i * batch) % rows + batch], y[(i * batch) % rows:(i * batch) % rows + batch])
            for i in range(count)]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time(step, items, warmup: int, device: str) -> list[float]:
    for item in items[:warmup]:
        step(item)
    _sync(device)
    times = []
    for item in items[warmup:]:
        t0 = time.perf_counter()
        step(item)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def worker_saes(d, n, k, batch, pairs, device, skip=True):
    import torch

    import saes
    from saes.training.trainer import Trainer

    tc = saes.TopKSAE(d, n, k, d_out=d, skip=skip, device=device)
    cfg = saes.TrainConfig(batch_size=batch, total_tokens=batch * len(pairs) * 100, init_rows=batch, device=device)
    t = Trainer([tc], cfg)
    rows = [torch.cat(p, -1) for p in pairs]  # [x | y], as the paired sources hand them over
    t.initialise(rows[0])
    return t.step, rows


def worker_sparsify(d, n, k, batch, pairs, device, skip=True):
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k, transcode=True, skip_connection=skip), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(n, dtype=torch.long, device=device)

    def step(pair):
        x, y = pair
        out = sae(x, y, dead_mask=since > DEAD_AFTER)
        (out.fvu + AUXK_ALPHA * out.auxk_loss).backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            fired = torch.zeros(n, dtype=torch.bool, device=device)
            fired[out.latent_indices.flatten()] = True
            since.add_(x.shape[0])
            since[fired] = 0

    return step, pairs


def worker_saelens(d, n, k, batch, pairs, device, skip=True):
    import torch
    from sae_lens import (
        SkipTranscoder,
        SkipTranscoderConfig,
        Transcoder,
        TranscoderConfig,
    )

    cls, cfg_cls = (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig)
    sae = cls(cfg_cls(d_in=d, d_sae=n, d_out=d, apply_b_dec_to_input=False, device=device))
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(n, device=device)

    def step(pair):
        x, y = pair
        feats = sae.encode(x)
        out = sae.decode(feats) + (x @ sae.W_skip.T if skip else 0)
        loss = (out - y).pow(2).sum(-1).mean() + L1 * (feats * sae.W_dec.norm(dim=1)).sum(-1).mean()
        with torch.no_grad():  # SAETrainer's firing statistics
            since.add_(1)
            since[(feats > 0).any(0)] = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return step, pairs


def worker_gemm(d, n, k, batch, pairs, device, skip=True):
    import torch

    W = torch.randn(d, n, device=device) / d**0.5
    out = torch.empty(batch, n, device=device)
    return (lambda pair: torch.mm(pair[0], W, out=out)), pairs


WORKERS = {
    "saes_skip": (worker_saes, {"skip": True}, "ours"),
    "saes": (worker_saes, {"skip": False}, "ours"),
    "sparsify_skip": (worker_sparsify, {"skip": True}, "peers"),
    "sparsify": (worker_sparsify, {"skip": False}, "peers"),
    "saelens_skip": (worker_saelens, {"skip": True}, "peers"),
    "gemm": (worker_gemm, {}, "ours"),
}


def run_worker(ns: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(ns.threads)
    torch.manual_seed(0)
    fn, kwargs, _ = WORKERS[ns.worker]
    d, n, k, batch = (int(v) for v in ns.shape.split(","))
    pairs = _pairs(ns.data, batch, ns.warmup + ns.steps, ns.device)
    step, items = fn(d, n, k, batch, pairs, ns.device, **kwargs)
    times = _time(step, items, ns.warmup, ns.device)
    print("RESULT " + json.dumps({"step_s_median": statistics.median(times), "step_s": times}))


# ------------------------------------------------------------------ driver


def _spawn(worker: str, shape: str, data: str, ns: argparse.Namespace) -> dict:
    python, env = worker_python_and_env(WORKERS[worker][2], ns.threads, ns.omp_wait_policy, ns.peers_python)
    if ns.device == "cpu":
        env["SPARSIFY_DISABLE_TRITON"] = "1"  # its Triton decoder would be tried on CPU tensors
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--shape", shape, "--data", data,
           "--steps", str(ns.steps), "--warmup", str(ns.warmup), "--threads", str(ns.threads), "--device", ns.device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir(), check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}


def _write_data(d: int, rows: int, path: str) -> None:
    """Residual-like inputs and MLP-like targets of the same rows."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(rows, d, generator=g) * torch.linspace(3.0, 0.3, d)) @ (torch.randn(d, d, generator=g) / d**0.5)
    y = torch.relu(x @ torch.randn(d, 4 * d, generator=g) / d**0.5) @ (torch.randn(4 * d, d, generator=g) / (4 * d)**0.5)
    save_file({"x": x.contiguous(), "y": y.contiguous()}, path)


def _ratios(res: dict) -> dict:
    def ms(name):
        return res.get(name, {}).get("step_ms")

    pairs = {"skip_vs_sparsify_skip": ("saes_skip", "sparsify_skip"), "vs_sparsify": ("saes", "sparsify"),
             "skip_vs_saelens_skip": ("saes_skip", "saelens_skip"), "skip_of_gemm": ("saes_skip", "gemm")}
    # Speed of ours relative to the other: > 1 means this toolkit's step is faster.
    return {key: round(ms(other) / ms(mine), 3) for key, (mine, other) in pairs.items() if ms(mine) and ms(other)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=None, help="d,n,k,batch (default: the CPU shapes, plus a GPU one on CUDA)")
    p.add_argument("--runners", nargs="*", default=list(WORKERS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--peers-python", default=PEERS_PYTHON)
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="PASSIVE: no OpenMP spin-waiting, which on a shared machine stalls every runner alike")
    for hidden in ("--worker", "--shape", "--data"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    ns = p.parse_args()
    ns.peers_python = os.path.abspath(ns.peers_python)  # the workers run in another directory
    if ns.device is None:
        import torch

        ns.device = "cuda" if torch.cuda.is_available() else "cpu"
    if ns.worker:
        run_worker(ns)
        return
    shapes = ns.shapes or (CPU_SHAPES + ([GPU_SHAPE] if ns.device == "cuda" else []))
    report: dict = {"benchmark": "step_transcoders", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "device": ns.device},
                    "threads": ns.threads, "steps": ns.steps, "warmup": ns.warmup, "rounds": ns.rounds,
                    "load_before": [round(v, 2) for v in os.getloadavg()], "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            d, n, k, batch = (int(v) for v in shape.split(","))
            data = os.path.join(tmp, f"pairs_{d}.safetensors")
            _write_data(d, batch * (ns.steps + ns.warmup), data)
            rounds: dict[str, list[dict]] = {r: [] for r in ns.runners}
            for _ in range(ns.rounds):
                for r in ns.runners:
                    rounds[r].append(_spawn(r, shape, data, ns))
            res = {}
            for r, recs in rounds.items():
                ok = [x for x in recs if "error" not in x]
                if not ok:
                    res[r] = {"error": recs[-1].get("error")}
                    continue
                best = min(x["step_s_median"] for x in ok)
                res[r] = {"step_ms": round(1e3 * best, 2), "tokens_per_s": round(batch / best),
                          "step_ms_rounds": [round(1e3 * x["step_s_median"], 1) for x in ok]}
            report["shapes"][shape] = {"d": d, "n": n, "k": k, "batch": batch, "runners": res, "ratios": _ratios(res)}
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
