"""Spurious correlation removal (SCR) and targeted probe perturbation (TPP), as SAEBench defines them
(Karvonen et al., "Evaluating Sparse Autoencoders on Targeted Concept Removal Tasks").

Both work on *texts*: a text's activation is the mean of its tokens' activations, and so are its
codes. Removing latents ``S`` from every token (``x - sum_{i in S} z_i d_i``, the reconstruction
error kept, SAEBench's zero ablation) and then pooling equals removing ``sum_S zbar_i d_i``
from the pooled activation, so everything below runs on pooled ``x [texts, d]`` and
``z [texts, d_sae]``.

**SCR** (two binary concepts, e.g. topic A/B and sentiment positive/negative):

* a *biased* probe is trained where the two always agree (A texts all positive, B texts all
  negative), so it partly reads the spurious concept;
* latents are attributed to a concept with that concept's probe ``w`` (trained on balanced
  data): ``effect_i = |(mean zbar_i on class 1 - mean zbar_i on class 0) * (w . d_i)|``;
* ``dir1``: ablate the top-n latents of the spurious concept and measure the biased probe's
  accuracy at the target on balanced test texts, ``A_abl``; with ``A_base`` (no ablation) and
  ``A_oracle`` (a probe trained on the target itself)
  ``scr_dir1_threshold_n = (A_abl - A_base) / (A_oracle - A_base)``;
  ``dir2`` swaps the two concepts; ``scr_metric_threshold_n`` takes ``dir1`` when the biased
  probe is worse at the target than at the spurious concept (it leans on the spurious one),
  else ``dir2``.

**TPP** (a multi-class concept, e.g. topic): one-vs-rest probes per class on balanced sets
(the class against an equal number of other texts); for class ``c`` the latents
``effect_i = max(mean zbar_i on c - mean zbar_i off c, 0) * (w_c . d_i)`` are ranked, the top
n ablated, and ``tpp_threshold_n_total_metric = drop of c's probe accuracy - mean drop of the
other classes' probes``, averaged over classes (``..._intended_diff_only`` and
``..._unintended_diff_only`` are the two parts).

Intervals: the test texts are resampled with replacement (``n_boot`` times, fixed seed) and
every accuracy, hence every score, recomputed on each resample.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.errors import InterpError
from interp.evaluation.absorption import Logistic, encode_rows, fit_logistic

EVAL_TYPE_ID_SCR = "scr"
EVAL_TYPE_ID_TPP = "tpp"


@dataclass
class ScrTppConfig:
    """Settings of SCR and TPP (SAEBench's names; ``n_values`` shortened for small dictionaries)."""

    n_values: tuple[int, ...] = (2, 5, 10, 20, 50)
    test_fraction: float = 0.3
    probe_l2: float = 1e-3
    n_boot: int = 500
    random_seed: int = 42

    def check(self, d_sae: int | None = None) -> list[int]:
        values = sorted({int(n) for n in self.n_values})
        if not values or values[0] < 1:
            raise InterpError(f"n_values={list(self.n_values)}: give latent counts of at least 1, e.g. 2,5,10,20")
        if not 0 < self.test_fraction < 1:
            raise InterpError(f"test_fraction={self.test_fraction}: use a share strictly between 0 and 1")
        return [n for n in values if d_sae is None or n <= d_sae] or values[:1]


# ---------------------------------------------------------------------------- pooling


def pool(values: torch.Tensor, group: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
    """Mean of the rows of ``values [n, ...]`` per ``group [n]`` (ids ``0..G-1``): ``[G, ...]``."""
    group = torch.as_tensor(group, dtype=torch.int64)
    n_groups = int(group.max()) + 1 if n_groups is None else n_groups
    flat = values.reshape(values.shape[0], -1).double()
    sums = torch.zeros(n_groups, flat.shape[1], dtype=torch.float64).index_add_(0, group, flat)
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, torch.ones(len(group), dtype=torch.float64))
    return (sums / counts.clamp_min(1)[:, None]).float().reshape(n_groups, *values.shape[1:])


@dataclass
class Texts:
    """Pooled texts: model activations ``x [G, d]``, codes ``z [G, d_sae]`` and per-text labels."""

    x: torch.Tensor
    z: torch.Tensor
    W_dec: torch.Tensor  # [d_sae, d]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [G] int64 (-1: n/a)

    @classmethod
    def of(cls, sae: Any, acts: torch.Tensor, group: torch.Tensor, labels: dict[str, torch.Tensor]) -> Texts:
        """Pool token rows ``acts [n, d]`` into texts by ``group [n]`` (-1 rows left out);
        ``labels`` give one value per *text* (``[G]``)."""
        keep = torch.as_tensor(group) >= 0
        uniq, inverse = torch.as_tensor(group)[keep].unique(return_inverse=True)
        acts = torch.as_tensor(acts).float()[keep]
        z = encode_rows(sae, acts)
        return cls(pool(acts, inverse, len(uniq)), pool(z, inverse, len(uniq)),
                   sae.W_dec.detach().float().cpu(), {k: torch.as_tensor(v)[uniq] for k, v in labels.items()})


def ablate(texts: Texts, latents: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Pooled activations of ``rows`` with the latents ``latents`` removed from every token."""
    if len(latents) == 0:
        return texts.x[rows]
    return texts.x[rows] - texts.z[rows][:, latents] @ texts.W_dec[latents]


def attribution(texts: Texts, probe: Logistic, rows: torch.Tensor, y: torch.Tensor, *, absolute: bool) -> torch.Tensor:
    """SAEBench's per-latent effect ``(mean z on class 1 - mean z on class 0) * (w . d_i)`` on ``rows``:
    its absolute value (SCR) or its positive-class part (TPP: the difference clamped at 0)."""
    z = texts.z[rows]
    diff = z[y].mean(0) - z[~y].mean(0)
    if not absolute:
        diff = diff.clamp_min(0.0)
    effect = diff * (texts.W_dec @ probe.w)
    return effect.abs() if absolute else effect


def top_latents(effect: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` largest non-zero effects (fewer when fewer are non-zero), as SAEBench selects."""
    nonzero = int((effect != 0).sum())
    k = min(n, nonzero)
    return effect.topk(k).indices if k else torch.zeros(0, dtype=torch.long)


def _balanced(rows_by_cell: Sequence[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """Each cell cut to the smallest cell's size (a seeded random subset)."""
    m = min(len(r) for r in rows_by_cell)
    return [r[torch.randperm(len(r), generator=gen)[:m]] for r in rows_by_cell]


class _Boot:
    """Bootstrap weights over texts: ``[n_boot, G]`` counts of each text in each resample."""

    def __init__(self, n_texts: int, test: torch.Tensor, n_boot: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed + 1)
        pick = test[torch.randint(len(test), (n_boot, len(test)), generator=g)]
        self.w = torch.zeros(n_boot, n_texts, dtype=torch.float64)
        self.w.scatter_add_(1, pick, torch.ones_like(pick, dtype=torch.float64))

    def accuracy(self, rows: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
        """``[n_boot]`` accuracy over ``rows`` (each text counted as often as it was drawn)."""
        w = self.w[:, rows]
        return (w @ correct.double()) / w.sum(1).clamp_min(1e-12)


def _ratio(num: float | torch.Tensor, den: float | torch.Tensor) -> Any:
    if isinstance(den, torch.Tensor):
        return torch.where(den.abs() > 1e-9, num / den.where(den.abs() > 1e-9, torch.ones_like(den)),
                           torch.full_like(den, math.nan))
    return num / den if abs(den) > 1e-9 else math.nan


def _interval(boot: torch.Tensor) -> tuple[float, float]:
    boot = boot[~boot.isnan()]
    if len(boot) == 0:
        return math.nan, math.nan
    lo, hi = torch.quantile(boot.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


# -------------------------------------------------------------------------------- SCR


@dataclass
class ScrResult:
    """SCR over one or more concept pairs: SAEBench's metric dict, its per-pair details and intervals."""

    metrics: dict[str, float]                     # scr_dir1_threshold_n, scr_metric_threshold_n, scr_dir2_threshold_n
    details: list[dict[str, Any]]                 # one per pair: dataset_name + the same keys
    intervals: dict[str, tuple[float, float]]     # the metric keys -> 95% bootstrap interval
    accuracies: dict[str, dict[str, float]]       # pair -> base / oracle accuracies, sizes
    n_values: list[int]


def _scr_pair(texts: Texts, target: torch.Tensor, spurious: torch.Tensor, config: ScrTppConfig,
              n_values: list[int], name: str, seed: int) -> tuple[dict[str, float], dict[str, torch.Tensor], dict]:
    """One pair: (scores, bootstrap replicates of the scores, accuracies)."""
    gen = torch.Generator().manual_seed(seed)
    cells = [((target == a) & (spurious == b)).nonzero()[:, 0] for a in (1, 0) for b in (1, 0)]  # A+, A-, B+, B-
    splits = []
    for rows in cells:
        rows = rows[torch.randperm(len(rows), generator=gen)]
        cut = len(rows) - max(1, round(len(rows) * config.test_fraction))
        splits.append((rows[:cut], rows[cut:]))
    if min(len(tr) for tr, _ in splits) < 2 or min(len(te) for _, te in splits) < 1:
        raise InterpError(f"SCR pair {name}: too few texts in some cell (sizes {[len(c) for c in cells]}); "
                          "each combination of the two concepts needs a few texts; sample more documents")
    train = [tr for tr, _ in splits]
    test = torch.cat(_balanced([te for _, te in splits], gen))
    biased = torch.cat(_balanced([train[0], train[3]], gen))          # A+ against B-: the two agree
    balanced = torch.cat(_balanced(train, gen))
    t, s = target.bool(), spurious.bool()
    p_bias = fit_logistic(texts.x[biased], t[biased], l2=config.probe_l2)
    p_target = fit_logistic(texts.x[balanced], t[balanced], l2=config.probe_l2)
    p_spur = fit_logistic(texts.x[balanced], s[balanced], l2=config.probe_l2)
    boot = _Boot(len(texts.x), test, config.n_boot, seed)

    def correct(x: torch.Tensor, probe: Logistic, y: torch.Tensor) -> torch.Tensor:
        return ((probe.scores(x) > 0) == y[test]).float()

    x_test = texts.x[test]
    base_t, base_s = correct(x_test, p_bias, t), correct(x_test, p_bias, s)
    oracle_t, oracle_s = correct(x_test, p_target, t), correct(x_test, p_spur, s)
    acc = {k: float(v.mean()) for k, v in (("dir1_acc_biased_probe_on_target", base_t),
                                           ("dir2_acc_biased_probe_on_spurious", base_s),
                                           ("oracle_acc_target", oracle_t), ("oracle_acc_spurious", oracle_s))}
    acc.update(n_test=len(test), n_biased_train=len(biased), n_balanced_train=len(balanced))
    bacc = {k: boot.accuracy(test, v) for k, v in (("bt", base_t), ("bs", base_s), ("ot", oracle_t), ("os", oracle_s))}
    effect_spur = attribution(texts, p_spur, balanced, s[balanced], absolute=True)
    effect_target = attribution(texts, p_target, balanced, t[balanced], absolute=True)
    scores: dict[str, float] = {}
    reps: dict[str, torch.Tensor] = {}
    use_dir1 = acc["dir1_acc_biased_probe_on_target"] < acc["dir2_acc_biased_probe_on_spurious"]
    for n in n_values:
        abl_t = correct(ablate(texts, top_latents(effect_spur, n), test), p_bias, t)
        abl_s = correct(ablate(texts, top_latents(effect_target, n), test), p_bias, s)
        d1 = _ratio(float(abl_t.mean()) - acc["dir1_acc_biased_probe_on_target"],
                    acc["oracle_acc_target"] - acc["dir1_acc_biased_probe_on_target"])
        d2 = _ratio(float(abl_s.mean()) - acc["dir2_acc_biased_probe_on_spurious"],
                    acc["oracle_acc_spurious"] - acc["dir2_acc_biased_probe_on_spurious"])
        r1 = _ratio(boot.accuracy(test, abl_t) - bacc["bt"], bacc["ot"] - bacc["bt"])
        r2 = _ratio(boot.accuracy(test, abl_s) - bacc["bs"], bacc["os"] - bacc["bs"])
        scores[f"scr_dir1_threshold_{n}"], reps[f"scr_dir1_threshold_{n}"] = d1, r1
        scores[f"scr_metric_threshold_{n}"], reps[f"scr_metric_threshold_{n}"] = (d1, r1) if use_dir1 else (d2, r2)
        scores[f"scr_dir2_threshold_{n}"], reps[f"scr_dir2_threshold_{n}"] = d2, r2
    return scores, reps, acc


def scr(texts: Texts, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], config: ScrTppConfig | None = None) -> ScrResult:
    """SCR of the dictionary whose codes ``texts`` holds, averaged over concept ``pairs``.

    Args:
        texts: pooled texts (:meth:`Texts.of`).
        pairs: name -> ``(target [G], spurious [G])``, each 1/0 on the texts of the pair and
            -1 on texts outside it.
    """
    config = config or ScrTppConfig()
    n_values = config.check(texts.z.shape[1])
    if not pairs:
        raise InterpError("SCR needs at least one concept pair")
    per, reps, accs = {}, {}, {}
    for i, (name, (target, spurious)) in enumerate(pairs.items()):
        target, spurious = torch.as_tensor(target), torch.as_tensor(spurious)
        per[name], reps[name], accs[name] = _scr_pair(texts, target, spurious, config, n_values, name,
                                                      config.random_seed + 1000 * i)
    keys = list(next(iter(per.values())))
    metrics = {k: float(torch.tensor([per[p][k] for p in per], dtype=torch.float64).nanmean()) for k in keys}
    intervals = {k: _interval(torch.stack([reps[p][k] for p in per]).nanmean(0)) for k in keys}
    details = [{"dataset_name": p, **per[p]} for p in per]
    return ScrResult(metrics, details, intervals, accs, n_values)


# -------------------------------------------------------------------------------- TPP


@dataclass
class TppResult:
    """TPP: SAEBench's metric dict (means over classes), per-class figures and intervals."""

    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    intervals: dict[str, tuple[float, float]]
    clean_accuracies: dict[str, float]
    n_values: list[int]


def tpp(texts: Texts, classes: torch.Tensor, class_names: Sequence[str], config: ScrTppConfig | None = None,
        dataset_name: str = "world") -> TppResult:
    """TPP of the dictionary whose codes ``texts`` holds, over the classes ``classes [G]`` (-1 = none)."""
    config = config or ScrTppConfig()
    n_values = config.check(texts.z.shape[1])
    classes = torch.as_tensor(classes, dtype=torch.int64)
    present = [c for c in range(len(class_names)) if int((classes == c).sum()) >= 4]
    if len(present) < 2:
        raise InterpError(f"TPP needs at least two classes with 4+ texts each; counts "
                          f"{[int((classes == c).sum()) for c in range(len(class_names))]}")
    gen = torch.Generator().manual_seed(config.random_seed)
    labelled = (classes >= 0).nonzero()[:, 0]
    perm = labelled[torch.randperm(len(labelled), generator=gen)]
    cut = len(perm) - max(1, round(len(perm) * config.test_fraction))
    is_test = torch.zeros(len(classes), dtype=torch.bool)
    is_test[perm[cut:]] = True
    boot = _Boot(len(classes), perm[cut:], config.n_boot, config.random_seed)
    probes, sets, clean, clean_boot, effects = {}, {}, {}, {}, {}
    for c in present:
        name = class_names[c]
        sides = []
        for test_side in (False, True):
            pool_rows = labelled[is_test[labelled] == test_side]
            pos = pool_rows[classes[pool_rows] == c]
            neg = pool_rows[classes[pool_rows] != c]
            neg = neg[torch.randperm(len(neg), generator=gen)[:len(pos)]]
            sides.append((torch.cat([pos, neg]), torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).bool()))
        (tr, ytr), (te, yte) = sides
        if len(te) < 2 or not yte.any() or yte.all():
            continue
        probes[name] = fit_logistic(texts.x[tr], ytr, l2=config.probe_l2)
        sets[name] = (te, yte)
        ok = ((probes[name].scores(texts.x[te]) > 0) == yte).float()
        clean[name], clean_boot[name] = float(ok.mean()), boot.accuracy(te, ok)
        effects[name] = attribution(texts, probes[name], tr, ytr, absolute=False)
    names = list(probes)
    if len(names) < 2:
        raise InterpError("TPP: fewer than two classes have a held-out set; sample more documents")
    per_class: dict[str, dict[str, float]] = {}
    reps: dict[str, dict[str, torch.Tensor]] = {}
    for ablated in names:
        per_class[ablated], reps[ablated] = {}, {}
        for n in n_values:
            latents = top_latents(effects[ablated], n)
            drop, drop_boot = {}, {}
            for probe_name in names:
                te, yte = sets[probe_name]
                ok = ((probes[probe_name].scores(ablate(texts, latents, te)) > 0) == yte).float()
                drop[probe_name] = clean[probe_name] - float(ok.mean())
                drop_boot[probe_name] = clean_boot[probe_name] - boot.accuracy(te, ok)
            others = [p for p in names if p != ablated]
            unintended = sum(drop[p] for p in others) / len(others)
            unintended_boot = torch.stack([drop_boot[p] for p in others]).mean(0)
            per_class[ablated][f"tpp_threshold_{n}_total_metric"] = drop[ablated] - unintended
            per_class[ablated][f"tpp_threshold_{n}_intended_diff_only"] = drop[ablated]
            per_class[ablated][f"tpp_threshold_{n}_unintended_diff_only"] = unintended
            reps[ablated][f"tpp_threshold_{n}_total_metric"] = drop_boot[ablated] - unintended_boot
            reps[ablated][f"tpp_threshold_{n}_intended_diff_only"] = drop_boot[ablated]
            reps[ablated][f"tpp_threshold_{n}_unintended_diff_only"] = unintended_boot
    keys = list(per_class[names[0]])
    metrics = {k: sum(per_class[c][k] for c in names) / len(names) for k in keys}
    intervals = {k: _interval(torch.stack([reps[c][k] for c in names]).mean(0)) for k in keys}
    return TppResult(metrics, per_class, intervals, clean, n_values)


# ----------------------------------------------------------------- the world's texts


def sentence_groups(data: Any, period_id: int) -> torch.Tensor:
    """``[n]`` a text id per row: rows of one sentence (a document's tokens up to and including
    its ``.``) share an id; needs the set's windows."""
    if data.windows is None:
        raise InterpError("sentence texts need the token windows; build the set with from_world or from_tokens")
    is_period = (data.windows == period_id).long()
    before = torch.cumsum(is_period, dim=1) - is_period      # periods strictly before each position
    sent = before[data.doc, data.position]
    key = data.doc * (int(data.windows.shape[1]) + 1) + sent
    return key.unique(return_inverse=True)[1]


def world_scr_pairs(data: Any, topic_pairs: Sequence[tuple[str, str]] | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Texts and pairs for SCR on the world: each text is one topical sentence with a sentiment;
    the target is its topic (A against B), the spurious concept its sentiment.

    Returns ``(group [n], text labels, pairs)`` for :meth:`Texts.of` and :func:`scr`."""
    from interp.world import World

    for need in ("topic_generator", "sentiment_generator"):
        if need not in data.classes:
            raise InterpError(f"SCR on the world needs the class {need!r}; build the set with "
                              "LabelledActivations.from_world")
    topics = list(data.class_names["topic_generator"])
    topic_pairs = list(topic_pairs or [(topics[i], topics[i + 1]) for i in range(0, len(topics) - 1, 2)])
    for a, b in topic_pairs:
        if a not in topics or b not in topics or a == b:
            raise InterpError(f"SCR topic pair ({a}, {b}): use two different topics of {', '.join(topics)}")
    topic = data.classes["topic_generator"]
    sentiment = data.classes["sentiment_generator"]
    names = data.class_names["sentiment_generator"]
    pos, neg = names.index("positive"), names.index("negative")
    keep = (topic >= 0) & ((sentiment == pos) | (sentiment == neg))
    group = sentence_groups(data, World().vocab.index("."))
    group = torch.where(keep, group, torch.full_like(group, -1))
    uniq, inverse = group[keep].unique(return_inverse=True)
    text_group = torch.full_like(group, -1)
    text_group[keep] = inverse
    first = torch.full((len(uniq),), -1, dtype=torch.long)
    first[inverse.flip(0)] = keep.nonzero()[:, 0].flip(0)   # each text's first row
    t_topic, t_pos = topic[first], (sentiment[first] == pos).long()
    pairs = {}
    for a, b in topic_pairs:
        ia, ib = topics.index(a), topics.index(b)
        inside = (t_topic == ia) | (t_topic == ib)
        pairs[f"world_topic_sentiment_scr_{a}_{b}"] = (torch.where(inside, (t_topic == ia).long(), -1),
                                                       torch.where(inside, t_pos, -1))
    return text_group, {"topic": t_topic, "positive": t_pos}, pairs


def world_tpp_texts(data: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Texts and classes for TPP on the world: each topical document is a text, its class its topic.

    Returns ``(group [n], classes [G], class names)``."""
    topic = data.classes["topic_generator"]
    keep = topic >= 0
    uniq, inverse = data.doc[keep].unique(return_inverse=True)
    group = torch.full_like(data.doc, -1)
    group[keep] = inverse
    classes = torch.full((len(uniq),), -1, dtype=torch.long)
    classes[inverse] = topic[keep]
    return group, classes, list(data.class_names["topic_generator"])
