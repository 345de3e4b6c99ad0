"""Feature recovery on data with known directions (:mod:`saes.synthetic`).

Given activations ``x = codes @ directions`` with ``m`` planted unit directions, their
coefficients ``codes [N, m]`` and presence ``labels [N, m]``, :func:`feature_recovery` scores
a dictionary by:

* **MCC** (decoder): one-to-one Hungarian matching of true directions to decoder rows by
  cosine (:func:`saes.metrics.linear_sum_assignment` on ``-cos``), then the mean matched
  cosine; a true direction left without a latent (``m > d_sae``) counts 0. This is
  :func:`saes.metrics.hungarian_cosine`. ``mmcs`` (each direction's best row, repeats allowed)
  is reported beside it.
* **MCC** (codes): the identifiability literature's mean correlation coefficient: Pearson
  correlation of every latent's activation with every true coefficient over the rows,
  Hungarian matching on it, mean matched correlation.
* **Detection**: for each true feature and its decoder-matched latent, the latent "detects"
  the feature on a row when it fires (``z > 0``); precision = TP / (TP + FP), recall =
  TP / (TP + FN), F1 their harmonic mean; macro averages over features (an unmatched
  feature scores 0) and pooled (micro) figures.
* **Shrinkage**: per matched pair, the least-squares scale ``s = sum(a c) / sum(c^2)`` of the
  latent's contribution ``a = z ||d_j||`` against the true coefficient ``c`` over the rows
  (1 = magnitudes kept, < 1 = shrunk); the mean over matched features. Beside it the norm
  ratio ``mean(||x_hat|| / ||x||)`` over the rows with ``x != 0``.

Everything is accumulated batch by batch (sums and ``[m, d_sae]`` co-occurrence matrices),
so no dense ``[N, d_sae]`` code matrix is held.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from interp.errors import InterpError
from saes.metrics import cosine_matrix, linear_sum_assignment


@dataclass
class RecoveryResult:
    """What :func:`feature_recovery` measures (see the module docstring)."""

    mcc: float                 # decoder rows vs true directions, Hungarian-matched mean cosine
    mmcs: float                # mean over directions of the best cosine with any row
    mcc_codes: float           # latent activations vs true coefficients, matched mean Pearson r
    precision: float           # macro over true features, decoder-matched latents
    recall: float
    f1: float
    precision_micro: float
    recall_micro: float
    f1_micro: float
    shrinkage: float           # mean matched least-squares scale, 1 = no shrinkage
    norm_ratio: float          # mean ||x_hat|| / ||x||
    n_features: int
    d_sae: int
    matched_latent: list[int]  # per true feature, its latent (-1 when unmatched)
    matched_cosine: list[float]
    per_feature_f1: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def feature_recovery(sae: Any, x: torch.Tensor, directions: torch.Tensor, codes: torch.Tensor,
                     labels: torch.Tensor | None = None, batch_size: int = 4096) -> RecoveryResult:
    """How well ``sae`` recovers the planted ``directions [m, d]`` of ``x [N, d]``.

    ``codes [N, m]`` are the true coefficients; ``labels [N, m]`` their presence (default
    ``codes != 0``). ``sae`` needs ``encode_sparse``/``decode_sparse``/``W_dec``/``d_sae``.
    """
    x = torch.as_tensor(x).float()
    codes = torch.as_tensor(codes).double()
    labels = (codes != 0) if labels is None else torch.as_tensor(labels).bool()
    m = directions.shape[0]
    if x.shape[0] != codes.shape[0] or codes.shape != labels.shape or codes.shape[1] != m:
        raise InterpError(f"x {list(x.shape)}, codes {list(codes.shape)}, labels {list(labels.shape)} and "
                          f"directions {list(directions.shape)} disagree; give x [N, d], codes/labels [N, m], "
                          "directions [m, d]")
    if x.shape[1] != sae.d_in:
        raise InterpError(f"the SAE has d_in={sae.d_in} but x has d={x.shape[1]}")
    n_sae = int(sae.d_sae)
    dec_norm = sae.W_dec.detach().double().norm(dim=-1).cpu()
    s = {"z": torch.zeros(n_sae, dtype=torch.float64), "z2": torch.zeros(n_sae, dtype=torch.float64),
         "cz": torch.zeros(m, n_sae, dtype=torch.float64), "tp": torch.zeros(m, n_sae, dtype=torch.float64),
         "on": torch.zeros(n_sae, dtype=torch.float64)}
    ratio_sum, ratio_rows = 0.0, 0  # rows with x = 0 have no norm ratio
    device = getattr(sae, "device", torch.device("cpu"))
    for a in range(0, x.shape[0], batch_size):
        xb = x[a: a + batch_size]
        v, i = sae.encode_sparse(xb.to(device))
        x_hat = sae.decode_sparse(v, i).float().cpu()
        norm = xb.norm(dim=-1)
        ratio_sum += float((x_hat.norm(dim=-1) / norm.clamp_min(1e-30))[norm > 0].double().sum())
        ratio_rows += int((norm > 0).sum())
        z = torch.zeros(xb.shape[0], n_sae, dtype=torch.float64).scatter_add_(1, i.cpu(), v.double().cpu())
        on = (z > 0).double()
        c, lab = codes[a: a + batch_size], labels[a: a + batch_size].double()
        s["z"] += z.sum(0)
        s["z2"] += z.pow(2).sum(0)
        s["cz"] += c.T @ z
        s["tp"] += lab.T @ on
        s["on"] += on.sum(0)
    n = x.shape[0]
    # decoder matching
    cos = cosine_matrix(directions, sae.W_dec).numpy()
    rows, cols = linear_sum_assignment(-cos)
    match = torch.full((m,), -1, dtype=torch.int64)
    match[torch.as_tensor(rows)] = torch.as_tensor(cols)
    matched_cos = torch.zeros(m, dtype=torch.float64)
    matched_cos[torch.as_tensor(rows)] = torch.as_tensor(cos[rows, cols])
    # code correlations
    c_sum, c2_sum = codes.sum(0), codes.pow(2).sum(0)
    cov = s["cz"] / n - (c_sum / n)[:, None] * (s["z"] / n)[None, :]
    var_c = (c2_sum / n - (c_sum / n).pow(2)).clamp_min(0)
    var_z = (s["z2"] / n - (s["z"] / n).pow(2)).clamp_min(0)
    corr = (cov / (var_c[:, None].sqrt() * var_z[None, :].sqrt()).clamp_min(1e-30)).nan_to_num(0.0)
    crow, ccol = linear_sum_assignment(-corr.numpy())
    mcc_codes = float(corr[torch.as_tensor(crow), torch.as_tensor(ccol)].sum() / m)
    # detection by the decoder-matched latent
    pos = labels.double().sum(0)
    has = match >= 0
    j = match.clamp_min(0)
    tp = torch.where(has, s["tp"][torch.arange(m), j], torch.zeros(m, dtype=torch.float64))
    fired = torch.where(has, s["on"][j], torch.zeros(m, dtype=torch.float64))
    precision = torch.where(fired > 0, tp / fired.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(pos > 0, tp / pos.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-30),
                     torch.zeros_like(tp))
    p_micro = float(tp.sum() / fired.sum().clamp_min(1))
    r_micro = float(tp.sum() / pos.sum().clamp_min(1))
    # shrinkage of the matched latents
    scale = s["cz"][torch.arange(m), j] * dec_norm[j] / c2_sum.clamp_min(1e-30)
    present = has & (c2_sum > 0)
    return RecoveryResult(
        mcc=float(matched_cos.sum() / m), mmcs=float(torch.as_tensor(cos).max(1).values.mean()), mcc_codes=mcc_codes,
        precision=float(precision.mean()), recall=float(recall.mean()), f1=float(f1.mean()),
        precision_micro=p_micro, recall_micro=r_micro,
        f1_micro=2 * p_micro * r_micro / (p_micro + r_micro) if p_micro + r_micro > 0 else 0.0,
        shrinkage=float(scale[present].mean()) if bool(present.any()) else float("nan"),
        norm_ratio=ratio_sum / max(ratio_rows, 1), n_features=m, d_sae=n_sae, matched_latent=match.tolist(),
        matched_cosine=matched_cos.tolist(), per_feature_f1=f1.tolist(),
    )


def recovery_of(sae: Any, data: Any, batch_size: int = 4096) -> RecoveryResult:
    """:func:`feature_recovery` on a :class:`saes.synthetic.SyntheticData`."""
    return feature_recovery(sae, data.x, data.directions, data.codes, data.labels, batch_size)
