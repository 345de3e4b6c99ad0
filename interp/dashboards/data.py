"""What one latent's panel holds: a :class:`LatentCard` and its examples, as plain data.

The builder fills the cards, :mod:`.render` draws them and :mod:`.dashboard` gathers them
into a :class:`~interp.dashboards.dashboard.Dashboard`; this module imports neither.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Example:
    """One shown context: ``tokens``/``values`` per token; the chosen row is ``token_index``."""

    row: int
    value: float
    tokens: list[str]
    token_ids: list[int]
    values: list[float]
    token_index: int
    group: str  # "top" or "quantile"


@dataclass
class QuantileGroup:
    """Firing values in ``[lo, hi]`` (``contains``: their share of the firing tokens) and examples."""

    lo: float
    hi: float
    contains: float
    examples: list[Example] = field(default_factory=list)


@dataclass
class LabelMatch:
    """A labelled concept the latent detects: AUROC of its codes for the concept over all rows,
    the concept's row count, where the label comes from (``"token"``: the row's own word;
    ``"document"``: the text around it; ``"given"``: the caller's labels) and the lower end of
    the AUROC's ~95% interval, by which matches are ranked."""

    label: str
    auroc: float
    n_positive: int
    scope: str = "given"
    auroc_lower: float = float("nan")


@dataclass
class LatentCard:
    """Everything one feature panel shows."""

    latent: int
    n_rows: int
    n_fire: int
    max_value: float
    min_value: float
    hist_edges: list[float]
    hist_counts: list[int]
    top: list[Example]
    quantiles: list[QuantileGroup]
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    logit_hist_counts: list[int] = field(default_factory=list)
    logit_hist_centres: list[float] = field(default_factory=list)
    logits_note: str | None = None
    label_matches: list[LabelMatch] = field(default_factory=list)
    reason: str = "requested"  # why the latent is on the page (the caller's words)

    @property
    def density(self) -> float:
        """Fraction of tokens where the latent fires (code != 0)."""
        return self.n_fire / self.n_rows if self.n_rows else 0.0

    @property
    def hist_centres(self) -> list[float]:
        return [(a + b) / 2 for a, b in zip(self.hist_edges[:-1], self.hist_edges[1:])]


def layer_id(hook: str) -> str:
    """Neuronpedia-style source id of a hook: ``blocks.2.hook_resid_post`` -> ``2-resid_post``."""
    match = re.match(r"^blocks\.(\d+)\.(.*)$", hook)
    if not match:
        return hook.replace("hook_", "").replace(".", "_")
    site = match.group(2).replace("hook_", "").replace(".", "_")
    return f"{match.group(1)}-{site}"
