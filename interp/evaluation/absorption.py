"""Feature absorption (Chanin et al., "A is for Absorption"; SAEBench's ``absorption`` family).

A parent concept (``bird``) is absorbed when, on a child token (``sparrow``), the latents that
normally carry the parent stay silent while a child latent whose decoder row points along the
parent carries the parent's direction instead. Here the concepts are the world's hierarchy
nodes with their planted children, so "child token" is known, not guessed.

Per concept, as SAEBench computes it:

1. A logistic-regression probe on the activations finds the parent direction ``p`` (unit).
2. The *main latents*: latents ranked by how much more they fire on the concept than off it;
   k-sparse probes on the top k latents for k = 1..``max_k_value``; k grows while the
   held-out F1 rises by more than ``f1_jump_threshold`` (feature splitting). The top-1 latent
   alone is also scored (the ``k1`` figures).
3. On held-out child tokens the probe detects (``probe_projection = x . p > 0`` scores, the
   "probe true positives"), with latent contributions ``proj_i = z_i (d_i . p)``:

   * **absorption fraction**: 0 if the main latents' projection already reaches ``x . p`` or
     the top ``absorption_fraction_max_absorbing_latents`` other latents with decoder cosine
     >= ``absorption_fraction_probe_cos_sim_threshold`` carry less than
     ``probe_projection_proportion_threshold`` of it; 1 if the main latents' projection is
     <= 0; else ``absorbed / (absorbed + main)`` with ``absorbed = min(top, x.p - main)``;
   * **full absorption**: every main latent silent, the latent with the largest projection has
     decoder cosine >= ``full_absorption_probe_cos_sim_threshold`` and carries at least
     ``probe_projection_proportion_threshold`` of ``x . p``.

   ``mean_absorption_fraction`` and ``full_absorption_rate`` average these over the probe
   true positives; the suite's means average them over concepts.

:func:`absorption` works on any labelled activations (tensors), so a dictionary built by
hand with a known absorbed parent can be scored as well as a trained one.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from interp.errors import InterpError

EPS = 1e-8  # SAEBench's "did not fire" threshold on a latent's activation
EVAL_TYPE_ID_ABSORPTION = "absorption_first_letter"  # SAEBench's id of this family


# ----------------------------------------------------------------- shared fitting helpers


@dataclass
class Logistic:
    """A binary logistic-regression read-out ``score = x @ w + b`` in the input's own units."""

    w: torch.Tensor  # [d]
    b: float

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.w + self.b

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((self.scores(x) > 0) == y.bool()).float().mean()) if len(y) else math.nan


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 100,
                 balanced: bool = True) -> Logistic:
    """Logistic regression of the bool ``y [n]`` on ``x [n, d]`` (full-batch L-BFGS, L2 on ``w``).

    Inputs are centred and divided by one overall scale while fitting (so ``l2`` means the
    same for activations of any size) and the weights mapped back, so the returned ``w``
    is a direction in the input's space. ``balanced`` weighs both classes equally, as
    SAEBench's probes do (``class_weight="balanced"``)."""
    x = x.float()
    y = y.bool()
    if y.all() or not y.any():
        raise InterpError(f"a probe needs both classes; got {int(y.sum())} positive rows of {len(y)}")
    mean = x.mean(0)
    scale = float((x - mean).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)) / math.sqrt(x.shape[1])
    xs = (x - mean) / scale
    target = y.float()
    weight = torch.ones_like(target)
    if balanced:
        pos = float(target.mean())
        weight = torch.where(y, 0.5 / pos, 0.5 / (1 - pos))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(xs @ w + b, target, reduction="none") * weight).mean()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach() / scale
    return Logistic(w_raw, float(b.detach()) - float(w_raw @ mean))


def f1_score(pred: torch.Tensor, y: torch.Tensor) -> float:
    """F1 of bool predictions against bool labels (0 when nothing is predicted or present)."""
    pred, y = pred.bool(), y.bool()
    tp = int((pred & y).sum())
    denom = int(pred.sum()) + int(y.sum())
    return 2 * tp / denom if denom else 0.0


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (train, test) split of ``range(n)``."""
    if not 0 < test_fraction < 1:
        raise InterpError(f"test_fraction={test_fraction}: use a share strictly between 0 and 1, e.g. 0.3")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = n - max(1, round(n * test_fraction))
    return perm[:cut], perm[cut:]


@torch.no_grad()
def encode_rows(sae: Any, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Dense codes ``[n, d_sae]`` (float32, CPU) of the rows ``x [n, d_in]``."""
    out = [sae.encode(x[i:i + batch_size].to(sae.device, sae.dtype)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, sae.d_sae)


# ------------------------------------------------------------------------------ config


@dataclass
class AbsorptionConfig:
    """Settings of the absorption family; names and defaults are SAEBench's where it has them."""

    max_k_value: int = 10
    f1_jump_threshold: float = 0.03
    min_GT_probe_f1: float = 0.6
    min_feats_for_eval: int = 20
    full_absorption_probe_cos_sim_threshold: float = 0.025
    absorption_fraction_probe_cos_sim_threshold: float = 0.1
    probe_projection_proportion_threshold: float = 0.4
    absorption_fraction_max_absorbing_latents: int = 3
    test_fraction: float = 0.3
    probe_l2: float = 1e-3
    random_seed: int = 42

    def check(self) -> None:
        if self.max_k_value < 1:
            raise InterpError(f"max_k_value={self.max_k_value}: use at least 1 (SAEBench uses 10)")
        if self.min_feats_for_eval < 1:
            raise InterpError(f"min_feats_for_eval={self.min_feats_for_eval}: use at least 1")
        if self.absorption_fraction_max_absorbing_latents < 1:
            raise InterpError("absorption_fraction_max_absorbing_latents must be at least 1")


# ----------------------------------------------------------------------------- result


@dataclass
class ConceptAbsorption:
    """One concept's figures (SAEBench's per-letter result detail, plus the k=1 variant)."""

    concept: str
    mean_absorption_fraction: float
    full_absorption_rate: float
    num_full_absorption: int
    num_probe_true_positives: int
    num_split_features: int
    split_feats: list[int]
    probe_f1: float
    k1_latent: int
    k1_mean_absorption_fraction: float
    k1_full_absorption_rate: float
    main_silent_rate: float  # share of probe true positives on which every main latent is silent
    # Per measured token, for intervals: absorption fraction, full absorption, document.
    fractions: list[float] = field(default_factory=list, repr=False)
    full: list[bool] = field(default_factory=list, repr=False)
    docs: list[int] = field(default_factory=list, repr=False)


@dataclass
class AbsorptionResult:
    """Every evaluated concept and the concepts left out (with why)."""

    concepts: list[ConceptAbsorption]
    skipped: dict[str, str]
    config: AbsorptionConfig

    def mean_metrics(self) -> dict[str, float]:
        """SAEBench's ``eval_result_metrics.mean`` block (NaN when no concept was evaluated)."""
        frac = [c.mean_absorption_fraction for c in self.concepts]
        full = [c.full_absorption_rate for c in self.concepts]
        split = [float(c.num_split_features) for c in self.concepts]
        return {
            "mean_absorption_fraction_score": _mean(frac),
            "mean_full_absorption_score": _mean(full),
            "mean_num_split_features": _mean(split),
            "std_dev_absorption_fraction_score": _std(frac),
            "std_dev_full_absorption_score": _std(full),
            "std_dev_num_split_features": _std(split),
        }

    def details(self) -> list[dict[str, Any]]:
        """SAEBench's ``eval_result_details`` (``concept`` in place of ``first_letter``)."""
        keys = ("mean_absorption_fraction", "full_absorption_rate", "num_full_absorption",
                "num_probe_true_positives", "num_split_features")
        return [{"concept": c.concept, **{k: getattr(c, k) for k in keys}} for c in self.concepts]

    def unstructured(self) -> dict[str, Any]:
        """What SAEBench has no field for: the k=1 figures, split latents, probe F1, skips."""
        per = {c.concept: {k: v for k, v in asdict(c).items() if k not in ("concept", "fractions", "full", "docs")}
               for c in self.concepts}
        k1 = [c.k1_mean_absorption_fraction for c in self.concepts]
        k1_full = [c.k1_full_absorption_rate for c in self.concepts]
        return {"per_concept": per, "skipped": dict(self.skipped),
                "k1_mean_absorption_fraction_score": _mean(k1), "k1_mean_full_absorption_score": _mean(k1_full)}


    def intervals(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
        """95% percentile-bootstrap intervals resampling whole documents (every concept's tokens
        of a drawn document move together): of the two means over concepts and of each
        concept's ``mean_absorption_fraction`` / ``full_absorption_rate``."""
        if not self.concepts:
            return {}
        ids = torch.tensor(sorted({d for c in self.concepts for d in c.docs}), dtype=torch.long)
        g = torch.Generator().manual_seed(seed)
        counts = torch.zeros(n_boot, len(ids), dtype=torch.float64)
        counts.scatter_add_(1, torch.randint(len(ids), (n_boot, len(ids)), generator=g),
                            torch.ones(n_boot, len(ids), dtype=torch.float64))
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        per, frac_b, full_b = {}, [], []
        for c in self.concepts:
            w = counts[:, torch.searchsorted(ids, torch.tensor(c.docs, dtype=torch.long))]
            n = w.sum(1).clamp_min(1e-12)
            fb = w @ torch.tensor(c.fractions, dtype=torch.float64) / n
            ub = w @ torch.tensor(c.full, dtype=torch.float64) / n
            frac_b.append(fb)
            full_b.append(ub)
            per[c.concept] = {"mean_absorption_fraction": torch.quantile(fb, q).tolist(),
                              "full_absorption_rate": torch.quantile(ub, q).tolist()}
        return {"mean_absorption_fraction_score": torch.quantile(torch.stack(frac_b).mean(0), q).tolist(),
                "mean_full_absorption_score": torch.quantile(torch.stack(full_b).mean(0), q).tolist(),
                "per_concept": per}


def _mean(v: Sequence[float]) -> float:
    return float(statistics.mean(v)) if v else math.nan


def _std(v: Sequence[float]) -> float:
    return float(statistics.stdev(v)) if len(v) > 1 else math.nan


# ------------------------------------------------------------------------------- core


@torch.no_grad()
def token_absorption(z: torch.Tensor, x_proj: torch.Tensor, dec_proj: torch.Tensor, dec_cos: torch.Tensor,
                     main: Sequence[int], config: AbsorptionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorption fraction ``[m]`` and full-absorption flag ``[m]`` of ``m`` tokens.

    Args:
        z: codes ``[m, d_sae]`` of the tokens.
        x_proj: ``x . p`` per token ``[m]`` (the probe projection of the activation).
        dec_proj: ``d_i . p`` per latent ``[d_sae]`` (a latent's projection per unit of code).
        dec_cos: cosine of each decoder row with ``p`` ``[d_sae]``.
        main: the main latents of the concept.
    """
    main_idx = torch.as_tensor(list(main), dtype=torch.long)
    proj = z * dec_proj[None, :]                              # [m, d_sae] contributions along p
    main_proj = proj[:, main_idx].sum(1)
    candidate = torch.ones(z.shape[1], dtype=torch.bool)
    candidate[main_idx] = False
    candidate &= dec_cos >= config.absorption_fraction_probe_cos_sim_threshold
    cand = torch.where(candidate[None, :] & (proj > 0), proj, torch.zeros(()))
    k = min(config.absorption_fraction_max_absorbing_latents, z.shape[1])
    top_sum = cand.topk(k, dim=1).values.sum(1)
    share = top_sum / torch.where(x_proj == 0, torch.full_like(x_proj, float("nan")), x_proj)
    no_abs = (main_proj >= x_proj) | ~(share >= config.probe_projection_proportion_threshold)
    absorbed = torch.minimum(top_sum, x_proj - main_proj)
    partial = (absorbed / (absorbed + main_proj).clamp_min(1e-30)).clamp(0.0, 1.0)
    fraction = torch.where(no_abs, torch.zeros(()), torch.where(main_proj <= 0, torch.ones(()), partial))

    silent = (z[:, main_idx] < EPS).all(1)
    top_val, top_idx = proj.max(1)
    full = (silent & (dec_cos[top_idx] >= config.full_absorption_probe_cos_sim_threshold) & (x_proj >= 0)
            & (top_val / x_proj.clamp_min(1e-30) >= config.probe_projection_proportion_threshold))
    return fraction, full


def _split_features(z_tr: torch.Tensor, y_tr: torch.Tensor, z_te: torch.Tensor, y_te: torch.Tensor,
                    config: AbsorptionConfig, l2: float) -> tuple[list[int], list[int]]:
    """(ranking of latents by mean difference, SAEBench's split features by the F1-jump rule)."""
    diff = z_tr[y_tr].mean(0) - z_tr[~y_tr].mean(0)
    order = diff.argsort(descending=True).tolist()
    prev, split = -100.0, order[:1]
    for k in range(1, min(config.max_k_value, z_tr.shape[1]) + 1):
        feats = order[:k]
        if z_tr[:, feats].abs().sum() == 0:  # no latent fires: a k-sparse probe has nothing to fit
            break
        probe = fit_logistic(z_tr[:, feats], y_tr, l2=l2)
        f1 = f1_score(probe.scores(z_te[:, feats]) > 0, y_te)
        if f1 > prev + config.f1_jump_threshold:
            prev, split = f1, feats
        else:
            break
    return order, split


@dataclass
class ConceptProbes:
    """The dictionary-independent part of absorption: the split, each concept's probe on the
    activations, its held-out F1 and the rows measured (held-out child tokens the probe
    detects). Fit once with :func:`concept_probes`, reuse for every SAE of the hook."""

    train: torch.Tensor
    test: torch.Tensor
    probes: dict[str, tuple[Logistic, float, torch.Tensor]]
    skipped: dict[str, str]
    doc: torch.Tensor


def _inputs(acts: torch.Tensor, labels: torch.Tensor, names: Sequence[str],
            children: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acts = torch.as_tensor(acts).float()
    labels = torch.as_tensor(labels).bool()
    if labels.ndim == 1:
        labels = labels[:, None]
    if acts.ndim != 2 or labels.shape[0] != acts.shape[0] or labels.shape[1] != len(names):
        raise InterpError(f"acts must be [n, d] with labels [n, {len(names)}] (one column per name); got acts "
                          f"{list(acts.shape)}, labels {list(labels.shape)}")
    children = labels if children is None else torch.as_tensor(children).bool().reshape(labels.shape)
    return acts, labels, children


def concept_probes(acts: torch.Tensor, labels: torch.Tensor, names: Sequence[str], *,
                   children: torch.Tensor | None = None, config: AbsorptionConfig | None = None,
                   doc: torch.Tensor | None = None) -> ConceptProbes:
    """Fit each concept's probe on a split by document (``doc [n]``; default one row per
    document) and find the rows absorption is measured on (see :func:`absorption`)."""
    config = config or AbsorptionConfig()
    config.check()
    acts, labels, children = _inputs(acts, labels, names, children)
    doc = torch.arange(len(acts)) if doc is None else torch.as_tensor(doc, dtype=torch.long).reshape(-1)
    ids, inverse = doc.unique(return_inverse=True)
    _, test_docs = split_rows(len(ids), config.test_fraction, config.random_seed)
    is_test = torch.zeros(len(ids), dtype=torch.bool)
    is_test[test_docs] = True
    train, test = (~is_test[inverse]).nonzero()[:, 0], is_test[inverse].nonzero()[:, 0]
    probes, skipped = {}, {}
    for c, name in enumerate(names):
        y = labels[:, c]
        if int(y[train].sum()) < 2 or int((~y[train]).sum()) < 2 or not y[test].any():
            skipped[name] = f"too few tokens with and without the concept ({int(y.sum())} with)"
            continue
        probe = fit_logistic(acts[train], y[train], l2=config.probe_l2)
        detected = probe.scores(acts[test]) > 0
        probe_f1 = f1_score(detected, y[test])
        if probe_f1 < config.min_GT_probe_f1:
            skipped[name] = f"the concept probe's held-out F1 is {probe_f1:.3f} < min_GT_probe_f1"
            continue
        rows = test[children[test, c] & detected]
        if len(rows) < config.min_feats_for_eval:
            skipped[name] = f"{len(rows)} probe true positives among the child tokens < min_feats_for_eval"
            continue
        probes[name] = (probe, probe_f1, rows)
    return ConceptProbes(train, test, probes, skipped, doc)


def absorption(
    sae: Any,
    acts: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    *,
    children: torch.Tensor | None = None,
    config: AbsorptionConfig | None = None,
    codes: torch.Tensor | None = None,
    doc: torch.Tensor | None = None,
    probes: ConceptProbes | None = None,
) -> AbsorptionResult:
    """Absorption of each labelled concept by the dictionary ``sae`` (SAEBench's definitions).

    Args:
        sae: any dictionary with ``encode`` and ``W_dec [d_sae, d_in]``.
        acts: activations ``[n, d_in]``, one row per token.
        labels: ``[n, c]`` bool, concept presence per token (the probes' targets).
        names: the ``c`` concept names.
        children: ``[n, c]`` bool, the tokens on which absorption is measured for each
            concept (its children: the concept is present through a descendant). Default:
            every token where the concept is present.
        codes: the dense codes of ``acts`` if already computed.
        doc: ``[n]`` the document of each row: the probes' split keeps documents whole and the
            intervals resample them (default: each row its own document).
        probes: :func:`concept_probes` of these inputs, fitted once for several SAEs.
    """
    config = config or AbsorptionConfig()
    config.check()
    acts, labels, children = _inputs(acts, labels, names, children)
    if acts.shape[1] != sae.d_in:
        raise InterpError(f"the activations have d={acts.shape[1]} but the SAE has d_in={sae.d_in}")
    probes = probes or concept_probes(acts, labels, names, children=children, config=config, doc=doc)
    z = encode_rows(sae, acts) if codes is None else torch.as_tensor(codes).float()
    W_dec = sae.W_dec.detach().float().cpu()
    train, test = probes.train, probes.test
    results = []
    for c, name in enumerate(names):
        if name not in probes.probes:
            continue
        probe, probe_f1, rows = probes.probes[name]
        y = labels[:, c]
        order, split = _split_features(z[train], y[train], z[test], y[test], config, config.probe_l2)
        p = probe.w / probe.w.norm()
        dec_proj = W_dec @ p
        dec_cos = dec_proj / W_dec.norm(dim=1).clamp_min(1e-30)
        x_proj = acts[rows] @ p
        frac, full = token_absorption(z[rows], x_proj, dec_proj, dec_cos, split, config)
        frac1, full1 = token_absorption(z[rows], x_proj, dec_proj, dec_cos, order[:1], config)
        n = len(rows)
        results.append(ConceptAbsorption(
            concept=name, mean_absorption_fraction=float(frac.sum()) / n, full_absorption_rate=float(full.sum()) / n,
            num_full_absorption=int(full.sum()), num_probe_true_positives=n, num_split_features=len(split),
            split_feats=list(split), probe_f1=probe_f1, k1_latent=order[0],
            k1_mean_absorption_fraction=float(frac1.sum()) / n, k1_full_absorption_rate=float(full1.sum()) / n,
            main_silent_rate=float((z[rows][:, split] < EPS).all(1).float().mean()), fractions=frac.tolist(),
            full=full.tolist(), docs=probes.doc[rows].tolist()))
    return AbsorptionResult(results, dict(probes.skipped), config)


def hierarchy_concepts(data: Any) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The world's parent concepts on a labelled set: ``(labels [n, c], names, children [n, c])``.

    Concepts are the hierarchy's inner nodes (``bird``, ``animal``, ...; the members are
    leaves) that the set labels as ``hierarchy:<node>``; a row is a child of a node when it
    carries the node's label through a descendant (its own word is not the node's word)."""
    from interp.world.lexicon import HIERARCHY_NODES, HIERARCHY_PARENT

    names = [n for n in HIERARCHY_PARENT if f"hierarchy:{n}" in data.labels]
    if not names:
        raise InterpError("the set has no hierarchy:<node> labels; absorption on the world needs a set from "
                          "LabelledActivations.from_world (or pass labels and children to absorption())")
    labels, _ = data.label_matrix([f"hierarchy:{n}" for n in names])
    own = data.classes.get("hierarchy_node")
    if own is None:
        return labels, names, labels
    node_ids = torch.tensor([HIERARCHY_NODES.index(n) for n in names])
    return labels, names, labels & (own[:, None] != node_ids[None, :])
