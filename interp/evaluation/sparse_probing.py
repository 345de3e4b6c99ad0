"""k-sparse probing (SAEBench's "sparse_probing") on a labelled evaluation set.

For each task group (SAEBench's "dataset") and each of its classes, a binary one-vs-rest
task: positives are the class's rows, negatives an equal number drawn evenly from the
group's other classes (SAEBench's ``prepare_probe_data``). On the train split the latents
are ranked by ``|mean(positives) - mean(negatives)|`` of their activations and the top
``k`` kept (``get_top_k_mean_diff_mask``); a logistic probe with SAEBench's sklearn default
objective (L2, ``C = 1``: ``C * sum log-loss + ||w||^2 / 2``, bias unpenalised, features
not standardised) is fitted on those k and its held-out accuracy reported, for
``k = 1, 2, 5, 10, 20, 50``. The same is done on the raw activations (``llm_top_k``), and a
probe on all dimensions gives ``llm_test_accuracy`` (all activations) and
``sae_test_accuracy`` (all latents). Accuracies are averaged over a group's classes, then
over groups; the output uses SAEBench's field names and JSON layout
(:meth:`SparseProbingResult.to_saebench`), so its plotting reads it.

Default groups on the world (:func:`world_tasks`): ``topic`` (8 topics), ``sentiment``
(positive, negative), ``word_class`` (agent, object, verb, member, entity), ``relation``
(the 5 relation words) and ``hierarchy`` (the 4 roots, on hierarchy words), each class
with at least ``min_per_class`` rows.

Departures from SAEBench, all forced by the data or chosen for honesty:

* rows are tokens, not texts: the world's labels are per token (a word's class, the topic
  as far as the text shows it), so there is no mean-pooling over a text's tokens;
* the train/test split is by document (:meth:`LabelledActivations.split_docs`), and each
  accuracy carries a bootstrap interval over test documents;
* the dense probes (``llm_test_accuracy``, ``sae_test_accuracy``) use the same L2 logistic
  objective fitted by L-BFGS; SAEBench trains them with AdamW and early stopping on the
  test set, which lets the test set choose the epoch;
* no sklearn: the same objective is minimised here (Newton's method for the k-sparse probes,
  L-BFGS for the dense ones), so figures agree with sklearn's to optimisation precision, not
  bit for bit;
* class sizes are capped at ``max_train_per_class`` / ``max_test_per_class`` rows (SAEBench:
  4,000 / 1,000 texts); small groups use what the set has.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from interp.errors import InterpError
from interp.evaluation.core import DocBootstrap, saebench_envelope
from interp.evaluation.dataset import LabelledActivations
from interp.evaluation.label_interp import encode_dense

DEFAULT_K = (1, 2, 5, 10, 20, 50)
WORLD_WORD_CLASSES = ("agent", "object", "verb", "member", "entity")


@dataclass
class ProbeTask:
    """One task group: mutually exclusive classes, each a ``[n]`` bool row mask."""

    name: str
    classes: dict[str, torch.Tensor]


def tasks_from_classes(data: LabelledActivations, names: list[str], *, min_per_class: int = 20,
                       keep: dict[str, tuple[str, ...]] | None = None) -> list[ProbeTask]:
    """Task groups from the set's class columns (``data.classes[name]``), optionally keeping only
    the class values in ``keep[name]``; classes with fewer than ``min_per_class`` rows are dropped,
    and groups left with fewer than two classes."""
    tasks = []
    for name in names:
        if name not in data.classes:
            raise InterpError(f"no class column {name!r}; the set has: {', '.join(data.classes)}")
        column, values = data.classes[name], data.class_names.get(name) or []
        wanted = (keep or {}).get(name)
        classes = {}
        for v in column[column >= 0].unique().tolist():
            label = values[v] if v < len(values) else str(v)
            if wanted is not None and label not in wanted:
                continue
            mask = column == v
            if int(mask.sum()) >= min_per_class:
                classes[label] = mask
        if len(classes) >= 2:
            tasks.append(ProbeTask(name, classes))
    return tasks


def world_tasks(data: LabelledActivations, min_per_class: int = 20) -> list[ProbeTask]:
    """The default groups on a :meth:`LabelledActivations.from_world` set (see the module docstring)."""
    from interp.world.lexicon import HIERARCHY_PARENT

    tasks = tasks_from_classes(data, ["topic", "sentiment", "word_class", "relation"], min_per_class=min_per_class,
                               keep={"word_class": WORLD_WORD_CLASSES})
    roots = [n for n, parent in HIERARCHY_PARENT.items() if parent is None]
    roots = [r for r in roots if f"hierarchy:{r}" in data.labels]
    classes = {r: data.labels[f"hierarchy:{r}"] for r in roots}
    classes = {r: m for r, m in classes.items() if int(m.sum()) >= min_per_class}
    if len(classes) >= 2:
        tasks.append(ProbeTask("hierarchy", classes))
    return tasks


def balanced_rows(task: ProbeTask, label: str, rows: torch.Tensor, cap: int,
                  g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row indices, y)`` of one one-vs-rest task among ``rows`` (a bool mask of the split):
    up to ``cap`` positives and as many negatives drawn evenly from the other classes."""
    pos = (task.classes[label] & rows).nonzero()[:, 0]
    pos = pos[torch.randperm(len(pos), generator=g)[:cap]]
    others = [c for c in task.classes if c != label]
    per = math.ceil(len(pos) / max(len(others), 1))
    neg = []
    for c in others:
        r = (task.classes[c] & rows).nonzero()[:, 0]
        neg.append(r[torch.randperm(len(r), generator=g)[:per]])
    neg_t = torch.cat(neg) if neg else torch.zeros(0, dtype=torch.int64)
    neg_t = neg_t[torch.randperm(len(neg_t), generator=g)[: len(pos)]]
    idx = torch.cat([pos, neg_t])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg_t))])
    order = torch.randperm(len(idx), generator=g)
    return idx[order], y[order]


def top_k_mean_diff(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` columns of ``x`` with the largest ``|mean over y=1 - mean over y=0|`` (descending)."""
    diff = (x[y == 1].mean(0) - x[y == 0].mean(0)).abs()
    return torch.argsort(diff, descending=True)[:k]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, C: float = 1.0, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w [d], b)`` minimising ``C * sum log-loss + ||w||^2 / 2`` (sklearn's L2 logistic
    objective; the bias is not penalised): Newton's method for up to 128 features (the
    k-sparse probes: a few exact steps), L-BFGS above (the dense probes)."""
    x, y = x.double(), y.double()
    if x.shape[1] <= 128:
        return _fit_newton(x, y, C, max_iter)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", history_size=10,
                            tolerance_grad=1e-10, tolerance_change=1e-16)
    scale = 1.0 / max(len(y), 1)  # the objective divided by C * n: same minimiser, tamer numbers

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="sum") * scale
        loss = loss + w.pow(2).sum() * scale / (2 * C)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _fit_newton(x: torch.Tensor, y: torch.Tensor, C: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton steps on the same objective (a tiny ridge keeps the bias solvable on separable data)."""
    X = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    pen = torch.ones(X.shape[1], dtype=torch.float64)
    pen[-1] = 0.0  # the bias is not penalised
    theta = torch.zeros(X.shape[1], dtype=torch.float64)

    def objective(t: torch.Tensor) -> float:
        return float(C * F.binary_cross_entropy_with_logits(X @ t, y, reduction="sum") + 0.5 * (t[:-1] @ t[:-1]))

    f = objective(theta)
    for _ in range(max_iter):
        p = torch.sigmoid(X @ theta)
        grad = C * X.T @ (p - y) + pen * theta
        hess = C * (X.T * (p * (1 - p))) @ X + torch.diag(pen + 1e-12)
        step = torch.linalg.solve(hess, grad)
        decrement = float(grad @ step)  # twice the predicted decrease of the objective
        if decrement < 1e-18 * max(1.0, abs(f)):
            break
        t = 1.0
        f_new = objective(theta - step)
        while f_new > f - 1e-4 * t * decrement and t > 1e-10:
            t /= 2
            f_new = objective(theta - t * step)
        if f_new > f:
            break  # no step lowers the objective any more: at the optimum to rounding
        theta, f = theta - t * step, f_new
    return theta[:-1], theta[-1]


@dataclass
class SparseProbingResult:
    """Accuracies in SAEBench's names; ``intervals`` holds the bootstrap 95% interval of each."""

    llm: dict[str, float]
    sae: dict[str, float]
    details: list[dict[str, Any]]
    per_class: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, list[float]]
    selected_latents: dict[str, dict[str, dict[str, list[int]]]]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_saebench(self, sae: Any = None, *, model_name: str | None = None) -> dict[str, Any]:
        """The result as a SAEBench ``sparse_probing`` JSON object."""
        unstructured = {f"{k}_results": v for k, v in self.per_class.items()}
        unstructured["intervals"] = self.intervals
        unstructured["selected_latents"] = self.selected_latents
        return saebench_envelope("sparse_probing", {**self.config, "model_name": model_name or self.config.get("model_name", "")},
                                 {"llm": self.llm, "sae": self.sae}, self.details, unstructured, sae)


def sparse_probing(
    sae: Any,
    data: LabelledActivations,
    tasks: list[ProbeTask] | None = None,
    *,
    k_values: tuple[int, ...] = DEFAULT_K,
    test_fraction: float = 0.2,
    seed: int = 42,
    max_train_per_class: int = 4000,
    max_test_per_class: int = 1000,
    dense: bool = True,
    C: float = 1.0,
    n_boot: int = 1000,
    codes: torch.Tensor | None = None,
) -> SparseProbingResult:
    """k-sparse probing of ``sae``'s latents against dense and top-k probes on ``data.acts``.

    Args:
        sae: the dictionary (``encode_sparse``, ``d_sae``); ``codes`` may give its dense codes.
        data: the labelled set (split here by document with ``test_fraction`` and ``seed``).
        tasks: the task groups; default :func:`world_tasks` for a world set, else every class column.
        k_values: numbers of latents (and of activation dimensions) to probe with.
        dense: also fit the probes on all activations and all latents.
        C: inverse L2 strength (sklearn's convention, SAEBench's default 1).
    """
    if tasks is None:
        tasks = world_tasks(data) if data.meta.get("source") == "world" else tasks_from_classes(data, list(data.classes))
    if not tasks:
        raise InterpError("no probing task has two classes with enough rows; pass tasks= or use a larger set")
    z = encode_dense(sae, data.acts) if codes is None else torch.as_tensor(codes).float()
    train_docs, test_docs = data.split_docs(test_fraction, seed)
    train_rows, test_rows = torch.isin(data.doc, train_docs), torch.isin(data.doc, test_docs)
    boot = DocBootstrap(data.doc[test_rows], n_boot=n_boot, seed=seed)
    test_index = torch.full((len(data),), -1, dtype=torch.int64)
    test_index[test_rows] = torch.arange(int(test_rows.sum()))
    g = torch.Generator().manual_seed(seed)
    keys = ["llm_test_accuracy"] * dense + [f"llm_top_{k}_test_accuracy" for k in k_values]
    keys += ["sae_test_accuracy"] * dense + [f"sae_top_{k}_test_accuracy" for k in k_values]
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    boot_acc: dict[str, list[torch.Tensor]] = {key: [] for key in keys}  # per group: [n_boot] means
    selected: dict[str, dict[str, dict[str, list[int]]]] = {}
    for task in tasks:
        per_class[task.name] = {key: {} for key in keys}
        group_boot: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        selected[task.name] = {}
        for label in task.classes:
            tr, y_tr = balanced_rows(task, label, train_rows, max_train_per_class, g)
            te, y_te = balanced_rows(task, label, test_rows, max_test_per_class, g)
            if y_tr.sum() == 0 or (1 - y_tr).sum() == 0 or len(te) == 0:
                continue
            selected[task.name][label] = {}
            for space, feats in (("llm", data.acts), ("sae", z)):
                for k in ([None] if dense else []) + list(k_values):
                    key = f"{space}_test_accuracy" if k is None else f"{space}_top_{k}_test_accuracy"
                    correct, cols = _probe(feats, tr, y_tr, te, y_te, k, C)
                    per_class[task.name][key][label] = float(correct.mean())
                    group_boot[key].append(_boot_accuracy(boot, test_index[te], correct))
                    if space == "sae" and cols is not None:
                        selected[task.name][label][str(k)] = cols.tolist()
        for key in keys:
            if group_boot[key]:
                boot_acc[key].append(torch.stack(group_boot[key]).mean(0))
    details, overall, intervals = _summarise(tasks, keys, per_class, boot_acc)
    config = {"random_seed": seed, "dataset_names": [t.name for t in tasks], "probe_train_set_size": max_train_per_class,
              "probe_test_set_size": max_test_per_class, "k_values": list(k_values), "test_fraction": test_fraction,
              "C": C, "context_length": data.meta.get("context_length"), "model_name": data.meta.get("model") or "",
              "hook_name": data.hook, "n_docs": data.n_docs, "n_tokens": len(data),
              "classes": {t.name: list(t.classes) for t in tasks}}
    return SparseProbingResult(
        llm={k: v for k, v in overall.items() if k.startswith("llm_")},
        sae={k: v for k, v in overall.items() if k.startswith("sae_")},
        details=details, per_class=per_class, intervals=intervals, selected_latents=selected, config=config,
    )


def _probe(feats: torch.Tensor, tr: torch.Tensor, y_tr: torch.Tensor, te: torch.Tensor, y_te: torch.Tensor,
           k: int | None, C: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(correct [len(te)], columns)`` of one probe: on the top-``k`` mean-difference columns
    of the train rows (all columns when ``k`` is None)."""
    cols = None if k is None else top_k_mean_diff(feats[tr], y_tr, min(k, feats.shape[1]))
    x_tr = feats[tr] if cols is None else feats[tr][:, cols]
    x_te = feats[te] if cols is None else feats[te][:, cols]
    w, b = fit_logistic(x_tr, y_tr, C=C)
    return (((x_te.double() @ w + b) > 0).double() == y_te.double()).double(), cols


def _summarise(tasks: list[ProbeTask], keys: list[str], per_class: dict[str, dict[str, dict[str, float]]],
               boot_acc: dict[str, list[torch.Tensor]]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, list[float]]]:
    """Per group the mean over its classes, overall the mean over groups (as SAEBench), and the
    95% interval of each overall figure from the per-group bootstrap means."""
    details = []
    for task in tasks:
        row: dict[str, Any] = {"dataset_name": task.name}
        for key in keys:
            vals = list(per_class[task.name][key].values())
            row[key] = sum(vals) / len(vals) if vals else None
        details.append(row)
    overall = {}
    for key in keys:
        vals = [d[key] for d in details if d[key] is not None]
        overall[key] = sum(vals) / len(vals) if vals else None
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    intervals = {key: torch.quantile(torch.stack(boot_acc[key]).mean(0), q).tolist() for key in keys if boot_acc[key]}
    return details, overall, intervals


def _boot_accuracy(boot: DocBootstrap, test_pos: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """``[n_boot]`` accuracies of one task under the document resamples."""
    n = len(boot.inverse)
    c = torch.zeros(n, dtype=torch.float64).index_add_(0, test_pos, correct)
    m = torch.zeros(n, dtype=torch.float64).index_add_(0, test_pos, torch.ones_like(correct))
    cd, md = boot.per_doc(c), boot.per_doc(m)
    return (boot.counts @ cd) / (boot.counts @ md).clamp_min(1)
