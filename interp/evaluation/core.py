"""Core SAE metrics on a labelled evaluation set, each with a 95% interval over documents.

:func:`evaluate_core` reads a :class:`~interp.evaluation.dataset.LabelledActivations` and
reports, in SAEBench's "core" families:

* reconstruction: FVU and explained variance, **centred**::

      FVU = sum_rows ||x - x_hat||^2 / sum_rows ||x - mean(x)||^2,   EV = 1 - FVU

  where ``mean(x)`` is the per-dimension mean over the evaluation set (so a large constant
  offset, which any bias reproduces, earns no credit). The uncentred variant
  ``1 - sum ||x - x_hat||^2 / sum ||x||^2`` is reported as ``explained_variance_uncentred``
  for comparison only. MSE (``sum ||x - x_hat||^2 / (n d)``, mean over rows and dimensions,
  as SAEBench), mean cosine of ``x`` and ``x_hat``;
* shrinkage: mean ``||x||``, mean ``||x_hat||``, ``l2_ratio = mean(||x_hat|| / ||x||)`` and
  ``relative_reconstruction_bias = mean ||x_hat||^2 / mean <x, x_hat>`` (Gated SAE paper,
  eq. 10; 1 = no shrinkage, < 1 = shrunk);
* sparsity: mean L0 (non-zero latents per token) with its quantiles, mean L1;
* latent density: per latent the share of tokens it fires on; dead latents (never fire on
  the set), dense latents (fire on more than ``dense_threshold`` of tokens, 10% by
  default), and a histogram of ``log10(density)`` of the live latents;
* model behaviour, when a model is given: the reconstruction spliced in at the set's hook
  at every evaluated position (as :func:`interp.evaluation.splice.evaluate_sae` does),
  ``ce_loss_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)``, and the KL per
  token **KL(clean || spliced)** of the next-token distributions, with
  ``kl_div_score = (KL_zero - KL_spliced) / KL_zero`` (SAEBench's normalisation).
  CE is averaged over every real next-token prediction, KL over every real position.

Intervals: a percentile bootstrap over documents (``n_boot`` resamples of whole documents
with replacement, fixed seed); each resample recomputes the metric from its summed parts
(a ratio of sums stays a ratio of sums), so rows of one text never count as independent.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.errors import InterpError
from interp.evaluation.dataset import LabelledActivations

DENSITY_EDGES = tuple(x / 2 for x in range(-14, 1))  # log10 density bins: 1e-7 .. 1, half-decade wide
L0_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the whole set and its bootstrap interval over documents."""

    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


class DocBootstrap:
    """Resampling documents with replacement, as a ``[n_boot, n_docs]`` matrix of counts.

    A per-row quantity is summed per document once; each resample's total is then a
    matrix product, so any metric built from sums is recomputed exactly per resample.

    >>> b = DocBootstrap(torch.tensor([0, 0, 1]), n_boot=200)
    >>> e = b.estimate(lambda s, n: s / n, s=torch.tensor([1.0, 1.0, 4.0]), n=torch.ones(3))
    >>> e.value, e.lo <= 2.0 <= e.hi
    (2.0, True)
    """

    def __init__(self, doc: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> None:
        if not 0 < level < 1:
            raise InterpError(f"level={level}: an interval's coverage lies strictly between 0 and 1")
        doc = torch.as_tensor(doc, dtype=torch.int64).reshape(-1)
        self.ids, self.inverse = doc.unique(return_inverse=True)
        self.n_docs, self.n_boot, self.level = len(self.ids), int(n_boot), level
        g = torch.Generator().manual_seed(seed)
        pick = torch.randint(max(self.n_docs, 1), (self.n_boot, self.n_docs), generator=g)
        self.counts = torch.zeros(self.n_boot, self.n_docs, dtype=torch.float64).scatter_add_(
            1, pick, torch.ones_like(pick, dtype=torch.float64))

    def per_doc(self, values: torch.Tensor) -> torch.Tensor:
        """``[n_docs, ...]`` float64 sums of per-row ``values [n, ...]``."""
        v = torch.as_tensor(values).double()
        return torch.zeros(self.n_docs, *v.shape[1:], dtype=torch.float64).index_add_(0, self.inverse, v)

    def estimate(self, fn: Callable[..., torch.Tensor | float], **rows: torch.Tensor) -> Estimate:
        """``fn(**totals)`` on the whole set and its interval; ``rows`` are per-row tensors."""
        return self.estimate_docs(fn, **{k: self.per_doc(v) for k, v in rows.items()})

    def estimate_docs(self, fn: Callable[..., torch.Tensor | float], **docs: torch.Tensor) -> Estimate:
        """As :meth:`estimate` from per-document sums ``[n_docs, ...]``. ``fn`` gets totals with
        a leading resample dimension for the interval, so write it with ``...`` / ``dim=-1``."""
        full = {k: v.sum(0) for k, v in docs.items()}
        boot = {k: (self.counts @ v.reshape(self.n_docs, -1)).reshape(self.n_boot, *v.shape[1:]) for k, v in docs.items()}
        value = float(torch.as_tensor(fn(**full)))
        b = torch.as_tensor(fn(**boot), dtype=torch.float64).reshape(-1)
        b = b[b.isfinite()]
        if self.n_docs < 2 or b.numel() == 0:
            return Estimate(value, math.nan, math.nan)
        q = torch.tensor([(1 - self.level) / 2, (1 + self.level) / 2], dtype=torch.float64)
        lo, hi = torch.quantile(b, q).tolist()
        return Estimate(value, lo, hi)


@dataclass
class CoreResult:
    """What :func:`evaluate_core` measures (see the module docstring for every formula)."""

    hook: str
    n_tokens: int
    n_docs: int
    d_sae: int
    fvu: Estimate
    explained_variance: Estimate
    explained_variance_uncentred: Estimate
    mse: Estimate
    cossim: Estimate
    l2_norm_in: Estimate
    l2_norm_out: Estimate
    l2_ratio: Estimate
    relative_reconstruction_bias: Estimate
    l0: Estimate
    l1: Estimate
    l0_quantiles: dict[str, float]
    feature_density: torch.Tensor  # [d_sae] share of tokens each latent fires on
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    freq_over_1_percent: float
    freq_over_10_percent: float
    normalized_freq_over_1_percent: float
    normalized_freq_over_10_percent: float
    density_histogram: dict[str, list[float]]
    average_max_encoder_cosine_sim: float
    average_max_decoder_cosine_sim: float
    splice: dict[str, Estimate | float] = field(default_factory=dict)  # empty without a model

    @property
    def dead_latents(self) -> torch.Tensor:
        """Indices of the latents that never fire on the set."""
        return (self.feature_density == 0).nonzero()[:, 0]

    @property
    def dense_latents(self) -> torch.Tensor:
        """Indices of the latents firing on more than ``dense_threshold`` of tokens."""
        return (self.feature_density > self.dense_threshold).nonzero()[:, 0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every Estimate as ``{value, lo, hi}``, densities as a list."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, Estimate):
                out[k] = v.to_dict()
            elif isinstance(v, torch.Tensor):
                out[k] = v.tolist()
            elif k == "splice":
                out[k] = {s: (e.to_dict() if isinstance(e, Estimate) else e) for s, e in v.items()}
            else:
                out[k] = v
        return out

    def saebench_metrics(self) -> dict[str, dict[str, float]]:
        """``eval_result_metrics`` in SAEBench's core layout (values only; intervals are in
        :meth:`to_dict`). Model categories are left out when no model was spliced."""
        m: dict[str, dict[str, float]] = {}
        s = self.splice
        if s:
            m["model_behavior_preservation"] = {"kl_div_score": _v(s["kl_div_score"]),
                                                "kl_div_with_ablation": _v(s["kl_zero_ablation"]),
                                                "kl_div_with_sae": _v(s["kl_spliced"])}
            m["model_performance_preservation"] = {"ce_loss_score": _v(s["ce_loss_recovered"]),
                                                   "ce_loss_with_ablation": _v(s["ce_zero_ablation"]),
                                                   "ce_loss_with_sae": _v(s["ce_spliced"]),
                                                   "ce_loss_without_sae": _v(s["ce_clean"])}
        m["reconstruction_quality"] = {"explained_variance": self.explained_variance.value,
                                       "explained_variance_uncentred": self.explained_variance_uncentred.value,
                                       "fvu": self.fvu.value, "mse": self.mse.value, "cossim": self.cossim.value}
        m["shrinkage"] = {"l2_norm_in": self.l2_norm_in.value, "l2_norm_out": self.l2_norm_out.value,
                          "l2_ratio": self.l2_ratio.value,
                          "relative_reconstruction_bias": self.relative_reconstruction_bias.value}
        m["sparsity"] = {"l0": self.l0.value, "l1": self.l1.value}
        m["token_stats"] = {"total_tokens_eval_reconstruction": self.n_tokens,
                            "total_tokens_eval_sparsity_variance": self.n_tokens}
        m["misc_metrics"] = {
            "freq_over_1_percent": self.freq_over_1_percent, "freq_over_10_percent": self.freq_over_10_percent,
            "normalized_freq_over_1_percent": self.normalized_freq_over_1_percent,
            "normalized_freq_over_10_percent": self.normalized_freq_over_10_percent,
            "average_max_encoder_cosine_sim": self.average_max_encoder_cosine_sim,
            "average_max_decoder_cosine_sim": self.average_max_decoder_cosine_sim,
            "frac_alive": 1.0 - self.dead_fraction, "dense_fraction": self.dense_fraction,
        }
        return m

    def to_saebench(self, sae: Any = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
        """The result as a SAEBench ``core`` JSON object (intervals and densities go to
        ``eval_result_unstructured``). SAEBench's plots need ``model_performance_preservation``,
        so evaluate with a model when the file is meant for them."""
        unstructured = {"intervals": {k: [v.lo, v.hi] for k, v in self.__dict__.items() if isinstance(v, Estimate)},
                        "splice_intervals": {k: [v.lo, v.hi] for k, v in self.splice.items() if isinstance(v, Estimate)},
                        "l0_quantiles": self.l0_quantiles, "density_histogram": self.density_histogram,
                        "dense_threshold": self.dense_threshold}
        details = [{"index": i, "feature_density": float(d)} for i, d in enumerate(self.feature_density.tolist())]
        cfg = {"hook_name": self.hook, "n_tokens": self.n_tokens, "n_docs": self.n_docs, **(config or {})}
        return saebench_envelope("core", cfg, self.saebench_metrics(), details, unstructured, sae)

    def table(self) -> str:
        """The headline numbers with their intervals, one per line."""
        rows = [(k, str(v)) for k, v in self.__dict__.items() if isinstance(v, Estimate)]
        rows += [(k, str(v)) for k, v in self.splice.items()]
        rows += [("dead_fraction", f"{self.dead_fraction:.4g}"), ("dense_fraction", f"{self.dense_fraction:.4g}")]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# Our architecture names -> the names SAEBench's plots key their markers and colours on.
SAEBENCH_ARCHITECTURES = {"relu": "standard", "topk": "topk", "batchtopk": "batch_topk", "jumprelu": "jumprelu",
                          "matryoshka": "matryoshka_batch_topk", "gated": "gated", "mp": "mp"}


def saebench_sae_cfg(sae: Any) -> dict[str, Any]:
    """A SAELens-like ``sae_cfg_dict`` for a result file: what SAEBench's plots read
    (``architecture``, ``d_sae``) plus the origin the SAE's metadata records."""
    if sae is None:
        return {"architecture": "unknown", "d_sae": 0}
    arch = str(getattr(sae, "architecture", "unknown"))
    meta = getattr(sae, "metadata", None) or {}
    cfg: dict[str, Any] = {"architecture": SAEBENCH_ARCHITECTURES.get(arch, arch), "d_in": int(sae.d_in),
                           "d_sae": int(sae.d_sae), "hook_name": meta.get("hook_name"), "model_name": meta.get("model_name")}
    arch_config = getattr(sae, "arch_config", None)
    if callable(arch_config):
        cfg.update({k: v for k, v in arch_config().items() if isinstance(v, (int, float, str, bool, list))})
    return cfg


def saebench_envelope(eval_type_id: str, config: dict[str, Any], metrics: dict[str, dict[str, Any]],
                      details: list[dict[str, Any]], unstructured: Any, sae: Any = None) -> dict[str, Any]:
    """One SAEBench result object: ``eval_type_id``, ``eval_config``, ``eval_id``,
    ``datetime_epoch_millis``, ``eval_result_metrics`` (categories of flat floats),
    ``eval_result_details``, ``eval_result_unstructured``, ``sae_bench_commit_hash``,
    ``sae_lens_id`` / ``sae_lens_release_id`` / ``sae_lens_version`` (None: not SAELens),
    ``sae_cfg_dict``. SAEBench's plots find files named ``<sae>_eval_results.json`` under a
    folder whose path names the eval type (``core``, ``sparse_probing``, ...)."""
    import time
    import uuid

    for category, values in metrics.items():
        nested = [k for k, v in values.items() if isinstance(v, dict)]
        if nested:
            raise InterpError(f"metric category {category!r} holds nested {nested[0]!r}; SAEBench metrics are flat")
    return {
        "eval_type_id": eval_type_id, "eval_config": config, "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000), "eval_result_metrics": metrics,
        "eval_result_details": details, "eval_result_unstructured": unstructured,
        "sae_bench_commit_hash": "not-sae-bench: interp.evaluation", "sae_lens_id": None,
        "sae_lens_release_id": None, "sae_lens_version": None, "sae_cfg_dict": saebench_sae_cfg(sae),
    }


def _v(e: Estimate | float) -> float:
    return e.value if isinstance(e, Estimate) else float(e)


# ---------------------------------------------------------------- per-row statistics
@torch.no_grad()
def encode_rows(sae: Any, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Per-row reconstruction and sparsity parts of ``sae`` on ``acts [n, d]`` (float64 where summed).

    Returns ``x_hat [n, d]`` (float32), ``l0``, ``l1`` ``[n]`` and ``fired [d_sae]`` (tokens each
    latent fires on). Only the k non-zero codes per row are kept, never a dense ``[n, d_sae]``.
    """
    device = getattr(sae, "device", torch.device("cpu"))
    x_hat, l0, l1 = [], [], []
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    for a in range(0, acts.shape[0], batch_size):
        x = acts[a: a + batch_size].to(device, torch.float32)
        v, i = sae.encode_sparse(x)
        x_hat.append(sae.decode_sparse(v, i).float().cpu())
        on = v != 0
        l0.append(on.sum(-1).double().cpu())
        l1.append(v.abs().sum(-1).double().cpu())
        fired.index_add_(0, i[on].cpu(), torch.ones(int(on.sum()), dtype=torch.float64))
    if not x_hat:
        raise InterpError("the evaluation set has no rows; build it from at least one document")
    return {"x_hat": torch.cat(x_hat), "l0": torch.cat(l0), "l1": torch.cat(l1), "fired": fired}


def reconstruction_estimates(x: torch.Tensor, x_hat: torch.Tensor, boot: DocBootstrap) -> dict[str, Estimate]:
    """FVU, EV (centred and uncentred), MSE, cosine and shrinkage of ``x_hat`` against ``x``."""
    x, x_hat = x.double(), x_hat.double()
    n, d = x.shape
    err = (x - x_hat).pow(2).sum(-1)
    sq = x.pow(2).sum(-1)
    norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
    cos = (x * x_hat).sum(-1) / (norm_in * norm_out).clamp_min(1e-30)
    ratio = norm_out / norm_in.clamp_min(1e-30)
    one = torch.ones(n, dtype=torch.float64)

    def fvu(err: torch.Tensor, sq: torch.Tensor, sx: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return err / (sq - sx.pow(2).sum(-1) / n).clamp_min(1e-30)

    def mean(s: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return s / n

    parts = {"err": err, "sq": sq, "sx": x, "n": one}
    out = {
        "fvu": boot.estimate(fvu, **parts),
        "explained_variance": boot.estimate(lambda **p: 1 - fvu(**p), **parts),
        "explained_variance_uncentred": boot.estimate(lambda err, sq: 1 - err / sq.clamp_min(1e-30), err=err, sq=sq),
        "mse": boot.estimate(lambda s, n: s / (n * d), s=err, n=one),
        "cossim": boot.estimate(mean, s=cos, n=one),
        "l2_norm_in": boot.estimate(mean, s=norm_in, n=one),
        "l2_norm_out": boot.estimate(mean, s=norm_out, n=one),
        "l2_ratio": boot.estimate(mean, s=ratio, n=one),
        "relative_reconstruction_bias": boot.estimate(lambda a, b: a / b, a=x_hat.pow(2).sum(-1), b=(x * x_hat).sum(-1)),
    }
    return out


def density_summary(fired: torch.Tensor, n_tokens: int, dense_threshold: float = 0.1) -> dict[str, Any]:
    """Latent densities and what SAEBench derives from them, plus a ``log10`` histogram."""
    density = (fired / max(n_tokens, 1)).float()
    alive = density > 0
    total = float(density.sum()) or 1.0
    logs = density[alive].double().log10().clamp(DENSITY_EDGES[0], DENSITY_EDGES[-1])
    counts = torch.histc(logs, bins=len(DENSITY_EDGES) - 1, min=DENSITY_EDGES[0], max=DENSITY_EDGES[-1])
    return {
        "feature_density": density,
        "dead_fraction": float((~alive).float().mean()),
        "dense_fraction": float((density > dense_threshold).float().mean()),
        "freq_over_1_percent": float((density > 0.01).float().mean()),
        "freq_over_10_percent": float((density > 0.1).float().mean()),
        "normalized_freq_over_1_percent": float(density[density > 0.01].sum()) / total,
        "normalized_freq_over_10_percent": float(density[density > 0.1].sum()) / total,
        "density_histogram": {"log10_edges": list(DENSITY_EDGES), "counts": [int(c) for c in counts.tolist()],
                              "dead": int((~alive).sum())},
    }


@torch.no_grad()
def max_other_cosine(rows: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """``[m]``: each row's largest cosine with any other row (chunked: never an ``m x m`` matrix)."""
    w = rows.detach().float().cpu()
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(w.shape[0])
    for a in range(0, w.shape[0], chunk):
        c = w[a: a + chunk] @ w.T
        c[torch.arange(c.shape[0]), torch.arange(a, a + c.shape[0])] = -math.inf
        out[a: a + chunk] = c.max(-1).values
    return out


# ---------------------------------------------------------------- splicing per document
@torch.no_grad()
def splice_per_doc(model: Any, sae: Any, data: LabelledActivations, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per document ``[n_docs]`` sums of CE (clean, spliced, zero-ablated), KL(clean || spliced)
    and KL(clean || zero-ablated), with the counts they average over.

    The same three runs and the same positions as :func:`interp.evaluation.splice.evaluate_sae`
    (its totals divided by the counts give its figures), kept per document for the bootstrap.
    """
    from interp.evaluation.losses import next_token_nll, token_kl
    from interp.evaluation.splice import (
        check_sae_fits,
        splice_hooks,
        splice_of,
        zero_hooks,
    )

    if not data.hook:
        raise InterpError("the set records no hook, so there is nowhere to splice; build it with from_world or "
                          "from_tokens, or evaluate without a model")
    check_sae_fits(model, sae, data.hook)
    sae = sae.to(model.device).eval()
    splices = [splice_of(sae, data.hook)]
    source = data.token_source()
    n_docs = data.n_docs
    keys = ("ce_clean", "ce_spliced", "ce_zero", "n_pred", "kl_spliced", "kl_zero", "n_pos")
    out = {k: torch.zeros(n_docs, dtype=torch.float64) for k in keys}
    for batch in source.batches(model, batch_size):
        tok, mask = batch.tokens.to(model.device), batch.attention_mask.to(model.device)
        keep = source.keep_mask(batch).to(model.device)
        clean = model(tok, mask)
        with model.hooks(splice_hooks(splices, keep)):
            spliced = model(tok, mask)
        with model.hooks(zero_hooks(splices, keep)):
            zeroed = model(tok, mask)
        valid = (mask[:, 1:] * mask[:, :-1]).double()
        real = mask.double()
        rows = slice(batch.first_seq, batch.first_seq + len(batch))
        for key, logits in (("ce_clean", clean), ("ce_spliced", spliced), ("ce_zero", zeroed)):
            out[key][rows] = (next_token_nll(logits, tok).double() * valid).sum(-1).cpu()
        out["kl_spliced"][rows] = (token_kl(clean, spliced).double() * real).sum(-1).cpu()
        out["kl_zero"][rows] = (token_kl(clean, zeroed).double() * real).sum(-1).cpu()
        out["n_pred"][rows] = valid.sum(-1).cpu()
        out["n_pos"][rows] = real.sum(-1).cpu()
    return out


def splice_estimates(per_doc: dict[str, torch.Tensor], boot: DocBootstrap) -> dict[str, Estimate]:
    """CE / KL figures and their intervals from :func:`splice_per_doc`'s per-document sums."""
    docs = {k: v for k, v in per_doc.items()}

    def recovered(ce_clean: torch.Tensor, ce_spliced: torch.Tensor, ce_zero: torch.Tensor) -> torch.Tensor:
        gap = ce_zero - ce_clean
        return torch.where(gap.abs() > 1e-12, (ce_zero - ce_spliced) / gap, torch.full_like(gap, math.nan))

    def kl_score(kl_spliced: torch.Tensor, kl_zero: torch.Tensor) -> torch.Tensor:
        return torch.where(kl_zero.abs() > 1e-12, (kl_zero - kl_spliced) / kl_zero, torch.full_like(kl_zero, math.nan))

    def per(key: str, count: str) -> Estimate:
        return boot.estimate_docs(lambda s, n: s / n, s=docs[key], n=docs[count])

    return {
        "ce_clean": per("ce_clean", "n_pred"),
        "ce_spliced": per("ce_spliced", "n_pred"),
        "ce_zero_ablation": per("ce_zero", "n_pred"),
        "ce_loss_recovered": boot.estimate_docs(recovered, ce_clean=docs["ce_clean"], ce_spliced=docs["ce_spliced"],
                                                ce_zero=docs["ce_zero"]),
        "kl_spliced": per("kl_spliced", "n_pos"),
        "kl_zero_ablation": per("kl_zero", "n_pos"),
        "kl_div_score": boot.estimate_docs(kl_score, kl_spliced=docs["kl_spliced"], kl_zero=docs["kl_zero"]),
    }


# ---------------------------------------------------------------- the whole family
def evaluate_core(
    sae: Any,
    data: LabelledActivations,
    model: Any = None,
    *,
    dense_threshold: float = 0.1,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 4096,
    model_batch_size: int = 16,
) -> CoreResult:
    """Reconstruction, sparsity, density and (with ``model``) CE / KL of ``sae`` on ``data``.

    Args:
        sae: a dictionary with ``encode_sparse``/``decode_sparse``/``d_sae`` (any :class:`saes.SAE`).
        data: the evaluation set; its ``acts`` are encoded, its windows spliced.
        model: the HookedModel the set came from, for CE-loss recovered and KL; None skips them.
        dense_threshold: a latent firing on more than this share of tokens counts as dense.
        n_boot, seed: the bootstrap over documents.
    """
    if data.acts.shape[1] != sae.d_in:
        raise InterpError(f"the SAE has d_in={sae.d_in} but the set's activations have d={data.acts.shape[1]}; "
                          "use the SAE of this hook")
    rows = encode_rows(sae, data.acts, batch_size)
    boot = DocBootstrap(data.doc, n_boot=n_boot, seed=seed)
    rec = reconstruction_estimates(data.acts, rows["x_hat"], boot)
    one = torch.ones(len(data), dtype=torch.float64)
    l0_q = torch.quantile(rows["l0"], torch.tensor(L0_QUANTILES, dtype=torch.float64)).tolist()
    dens = density_summary(rows["fired"], len(data), dense_threshold)
    W_enc = getattr(sae, "W_enc", None)
    splice = {}
    if model is not None:
        splice = dict(splice_estimates(splice_per_doc(model, sae, data, model_batch_size), boot))
    return CoreResult(
        hook=data.hook, n_tokens=len(data), n_docs=boot.n_docs, d_sae=int(sae.d_sae), **rec,
        l0=boot.estimate(lambda s, n: s / n, s=rows["l0"], n=one),
        l1=boot.estimate(lambda s, n: s / n, s=rows["l1"], n=one),
        l0_quantiles={f"q{round(q * 100):02d}": v for q, v in zip(L0_QUANTILES, l0_q)},
        dense_threshold=dense_threshold, **dens,
        average_max_encoder_cosine_sim=float(max_other_cosine(W_enc.T).mean()) if W_enc is not None else math.nan,
        average_max_decoder_cosine_sim=float(max_other_cosine(sae.W_dec).mean()),
        splice=splice,
    )
