"""Linear probes: logistic regression on activations with a held-out split."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from probes.metrics import accuracy, auroc


@dataclass
class ProbeResult:
    """Held-out scores of a fitted probe; ``n_train``/``n_test`` rows were used."""

    accuracy: float
    auroc: float
    n_train: int
    n_test: int
    train_accuracy: float


class LinearProbe:
    """Logistic regression (binary or multiclass) fitted by full-batch L-BFGS with L2.

    Inputs are standardised with the training split's mean and std, so ``l2`` means the
    same at every layer; ``direction`` maps the weights back to activation space.

    >>> probe = LinearProbe()
    >>> result = probe.fit(acts, labels)          # acts [n, d], labels [n] ints
    >>> result.accuracy, result.auroc
    """

    def __init__(self, l2: float = 1e-3, max_iter: int = 200, test_fraction: float = 0.25, seed: int = 0) -> None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.l2, self.max_iter, self.test_fraction, self.seed = l2, max_iter, test_fraction, seed
        self.weight: torch.Tensor | None = None  # [n_classes, d] in standardised units
        self.bias: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def _split(self, n: int, groups: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        if groups is None:
            perm = torch.randperm(n, generator=gen)
            cut = int(round(n * (1 - self.test_fraction)))
            return perm[:cut], perm[cut:]
        # Whole groups (e.g. sequences) go to one side, so neighbouring tokens don't leak.
        uniq = groups.unique()
        held = uniq[torch.randperm(len(uniq), generator=gen)[: max(1, int(len(uniq) * self.test_fraction))]]
        test = torch.isin(groups, held)
        return (~test).nonzero()[:, 0], test.nonzero()[:, 0]

    def fit(self, acts: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> ProbeResult:
        """Fit on a random split of ``acts`` [n, d] / ``labels`` [n]; score on the rest."""
        acts, labels = torch.as_tensor(acts).float(), torch.as_tensor(labels).long()
        if acts.ndim != 2 or labels.shape != acts.shape[:1]:
            raise ValueError(f"acts must be [n, d] and labels [n]; got {tuple(acts.shape)} and {tuple(labels.shape)}")
        classes = labels.unique()
        if len(classes) < 2:
            raise ValueError(f"labels hold a single class ({classes.tolist()}); a probe needs at least two")
        train, test = self._split(len(acts), groups)
        self.mean = acts[train].mean(0)
        self.std = acts[train].std(0).clamp_min(1e-6)
        x = (acts - self.mean) / self.std
        n_classes = int(labels.max()) + 1
        w = torch.zeros(n_classes, acts.shape[1], requires_grad=True)
        b = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x[train] @ w.T + b, labels[train]) + self.l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        logits = self.logits(acts)
        return ProbeResult(
            accuracy=accuracy(logits[test], labels[test]), auroc=auroc(logits[test], labels[test]),
            n_train=len(train), n_test=len(test), train_accuracy=accuracy(logits[train], labels[train]),
        )

    def logits(self, acts: torch.Tensor) -> torch.Tensor:
        """Class scores [n, n_classes] for raw activations [n, d]."""
        if self.weight is None:
            raise RuntimeError("the probe is not fitted yet; call fit(acts, labels) first")
        return ((torch.as_tensor(acts).float() - self.mean) / self.std) @ self.weight.T + self.bias

    @property
    def direction(self) -> torch.Tensor:
        """For a binary probe, the unit direction [d] in activation space that raises class 1."""
        if self.weight is None:
            raise RuntimeError("the probe is not fitted yet; call fit(acts, labels) first")
        v = (self.weight[-1] - self.weight[0]) / self.std
        return v / v.norm()
