"""Matching-pursuit encode: this toolkit's MPSAE vs SAELens's MatchingPursuitSAE at k=32.

Both encode the same activations with the same unit-norm dictionary for a fixed 32 steps
(ReLU codes, atoms may be picked again; SAELens with ``residual_threshold=0`` and
``stop_on_duplicate_support=False``, which is that algorithm). Runners:

* ``saes``: :meth:`saes.MPSAE.encode` in steady state: the Gram matrix ``D D^T`` is built
  once per dictionary and cached, as it is for every encode after the first;
* ``saes_cold``: the same, timing the first encode of a dictionary (Gram matrix built in
  the timed call);
* ``saes_plain``: ``gram=False``, a dense ``[N, d] @ [d, n]`` product per step (SAELens's
  algorithm, with this toolkit's selection);
* ``saelens``: ``MatchingPursuitSAE.encode``.

The codes are compared to SAELens's: every runner reports how many tokens get exactly
the same atoms and the largest coefficient difference (each runner saves its codes in a
canonical sparse form, ``[N, k]`` atoms in increasing order with their summed
coefficients, so files stay small at wide dictionaries). On CUDA every encode is timed to
the end of its kernels. Peers run as in ``bench/sae_step.py`` (``--peers-python``,
``--peers-path``). Prints one JSON document.

Usage::

    python bench/mp_encode.py
    python bench/mp_encode.py --shapes 512,8192,32,2048 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

PEERS_PYTHON = "/tmp/peers-venv/bin/python"

from workers import worker_python_and_env

SHAPES = ["512,8192,32,2048", "768,16384,32,2048"]


def _load(path: str, device: str):
    from safetensors.torch import load_file

    t = load_file(path)
    return t["x"].to(device), t["W_dec"].to(device), t["b_dec"].to(device)


def _dense(values, indices, n):
    import torch

    z = torch.zeros(values.shape[0], n, dtype=torch.float32, device=values.device)
    return z.scatter_add_(1, indices, values.float())


def _canonical(z, k: int):
    """Dense codes ``z [N, n]`` (at most ``k`` non-zeros a row) as ``(atoms, coefficients)
    [N, k]``: the non-zero atoms in increasing order, padded with ``n`` and 0."""
    import torch

    n = z.shape[1]
    top = torch.topk(z.abs(), min(k, n), dim=1).indices
    vals = z.gather(1, top)
    atoms = torch.where(vals != 0, top, torch.full_like(top, n))
    atoms, order = atoms.sort(dim=1)
    return atoms.cpu().contiguous(), vals.gather(1, order).float().cpu().contiguous()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _yardstick(x, W_dec):
    """The dense score product ``[N, d] @ [d, n]`` (one plain pursuit step's GEMM), timed
    after every encode in every runner's process, so that encode cost can be expressed
    in its units, robust to the machine load of the moment."""
    import torch

    Wt = W_dec.T.contiguous()
    out = torch.empty(x.shape[0], W_dec.shape[0], device=x.device)

    def run() -> float:
        t0 = time.perf_counter()
        torch.mm(x, Wt, out=out)
        _sync(x.device.type)
        return time.perf_counter() - t0

    return run


def worker_saes(path, k, repeats, device, gram="auto", cold=False):
    import torch

    import saes
    from saes.kernels import matching_pursuit as kmp

    x, W_dec, b_dec = _load(path, device)
    n, d = W_dec.shape
    sae = saes.MPSAE(d, n, k, gram=gram, device=device)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    sae.eval()
    gemm = _yardstick(x, W_dec)
    times = []
    for _ in range(repeats + 1):
        if cold:
            kmp.clear_gram_cache()
        t0 = time.perf_counter()
        with torch.no_grad():
            v, i = sae.encode_sparse(x)
        _sync(device)
        times.append((time.perf_counter() - t0, gemm()))
    return times[1:], _canonical(_dense(v, i, n), k)


def worker_saelens(path, k, repeats, device):
    import torch
    from sae_lens import MatchingPursuitSAE, MatchingPursuitSAEConfig

    x, W_dec, b_dec = _load(path, device)
    n, d = W_dec.shape
    sae = MatchingPursuitSAE(MatchingPursuitSAEConfig(
        d_in=d, d_sae=n, device=device, residual_threshold=0.0, max_iterations=k, stop_on_duplicate_support=False,
    ))
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
    gemm = _yardstick(x, W_dec)
    times, z = [], None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            z = sae.encode(x)
        _sync(device)
        times.append((time.perf_counter() - t0, gemm()))
    return times[1:], _canonical(z, k)


WORKERS = {
    "saes": (worker_saes, {}, "ours"),
    "saes_cold": (worker_saes, {"cold": True}, "ours"),
    "saes_plain": (worker_saes, {"gram": False}, "ours"),
    "saelens": (worker_saelens, {}, "peers"),
}


def measure_worker(worker: str, data: str, codes: str, k: int, repeats: int, device: str) -> dict:
    """One runner's encode times (and its codes, saved to ``codes``)."""
    from safetensors.torch import save_file

    fn, kwargs, _ = WORKERS[worker]
    pairs, (atoms, coefs) = fn(data, k, repeats, device, **kwargs)
    save_file({"atoms": atoms, "coefficients": coefs}, codes)
    times = [t for t, _ in pairs]
    return {
        "encode_s": times, "encode_s_median": statistics.median(times),
        "encode_over_gemm": statistics.median(t / g for t, g in pairs),
    }


def run_worker(ns: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(ns.threads)
    print("RESULT " + json.dumps(measure_worker(ns.worker, ns.data, ns.codes, ns.k, ns.repeats, ns.device)))


def _spawn(worker: str, data: str, codes: str, k: int, ns: argparse.Namespace) -> dict:
    side = WORKERS[worker][2]
    python, env = worker_python_and_env(side, ns.threads, ns.omp_wait_policy, ns.peers_python,
                                        getattr(ns, "peers_path", None))
    cmd = [python, str(Path(__file__).resolve()), "--worker", worker, "--data", data, "--codes", codes, "--k", str(k),
           "--repeats", str(ns.repeats), "--threads", str(ns.threads), "--device", ns.device]
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


def _in_process(worker: str, data: str, codes: str, k: int, ns: argparse.Namespace) -> dict:
    """The same record as :func:`_spawn`, measured in this process (tiny checks only)."""
    try:
        return measure_worker(worker, data, codes, k, ns.repeats, ns.device)
    except Exception as err:  # noqa: BLE001  (reported like a failed child: one runner cannot stop the rest)
        return {"error": [f"{type(err).__name__}: {err}"]}


def _write_data(d: int, n: int, N: int, path: str) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    W = torch.randn(n, d, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    # Activations built from a few atoms plus noise, like the data MP is meant for.
    idx = torch.randint(0, n, (N, 16), generator=g)
    coef = torch.rand(N, 16, generator=g) * 3
    x = (coef[..., None] * W[idx]).sum(1) + 0.3 * torch.randn(N, d, generator=g)
    save_file({"x": x.contiguous(), "W_dec": W.contiguous(), "b_dec": (0.1 * torch.randn(d, generator=g)).contiguous()}, path)


def _compare(a_path: str, b_path: str) -> dict:
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    same_atoms = (a["atoms"] == b["atoms"]).all(dim=1)
    va, vb = a["coefficients"], b["coefficients"]
    diff = (va - vb).abs()[same_atoms]
    return {
        "tokens_same_atoms": float(same_atoms.float().mean()),
        "max_abs_coef_diff": float(diff.max()) if diff.numel() else None,
        "codes_allclose_1e-4": bool(same_atoms.all()) and bool((diff <= 1e-4 + 1e-4 * vb.abs()[same_atoms]).all()),
    }


def measure_shape(shape: str, runners: list[str], ns: argparse.Namespace, tmp: str, *, in_process: bool = False,
                  on_runner=None) -> dict:
    """Every runner at ``shape`` (``d,n,k,batch``) over ``ns.rounds`` rounds, codes compared
    with SAELens's; ``in_process`` measures ours in this process (tiny checks).
    ``on_runner(partial_result)`` is called after each runner."""
    d, n, k, N = (int(v) for v in shape.split(","))
    unknown = sorted(set(runners) - set(WORKERS))
    if unknown:
        raise ValueError(f"unknown runners {unknown}; known: {sorted(WORKERS)}")
    data = os.path.join(tmp, f"mp_{d}_{n}.safetensors")
    _write_data(d, n, N, data)
    recs: dict[str, list[dict]] = {r: [] for r in runners}
    codes = {r: os.path.join(tmp, f"codes_{r}_{d}_{n}.safetensors") for r in runners}
    result: dict = {"d": d, "n": n, "k": k, "batch": N, "runners": {}, "ratios": {}}
    for _ in range(ns.rounds):
        for r in runners:
            ours = WORKERS[r][2] == "ours"
            run = _in_process if in_process and ours else _spawn
            recs[r].append(run(r, data, codes[r], k, ns))
            result["runners"], result["ratios"] = _results(recs, codes, N)
            if on_runner is not None:
                on_runner(result)
    return result


def _results(recs: dict[str, list[dict]], codes: dict[str, str], N: int) -> tuple[dict, dict]:
    res = {}
    for r, rr in recs.items():
        ok = [x for x in rr if "error" not in x]
        if not ok:
            if rr:
                res[r] = {"error": rr[-1].get("error")}
            continue
        best = min(x["encode_s_median"] for x in ok)
        res[r] = {"tokens_per_s": N / best, "encode_ms": 1e3 * best,
                  "encode_ms_rounds": [round(1e3 * x["encode_s_median"], 1) for x in ok],
                  # Load-robust: encode time in units of one [N, d] @ [d, n] product.
                  "encode_over_gemm": round(min(x["encode_over_gemm"] for x in ok), 3)}
    ratios = {}
    lens = res.get("saelens", {})
    if "tokens_per_s" not in lens:
        return res, ratios
    for r, rec in res.items():
        if r != "saelens" and "tokens_per_s" in rec:
            rec["codes_vs_saelens"] = _compare(codes[r], codes["saelens"])
            ratios[f"{r}_vs_saelens"] = round(rec["tokens_per_s"] / lens["tokens_per_s"], 2)
            ratios[f"{r}_vs_saelens_gemm_units"] = round(lens["encode_over_gemm"] / rec["encode_over_gemm"], 2)
    return res, ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=SHAPES, help="d,n,k,batch")
    p.add_argument("--runners", nargs="*", default=["saes", "saes_cold", "saes_plain", "saelens"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--peers-python", default=PEERS_PYTHON)
    p.add_argument("--peers-path", default=None, help="a folder of peer packages for the peers' PYTHONPATH")
    p.add_argument("--runner-timeout", type=float, default=None, help="seconds before a runner is given up")
    # On a shared, oversubscribed machine OpenMP's default spin-waiting makes every
    # parallel region wait for a preempted partner thread (a 2-thread run became 4-20x
    # slower than a 1-thread one here); PASSIVE waiting removes that for every runner
    # alike. "default" leaves the variable as it is.
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--codes", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=32, help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker:
        run_worker(ns)
        return
    report: dict = {
        "benchmark": "mp_encode",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": ns.device},
        "threads": ns.threads, "omp_wait_policy": ns.omp_wait_policy, "repeats": ns.repeats, "rounds": ns.rounds,
        "load_before": [round(v, 2) for v in os.getloadavg()], "shapes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ns.shapes:
            report["shapes"][shape] = measure_shape(shape, ns.runners, ns, tmp)
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
