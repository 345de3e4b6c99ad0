"""A :class:`Dashboard`: the cards of several latents, their views and their JSON export.

A Dashboard is plain data (one :class:`~interp.dashboards.data.LatentCard` per latent), so
the HTML page, the notebook figures and the JSON file (Neuronpedia's field names) are three
views of the same numbers.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from interp.dashboards.data import Example, LatentCard, QuantileGroup, layer_id
from interp.dashboards.render import (
    examples_html,
    latent_figures,
    notebook_html,
    page_html,
)
from saes.formats.durable import atomic_write_text

FORMAT = "interp-feature-dashboard"
VERSION = 1


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity: such values become null."""
    return round(x, 6) if math.isfinite(x) else None


@dataclass
class Dashboard:
    """Feature dashboards of several latents; see :func:`interp.dashboards.build_dashboard`."""

    model_name: str
    hook: str
    dictionary: dict[str, Any]
    n_rows: int
    cards: list[LatentCard]
    labels_source: str | None = None
    seconds: float = 0.0

    @property
    def latents(self) -> list[int]:
        return [c.latent for c in self.cards]

    def card(self, latent: int) -> LatentCard:
        for c in self.cards:
            if c.latent == latent:
                return c
        raise KeyError(f"latent {latent} is not in this dashboard; it shows {self.latents}")

    # ---------------------------------------------------------------- views

    def figures(self, latent: int) -> dict[str, Any]:
        """Plotly figures of one latent: ``"histogram"`` (firing values), ``"logits"`` (promoted and
        suppressed tokens; absent where the hook has no path to the unembedding) and
        ``"logit_histogram"`` (the decoder row's effect on every token's logit)."""
        return latent_figures(self.card(latent))

    def examples_html(self, latent: int) -> str:
        """Top and quantile examples of one latent as HTML, tokens shaded by activation."""
        return examples_html(self.card(latent))

    def to_html(self) -> str:
        """The whole dashboard as one self-contained HTML page (plotly.js inlined)."""
        return page_html(self)

    def save_html(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_html` to ``path`` atomically; it opens offline in any browser."""
        atomic_write_text(path, self.to_html())

    def _repr_html_(self) -> str:
        return notebook_html(self)

    # ---------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        """Neuronpedia-style export (see the README's file formats)."""
        layer = layer_id(self.hook)
        features = []
        for c in self.cards:
            ident = {"modelId": self.model_name, "layer": layer, "index": str(c.latent)}
            activations = [self._activation(ident, e, None) for e in c.top]
            for g in c.quantiles:
                activations += [self._activation(ident, e, g) for e in g.examples]
            features.append({
                **ident,
                "hook": self.hook,
                "frac_nonzero": _num(c.density),
                "n_nonzero": c.n_fire,
                "maxActApprox": _num(c.max_value),
                "freq_hist_data_bar_heights": c.hist_counts,
                "freq_hist_data_bar_values": [_num(x) for x in c.hist_centres],
                "pos_str": [t for t, _ in c.promoted],
                "pos_values": [_num(v) for _, v in c.promoted],
                "neg_str": [t for t, _ in c.suppressed],
                "neg_values": [_num(v) for _, v in c.suppressed],
                "logits_hist_data_bar_heights": c.logit_hist_counts,
                "logits_hist_data_bar_values": [_num(x) for x in c.logit_hist_centres],
                "label_matches": [{"label": m.label, "auroc": _num(m.auroc), "n_positive": m.n_positive,
                                   "scope": m.scope} for m in c.label_matches],
                "reason": c.reason,
                "activations": activations,
            })
        return {"format": FORMAT, "version": VERSION, "modelId": self.model_name, "layer": layer,
                "hook": self.hook, "dictionary": self.dictionary, "n_tokens": self.n_rows,
                "labels_source": self.labels_source, "features": features}

    @staticmethod
    def _activation(ident: dict[str, str], e: Example, group: QuantileGroup | None) -> dict[str, Any]:
        best = max(range(len(e.values)), key=lambda i: e.values[i])
        return {
            **ident,
            "tokens": e.tokens,
            "values": [_num(v) for v in e.values],
            "maxValue": _num(e.values[best]),
            "maxValueTokenIndex": best,
            "qualifyingTokenIndex": e.token_index,
            "row": e.row,
            "binMin": None if group is None else _num(group.lo),
            "binMax": None if group is None else _num(group.hi),
            "binContains": None if group is None else _num(group.contains),
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))
