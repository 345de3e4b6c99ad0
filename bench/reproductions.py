"""Each seed paper's defining claim, measured on planted ground truth over several seeds.

The world-model halves of the reproductions come from the CLI (`interp quickstart`,
`interp steer-eval`, `interp pkck`); this script covers what needs known features: for each
method, the figure the paper's claim is about, per seed, with its mean and a 95% t interval
over seeds. It prints JSON (REPRODUCTIONS.md quotes it).

    python bench/reproductions.py > bench/reproductions.json

About seven minutes on two CPU cores (BatchTopK is most of it).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Callable

import torch

import saes
from interp.interventions.patching import illusion_check
from probes.metrics import mean_interval
from saes import metrics, synthetic


def topk(seed: int) -> dict:
    """Gao et al. (2024): TopK fixes L0 at k and recovers the true features."""
    data = synthetic.superposition(n_features=96, d=32, n_samples=16_384, seed=seed, mean_active=3)
    sae = saes.TopKSAE(32, 192, k=3)
    saes.train(sae, data.x, saes.TrainConfig(batch_size=256, total_tokens=200_000, lr=3e-3, seed=seed), progress=False)
    control = saes.TopKSAE(32, 192, k=3)
    control.reset_parameters(torch.Generator().manual_seed(seed + 1000))
    z = sae.encode(data.x)
    return {"l0": metrics.l0(z), "mmcs": metrics.mmcs(data.directions, sae.W_dec),
            "hungarian_cosine": metrics.hungarian_cosine(data.directions, sae.W_dec),
            "mmcs_random_dictionary": metrics.mmcs(data.directions, control.W_dec)}


def auxk(seed: int) -> dict:
    """Gao et al. (2024): the auxiliary loss brings dead latents back; without it they stay dead."""
    data = synthetic.superposition(n_features=32, d=16, n_samples=8192, seed=seed, mean_active=3)
    killed = torch.arange(0, 32, 4)
    out = {}
    for on in (True, False):
        sae = saes.TopKSAE(16, 32, k=3)
        sae.reset_parameters(torch.Generator().manual_seed(seed + 7))
        with torch.no_grad():
            sae.W_enc[:, killed] *= 1e-3   # out of every top-k: only AuxK can reach them
        cfg = saes.TrainConfig(batch_size=256, total_tokens=102_400, lr=3e-3, init_weights=False,
                               dead_tokens=1024, auxk=on, seed=seed)
        saes.train(sae, data.x, cfg, progress=False)
        firing = (sae.encode(data.x)[:, killed] > 0).float().mean(0)
        out["revived_with_auxk" if on else "revived_without_auxk"] = float((firing > 0.005).float().mean())
    return out


def batchtopk(seed: int) -> dict:
    """Bussmann et al. (2024): at the same mean L0 (k = 4), BatchTopK reconstructs better than TopK
    (it spends more latents on busier tokens), and its learnt threshold keeps L0 at k at
    inference without the batch."""
    data = synthetic.superposition(n_features=64, d=24, n_samples=20_480, seed=seed, mean_active=4, exponent=0.8)
    train, test = data.x[:16_384], data.x[16_384:]   # held-out rows of the same features
    k = 4
    tk, btk = saes.TopKSAE(24, 128, k=k), saes.BatchTopKSAE(24, 128, k=k)
    saes.train([tk, btk], train, saes.TrainConfig(batch_size=256, total_tokens=200_000, lr=3e-3, seed=seed),
               progress=False)
    codes = btk.encode(test)
    per_token = (codes > 0).sum(-1).float()
    return {"fvu_topk": metrics.evaluate(tk, test)["fvu"], "fvu_batchtopk": metrics.evaluate(btk, test)["fvu"],
            "inference_l0_batchtopk": float(per_token.mean()),
            "per_token_l0_std_batchtopk": float(per_token.std())}


def matryoshka(seed: int) -> dict:
    """Bussmann et al. (2025): nested prefixes make parents keep their own latent, so far
    less absorption than TopK / BatchTopK at the same width and L0."""
    data = synthetic.tree(n_parents=6, children_per_parent=4, d=32, n_samples=16_000, seed=seed,
                          parent_prob=0.4, child_given_parent=0.8, child_parent_cos=0.5)
    m, p = data.directions.shape[0], len(data.parents)
    models = {"topk": saes.TopKSAE(32, m, k=3), "batchtopk": saes.BatchTopKSAE(32, m, k=3),
              "matryoshka": saes.MatryoshkaSAE(32, [p, m - p], k=3)}
    saes.train(list(models.values()), data.x, saes.TrainConfig(batch_size=256, total_tokens=200_000, lr=3e-3,
                                                               seed=seed), progress=False)
    return {f"absorption_{name}": metrics.absorption_rate(sae.encode(data.x), data.labels, data.hierarchy,
                                                          W_dec=sae.W_dec, directions=data.directions).rate
            for name, sae in models.items()}


def matching_pursuit(seed: int) -> dict:
    """Costa et al. (2025): the residual shrinks at every pursuit step, so running more
    steps at inference than in training keeps lowering the error (adaptive sparsity);
    a TopK SAE given a larger k gains far less."""
    data = synthetic.superposition(n_features=48, d=16, n_samples=8192, seed=seed, mean_active=5)
    mp, tk = saes.MPSAE(16, 48, k=4), saes.TopKSAE(16, 48, k=4)
    saes.train([mp, tk], data.x, saes.TrainConfig(batch_size=256, total_tokens=51_200, lr=3e-3, seed=seed),
               progress=False)
    x = data.x[-2048:]
    with torch.no_grad():
        fvu = {(name, k): metrics.evaluate(sae, x, k=k)["fvu"] for name, sae in (("mp", mp), ("topk", tk))
               for k in (4, 16)}
        norms = mp.pursuit(x, k=24, record_norms=True).norms
    return {"fvu_ratio_k16_over_k4_mp": fvu["mp", 16] / fvu["mp", 4],
            "fvu_ratio_k16_over_k4_topk": fvu["topk", 16] / fvu["topk", 4],
            "largest_residual_norm_increase": float((norms[:, 1:] - norms[:, :-1]).max())}


def snmf(seed: int) -> dict:
    """Shafran, Geiger & Geva (2025): semi-NMF with sparse mixed-sign features recovers the
    planted MLP factors (signs included)."""
    data = synthetic.mlp_factors(seed=seed)
    result = saes.SNMF(rank=6, sparsity=0.125, max_iter=300, patience=30, seed=0, n_init=4).fit(data.x)
    unit = torch.nn.functional.normalize
    cos = unit(data.directions, dim=1) @ unit(result.features, dim=1).T
    return {"worst_feature_best_cosine": float(cos.max(1).values.min()),
            "mean_best_cosine": float(cos.max(1).values.mean()),
            "relative_error": result.loss_history[result.best_iteration] / float(data.x.pow(2).sum())}


def illusion(seed: int) -> dict:
    """Makelov et al. (2024): a direction whose patch works only by pairing an unread
    coordinate that varies with a read one that is constant is an illusion; the check must
    call it so and pass the real feature's direction."""
    n, c = 400, 0.5
    g = torch.Generator().manual_seed(seed)
    x_base = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
    x_src = -x_base
    readout = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])   # e3 is never read

    def h(x: torch.Tensor) -> torch.Tensor:          # e1 the real feature, e2 constant, e3 a copy of it
        return torch.stack([x, torch.full((n,), c), x], dim=1)

    def run(act: torch.Tensor) -> torch.Tensor:
        return ((act @ readout.T).sum(1) * x_src).mean()

    illusory = illusion_check(run, h(x_base), h(x_src), torch.tensor([0.0, 1.0, 1.0]) / 2 ** 0.5, readout)
    real = illusion_check(run, h(x_base), h(x_src), torch.tensor([1.0, 0.0, 0.0]), readout)
    return {"illusory_effect": illusory.effect_direction, "illusory_rowspace_effect": illusory.effect_rowspace,
            "illusory_flagged": float(illusory.verdict == "illusory"),
            "real_effect": real.effect_direction, "real_passed": float(real.verdict == "faithful")}


EXPERIMENTS: dict[str, Callable[[int], dict]] = {
    "topk": topk, "auxk": auxk, "batchtopk": batchtopk, "matryoshka": matryoshka,
    "matching_pursuit": matching_pursuit, "snmf": snmf, "illusion": illusion}


def _num(x: float) -> float | None:
    """Rounded for reading; None where there is no value (an interval from one seed)."""
    return None if math.isnan(x) else round(float(x), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", default=None, help="comma-separated experiments (default: all)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.only.split(",") if args.only else list(EXPERIMENTS)
    report = {"seeds": seeds}
    for name in names:
        t0 = time.perf_counter()
        runs = [EXPERIMENTS[name](s) for s in seeds]
        summary = {}
        for key in runs[0]:
            iv = mean_interval([r[key] for r in runs], method="t")
            summary[key] = {"mean": _num(iv.mean), "lo": _num(iv.lo), "hi": _num(iv.hi),
                            "per_seed": [_num(r[key]) for r in runs]}
        report[name] = {"claim": " ".join(EXPERIMENTS[name].__doc__.split()), "figures": summary,
                        "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
