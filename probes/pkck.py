"""The PK/CK analysis on a model: data, interchange training at a hook, read-out over answers.

Runs on any :class:`interp.HookedModel` given prompts rendered three ways (``ignore`` the
context: a parametric-knowledge source; ``use`` only the context: a context-knowledge
source; ``consider`` it: the base). The world model's renderings come from
:func:`interp.world.pkck_items` / :func:`interp.world.pkck_batch`.

The layer is explicit everywhere: the subspace is trained at ``hook`` and read at ``hook``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probes.subspace import InterchangeData, SubspaceFit, knowledge_shares, orient_axes, train_subspace

IGNORE, USE, CONSIDER = 0, 1, 2  # rendering order in the token tensors
INTERACTIONS = ("supportive", "conflicting", "other")


@dataclass
class PKCKData:
    """Three renderings per item and what the model answers under each.

    ``tokens`` [n, 3, pos] (renderings ignore, use, consider; equal lengths, right-padded),
    ``last_pos`` [n] the last prompt position, ``expected`` [n, 3] the expected answers,
    ``answers``/``confidence`` [n, 3] the model's greedy answer and its probability.
    """

    tokens: torch.Tensor
    last_pos: torch.Tensor
    expected: torch.Tensor
    answers: torch.Tensor
    confidence: torch.Tensor
    item_type: list[str] = field(default_factory=list)  # the data's own label, when it has one

    @property
    def correct(self) -> torch.Tensor:
        """[n] answered as expected in all three renderings."""
        return (self.answers == self.expected).all(1)

    def interaction(self) -> list[str]:
        """Typed from the model's three answers: supportive when memory and context agree and
        the base gives that answer; conflicting when they differ and the base follows one."""
        out = []
        for pk, ck, base in self.answers.tolist():
            if pk == ck == base:
                out.append("supportive")
            elif pk != ck and base in (pk, ck):
                out.append("conflicting")
            else:
                out.append("other")
        return out


def _prompt_mask(tokens: torch.Tensor, last_pos: torch.Tensor) -> torch.Tensor:
    """Attention mask [n, pos]: 1 up to each row's ``last_pos``, 0 on the right padding after it.

    Under a causal model the outputs read here (at or before ``last_pos``) are the same with or
    without it; it tells the model which columns are padding instead of leaving HF to guess.
    """
    return (torch.arange(tokens.shape[1], device=tokens.device) <= last_pos.to(tokens.device)[:, None]).long()


@torch.no_grad()
def answer_all(model: Any, tokens: torch.Tensor, last_pos: torch.Tensor, expected: torch.Tensor,
               item_type: Sequence[str] = (), batch_size: int = 64) -> PKCKData:
    """Run every rendering and record the greedy answer at the last prompt position."""
    n = tokens.shape[0]
    flat = tokens.reshape(n * 3, -1)
    pos = last_pos.repeat_interleave(3)
    answers, conf = [], []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size].to(model.device)
        chunk_pos = pos[start:start + batch_size].to(model.device)
        logits = model(chunk, attention_mask=_prompt_mask(chunk, chunk_pos))[torch.arange(len(chunk)), chunk_pos]
        probs = logits.float().softmax(-1)
        p, a = probs.max(-1)
        answers.append(a.cpu())
        conf.append(p.cpu())
    return PKCKData(tokens, last_pos, expected, torch.cat(answers).reshape(n, 3), torch.cat(conf).reshape(n, 3),
                    list(item_type))


def check_hook(model: Any, hook: str) -> str:
    """``hook`` if the PK/CK subspace can live there: a residual-stream hook of ``model``
    (one ``[d_model]`` vector per token, where interchange writes the whole state), else a
    ValueError saying which hooks are."""
    model.check_hooks(hook)  # a typo lists the close matches
    if not hook.split(".")[-1].startswith("hook_resid_") or len(tuple(model.hook_shape(hook))) != 1:
        raise ValueError(f"{hook} is not a residual-stream hook: the PK/CK subspace is trained and read in the "
                         "residual stream (blocks.L.hook_resid_pre, hook_resid_mid or hook_resid_post)")
    return hook


@torch.no_grad()
def states_at(model: Any, tokens: torch.Tensor, positions: torch.Tensor, hook: str, batch_size: int = 64) -> torch.Tensor:
    """Hidden states [n, d] at ``hook`` at one position per row of ``tokens`` [n, pos]."""
    out = []
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size]
        chunk_pos = positions[start:start + batch_size]
        _, cache = model.run_with_cache(chunk, names=[hook], return_logits=False, device="cpu",
                                        attention_mask=_prompt_mask(chunk, chunk_pos))
        rows = torch.arange(len(chunk))
        out.append(cache[hook][rows, chunk_pos].float())
    return torch.cat(out)


def patched_downstream(model: Any, base_tokens: torch.Tensor, base_pos: torch.Tensor, hook: str):
    """``downstream(index, h) -> logits`` that finishes base runs with ``h`` written at ``hook``."""

    def downstream(index: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        tokens = base_tokens[index].to(model.device)
        pos = base_pos[index].to(model.device)
        rows = torch.arange(len(index), device=model.device)

        def write(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            x[rows, pos] = h.to(x.dtype)
            return x

        with model.hooks([(hook, write)]):
            return model(tokens, attention_mask=_prompt_mask(tokens, pos))[rows, pos].float()

    return downstream


@dataclass
class PKCKSubspace:
    """A trained, oriented subspace and where it lives."""

    U: torch.Tensor  # [d, rank], columns (PK, CK) for rank 2
    hook: str
    rank: int
    fit: SubspaceFit
    orientation: dict
    n_train: int

    def shares(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        anchors = self.orientation.get("anchors")
        return knowledge_shares(hidden, self.U, tuple(anchors) if anchors else None)

    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file: ``U`` and, in its header, the hook, rank and training record."""
        from saes.formats.durable import atomic_save_tensors

        meta = {"hook": self.hook, "rank": self.rank, "n_train": self.n_train, "orientation": self.orientation,
                "interchange_accuracy": self.fit.accuracy, "losses": self.fit.losses,
                "interchange": self.fit.interchange}
        atomic_save_tensors(Path(path), {"U": self.U.contiguous()}, {"pkck": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> PKCKSubspace:
        from saes.formats.durable import read_tensors

        tensors, header = read_tensors(path, require_checksum=lambda m: "pkck" in m)
        if "pkck" not in header or "U" not in tensors:
            raise ValueError(f"{path} holds no PK/CK subspace; write one with PKCKSubspace.save()")
        meta = json.loads(header["pkck"])
        fit = SubspaceFit(tensors["U"], meta.get("losses", []), meta.get("interchange_accuracy", float("nan")),
                          meta.get("interchange", "column"))
        return cls(tensors["U"], meta["hook"], meta["rank"], fit, meta.get("orientation", {}), meta.get("n_train", 0))


def usable_items(data: PKCKData, min_confidence: float = 0.5) -> torch.Tensor:
    """Indices of items answered as expected, confidently, in all three renderings."""
    return (data.correct & (data.confidence >= min_confidence).all(1)).nonzero()[:, 0]


def interchange_rows(model: Any, data: PKCKData, idx: torch.Tensor, hook: str) -> tuple[InterchangeData, Any, dict]:
    """Rows for items ``idx``: each base (*consider*) with its PK source, then with its CK
    source; the target is the source's answer. Returns the rows, the downstream of the
    base prompts, and the states per rendering."""
    tokens, pos = data.tokens[idx], data.last_pos[idx]
    h = {r: states_at(model, tokens[:, r], pos, hook) for r in (IGNORE, USE, CONSIDER)}
    n = len(idx)
    rows = InterchangeData(
        h_base=torch.cat([h[CONSIDER], h[CONSIDER]]),
        h_source=torch.cat([h[IGNORE], h[USE]]),
        column=torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)]),
        target=torch.cat([data.answers[idx, IGNORE], data.answers[idx, USE]]),
        base_index=torch.cat([torch.arange(n), torch.arange(n)]),
    )
    return rows, patched_downstream(model, tokens[:, CONSIDER], pos, hook), h


def train_pkck(model: Any, data: PKCKData, hook: str, rank: int = 2, steps: int = 300, lr: float = 1e-2,
               batch_size: int = 32, seed: int = 0, min_confidence: float = 0.5, interchange: str = "full",
               items: torch.Tensor | None = None) -> PKCKSubspace:
    """Interchange training at ``hook``, last prompt token, on items answered right everywhere
    (only those among ``items`` when given: keep the rest for held-out evaluation).

    Each base (*consider*) is patched from its ignore-the-context (PK) source and from its
    use-only-the-context (CK) source; the target is the source's answer. ``interchange``
    "full" swaps the whole subspace (the reference's interchange); "column" sends PK to
    column 0 and CK to column 1 and swaps that coordinate only.
    """
    idx = usable_items(data, min_confidence)
    if items is not None:
        idx = idx[torch.isin(idx, items)]
    if len(idx) == 0:
        raise ValueError("no item is answered confidently and correctly in all three renderings; "
                         "the model has not learnt the task (or lower min_confidence)")
    rows, downstream, h = interchange_rows(model, data, idx, hook)
    with frozen_weights(model):
        fit = train_subspace(rows, downstream, rank=rank, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                             interchange=interchange)
    U, orientation = orient_axes(fit.U, h[IGNORE].mean(0), h[USE].mean(0))
    return PKCKSubspace(U, hook, rank, fit, orientation, len(idx))


class frozen_weights:
    """Within the block the model's weights need no gradients (only what is being fitted
    against the model, a subspace or a mask, is trained); the flags are restored after."""

    def __init__(self, model: Any) -> None:
        self.params = [p for p in model.model.parameters() if p.requires_grad]

    def __enter__(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc: Any) -> None:
        for p in self.params:
            p.requires_grad_(True)


@torch.no_grad()
def interchange_accuracy(model: Any, data: PKCKData, hook: str, U: torch.Tensor, items: torch.Tensor,
                         interchange: str = "full") -> dict[str, float]:
    """Interchange accuracy of ``U`` [d, r] at ``hook`` on ``items`` (usable ones only).

    ``informative``: on the rows whose source answer differs from the base's, the share the
    patch moves to the source's answer (the references' metric; with no intervention it is
    0 by construction). ``all_rows`` counts every row, and ``no_intervention`` is what
    ``all_rows`` would be without patching (rows where source and base already agree).
    """
    idx = items[torch.isin(items, usable_items(data))]
    if len(idx) == 0:
        raise ValueError("no usable held-out item: use more items or a smaller training share")
    rows, downstream, _ = interchange_rows(model, data, idx, hook)
    from probes.subspace import interchange as swap, routing

    column = routing(rows, U.shape[1], interchange)

    pred = downstream(rows.base_index, swap(U.float(), rows.h_base, rows.h_source, column)).argmax(-1)
    base_answer = data.answers[idx, CONSIDER].repeat(2)
    informative = rows.target != base_answer
    hit = pred == rows.target
    return {"informative": float(hit[informative].float().mean()) if informative.any() else float("nan"),
            "all_rows": float(hit.float().mean()), "no_intervention": float((~informative).float().mean()),
            "n_informative": int(informative.sum()), "n_rows": len(hit)}


def _interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95% t interval over seeds, JSON-ready."""
    from dataclasses import asdict

    from probes.metrics import mean_interval

    return asdict(mean_interval(values, method="t"))


def interchange_sweep(model: Any, data: PKCKData, hooks: Sequence[str], ranks: Sequence[int] = (1, 2, 3, 4),
                      seeds: Sequence[int] = (0, 1, 2), holdout: float = 0.3, interchange: str = "full",
                      steps: int = 150, lr: float = 2e-2) -> dict[str, Any]:
    """Interchange accuracy on held-out informative rows, per hook and rank, over seeds.

    Each seed draws its own split of the usable items (``holdout`` of them held out) and its
    own initialisation. Beside each rank: a random orthonormal subspace of the same rank
    (the control) on the same held-out rows, and the no-intervention share. Returns
    ``{hook: {rank: {"accuracy": {mean, lo, hi, n}, "random": ..., "per_seed": [...]}}}``
    plus the settings.
    """
    usable = usable_items(data)
    if len(usable) < 10:
        raise ValueError(f"only {len(usable)} items are answered right in all three renderings; need at least 10")
    out: dict[str, Any] = {"interchange": interchange, "holdout": holdout, "seeds": list(seeds),
                           "n_usable_items": len(usable), "hooks": {}}
    for hook in hooks:
        per_rank = {}
        for rank in ranks:
            runs = []
            for seed in seeds:
                gen = torch.Generator().manual_seed(1000 + seed)
                perm = usable[torch.randperm(len(usable), generator=gen)]
                n_test = max(1, int(round(holdout * len(perm))))
                test, train = perm[:n_test], perm[n_test:]
                space = train_pkck(model, data, hook, rank=rank, steps=steps, lr=lr, seed=seed,
                                   interchange=interchange, items=train)
                held = interchange_accuracy(model, data, hook, space.U, test, interchange)
                rand_U = torch.linalg.qr(torch.randn(space.U.shape[0], rank, generator=gen)).Q
                control = interchange_accuracy(model, data, hook, rand_U, test, interchange)
                runs.append({"seed": seed, "held_out": held, "random": control["informative"],
                             "train_accuracy": space.fit.accuracy})
            per_rank[rank] = {"accuracy": _interval([r["held_out"]["informative"] for r in runs]),
                              "random": _interval([r["random"] for r in runs]),
                              "no_intervention_all_rows": _interval([r["held_out"]["no_intervention"] for r in runs]),
                              "per_seed": runs}
        out["hooks"][hook] = per_rank
    return out


@torch.no_grad()
def read_generation(model: Any, space: PKCKSubspace, prompts: torch.Tensor, last_pos: torch.Tensor,
                    max_new_tokens: int = 6, teacher: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """PK/CK shares at ``space.hook`` for the answer and what follows it, step by step.

    Without ``teacher`` the model generates greedily from each prompt (``prompts`` [n, pos],
    cut at ``last_pos``); with ``teacher`` [n, pos'] the given continuation is read under
    teacher forcing. Step 0 is the last prompt token (where the answer is predicted).
    Returns ``pk_share`` and ``ck_share`` [n, steps] and the coordinates [n, steps, rank].
    """
    rows_pk, rows_coords = [], []
    for i in range(len(prompts)):
        prompt = prompts[i, : int(last_pos[i]) + 1][None]
        if teacher is None:
            full = model.generate(prompt, max_new_tokens=max_new_tokens).tokens
        else:
            full = teacher[i: i + 1, : int(last_pos[i]) + 1 + max_new_tokens]
        _, cache = model.run_with_cache(full, names=[space.hook], return_logits=False, device="cpu")
        h = cache[space.hook][0, int(last_pos[i]):].float()
        shares = space.shares(h)
        rows_pk.append(shares["pk_share"])
        rows_coords.append(shares["coords"])
    steps = min(len(r) for r in rows_pk)
    pk = torch.stack([r[:steps] for r in rows_pk])
    return {"pk_share": pk, "ck_share": 1 - pk, "coords": torch.stack([c[:steps] for c in rows_coords]),
            "hook": space.hook}


def shares_by_type(readout: dict[str, torch.Tensor], types: Sequence[str]) -> dict[str, list[float]]:
    """Mean PK share per step for each interaction type."""
    out = {}
    for t in sorted(set(types)):
        rows = torch.tensor([x == t for x in types])
        out[t] = readout["pk_share"][rows].mean(0).tolist()
    return out


def shares_figure(by_type: dict[str, list[float]], hook: str, title: str = "PK share by step") -> Any:
    """Plotly curves of the PK share per generated step, one per interaction type."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t, values in by_type.items():
        fig.add_trace(go.Scatter(y=values, mode="lines+markers", name=t))
    fig.update_layout(title=f"{title} (read at {hook})", xaxis_title="step (0 = answer position)",
                      yaxis_title="PK share", yaxis_range=[0, 1])
    return fig


def separation_auroc(pk_share: torch.Tensor, supportive: torch.Tensor) -> float:
    """How well the balance of the two sources tells supportive from conflicting items.

    Supportive items draw on both sources, so their PK share sits near 0.5; conflicting
    items lean on one source. ``balance = 1 − 2·|share − 0.5|`` scores that; this returns
    its AUROC for ``supportive`` [n] bool against ``pk_share`` [n]. A rank-1 read-out's share
    is a sign (0 or 1), so its balance is constant and the AUROC is 0.5.
    """
    from probes.metrics import binary_auroc

    balance = 1 - (pk_share - 0.5).abs() * 2
    return float(binary_auroc(balance, supportive))


@dataclass
class RankComparison:
    """Rank-1 and rank-2 subspaces trained on the same items at the same hook, and their read-outs.

    ``readouts[rank]`` holds ``pk_share`` [n, steps] over the greedy answer of the *consider*
    rendering of every item; ``by_type[rank]`` the per-step mean share for each
    interaction type (typed from the model's three answers, see :meth:`PKCKData.interaction`)
    and ``by_item_type[rank]`` for each planted item type, when the data has them.
    """

    hook: str
    spaces: dict[int, PKCKSubspace]
    interaction: list[str]
    readouts: dict[int, dict[str, torch.Tensor]]
    separation: dict[int, list[float]]  # per step: AUROC of the balance, supportive vs conflicting
    by_type: dict[int, dict[str, list[float]]]
    by_item_type: dict[int, dict[str, list[float]]]

    def strength(self, rank: int) -> float:
        """How far the best step's separation is from chance, in either direction:
        ``max_t 2·|AUROC_t − 0.5|`` (0 = none, 1 = perfect)."""
        return max((2 * abs(a - 0.5) for a in self.separation[rank] if a == a), default=float("nan"))

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: per rank the interchange accuracy, the supportive/conflicting
        separation AUROC and the mean PK share per step by interaction type."""
        counts = {t: self.interaction.count(t) for t in sorted(set(self.interaction))}
        return {
            "hook": self.hook,
            "items_read": len(self.interaction),
            "interaction_counts": counts,
            "ranks": {
                str(r): {"n_train": s.n_train, "interchange_accuracy": s.fit.accuracy,
                         "separation_auroc_by_step": self.separation[r], "separation_strength": self.strength(r),
                         "pk_share_by_type": self.by_type[r],
                         "pk_share_by_item_type": self.by_item_type[r], "orientation": s.orientation}
                for r, s in self.spaces.items()
            },
        }


def compare_ranks(model: Any, data: PKCKData, hook: str, ranks: Sequence[int] = (1, 2), steps: int = 150,
                  lr: float = 2e-2, max_new_tokens: int = 4, seed: int = 0, interchange: str = "full") -> RankComparison:
    """Train one subspace per rank at ``hook`` and read each over the model's own answers.

    Every rank sees the same training items and is read on the same items: those typed
    supportive, conflicting or other from the model's answers, in their *consider* rendering.
    """
    if any(r not in (1, 2) for r in ranks):
        raise ValueError(f"ranks {list(ranks)}: read-outs are defined for ranks 1 and 2; sweep higher ranks "
                         "with interchange_sweep")
    spaces = {r: train_pkck(model, data, hook, rank=r, steps=steps, lr=lr, seed=seed, interchange=interchange)
              for r in ranks}
    types = data.interaction()
    prompts, last = data.tokens[:, CONSIDER], data.last_pos
    supportive = torch.tensor([t == "supportive" for t in types])
    pair = torch.tensor([t in ("supportive", "conflicting") for t in types])
    readouts, separation, by_type, by_item = {}, {}, {}, {}
    both = 0 < int(supportive[pair].sum()) < int(pair.sum())
    for r, space in spaces.items():
        out = read_generation(model, space, prompts, last, max_new_tokens=max_new_tokens)
        readouts[r] = out
        shares = out["pk_share"][pair]
        separation[r] = [separation_auroc(shares[:, s], supportive[pair]) if both else float("nan")
                         for s in range(shares.shape[1])]
        by_type[r] = shares_by_type(out, types)
        by_item[r] = shares_by_type(out, data.item_type) if data.item_type else {}
    return RankComparison(hook, spaces, types, readouts, separation, by_type, by_item)


def rank_figure(comparison: RankComparison) -> Any:
    """Plotly: the PK share at the answer position, by interaction type, rank 1 beside rank 2."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ranks = sorted(comparison.readouts)
    fig = make_subplots(rows=1, cols=len(ranks), shared_yaxes=True,
                        subplot_titles=[f"rank {r}: supportive/conflicting separation {comparison.strength(r):.2f}"
                                        for r in ranks])
    colours = {"supportive": "#2b8cbe", "conflicting": "#e34a33", "other": "#999999"}
    for col, r in enumerate(ranks, start=1):
        first = comparison.readouts[r]["pk_share"][:, 0]
        for t in sorted(set(comparison.interaction)):
            mask = torch.tensor([x == t for x in comparison.interaction])
            fig.add_trace(go.Box(y=first[mask].tolist(), name=t, marker_color=colours.get(t), boxpoints="all",
                                 jitter=0.4, showlegend=col == 1, legendgroup=t), row=1, col=col)
    fig.update_layout(title=f"PK share at the answer position, rank 1 vs rank 2 (read at {comparison.hook})",
                      yaxis_title="PK share", yaxis_range=[-0.05, 1.05])
    return fig
