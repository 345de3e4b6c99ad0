"""Transcoders spliced in place of the MLPs they replace.

A transcoder reads the MLP's input (``blocks.L.ln2.hook_normalized`` where the model has
that hook, else ``blocks.L.hook_resid_mid``) and writes its output (``blocks.L.hook_mlp_out``).
Spliced in, it replaces the MLP's output at the evaluated positions with its own, computed
from the input of the same forward pass (:func:`interp.evaluation.splice.splice_hooks`, the
splicing every dictionary evaluation here shares).

* :func:`evaluate_transcoder`: one transcoder in place of its MLP: CE-loss recovered
  ``(CE_zero - CE_spliced) / (CE_zero - CE_clean)`` against zeroing the MLP's output, KL
  recovered ``(KL_zero - KL_spliced) / KL_zero`` (SAEBench's KL score) with the KLs
  themselves, the FVU of the MLP output, L0 and dead fraction;
* :func:`evaluate_replacement`: every MLP replaced at once (the replacement model): its CE
  and KL against the clean model and against zeroing every replaced MLP, and each
  transcoder's reconstruction numbers on the clean run.

Positions and averages as in :mod:`interp.evaluation.splice`: BOS and padding are left
alone, CE is averaged over real next-token predictions, KL over real positions.

>>> import saes
>>> from interp.evaluation.transcoders import evaluate_transcoder, mlp_hooks
>>> from interp.model.tiny import tiny_model
>>> model = tiny_model("gpt2")
>>> hooks = mlp_hooks(model, 0)
>>> hooks
('blocks.0.hook_resid_mid', 'blocks.0.hook_mlp_out')
>>> tc = saes.TopKSAE(model.d_model, 64, k=4, d_out=model.d_model, metadata={"hook_name": hooks[0],
...                   "hook_name_out": hooks[1]})
>>> result = evaluate_transcoder(model, tc, ["the cat sat on the mat", "a dog ran under the tree"], context_length=8)
>>> result.tokens, round(result.l0, 1)
(14, 4.0)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from interp.errors import InterpError
from interp.evaluation.splice import (
    NumbersTable,
    Hooks,
    Splice,
    evaluate_splices,
    splice_of,
    two_column_table,
)

# Where a transcoder of layer L reads and writes, in order of preference for the input.
MLP_INPUTS = ("ln2.hook_normalized", "hook_resid_mid")
MLP_OUTPUT = "hook_mlp_out"


def mlp_hooks(model: Any, layer: int) -> tuple[str, str]:
    """``(hook_in, hook_out)`` of layer ``layer``'s MLP: its normalised input
    (``ln2.hook_normalized``) where the model has that hook, else ``hook_resid_mid``, and
    ``hook_mlp_out``."""
    names = set(model.hook_names())
    out = f"blocks.{layer}.{MLP_OUTPUT}"
    if out not in names:
        raise InterpError(f"{model.name} has no {out} (layers 0 to {model.n_layers - 1}); pick a layer it has")
    for hook in MLP_INPUTS:
        if f"blocks.{layer}.{hook}" in names:
            return f"blocks.{layer}.{hook}", out
    raise InterpError(f"{model.name} has neither {' nor '.join(f'blocks.{layer}.{h}' for h in MLP_INPUTS)} "
                      "(a parallel-residual block has no MLP input of its own); give the input hook explicitly")


@dataclass
class TranscoderEvaluation(NumbersTable):
    """What :func:`evaluate_transcoder` measures (averages over the evaluated tokens)."""

    hook_in: str
    hook_out: str
    tokens: int
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    kl_spliced: float
    kl_zero_ablation: float
    kl_recovered: float
    fvu: float
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float


@dataclass
class ReplacementEvaluation(NumbersTable):
    """What :func:`evaluate_replacement` measures: the model with every given MLP replaced.

    Attributes:
        ce_replacement, kl_replacement: CE and KL(clean || replacement) of the replacement model.
        ce_zero_ablation, kl_zero_ablation: the same with every replaced MLP's output zeroed.
        ce_loss_recovered, kl_recovered: the replacement's share of the gap the zeroing opens.
        layers: per transcoder its hooks and reconstruction numbers on the clean run
            (``fvu``, ``mse``, ``l0``, ``dead_fraction``).
    """

    tokens: int
    ce_clean: float
    ce_replacement: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    kl_replacement: float
    kl_zero_ablation: float
    kl_recovered: float
    layers: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        """The model's numbers, then one line per replaced MLP."""
        head = two_column_table({k: v for k, v in self.to_dict().items() if k != "layers"})
        rows = [f"{'hook_in':<28} {'hook_out':<24} {'fvu':>8} {'l0':>7} {'dead':>6}"]
        rows += [f"{r['hook_in']:<28} {r['hook_out']:<24} {r['fvu']:>8.4f} {r['l0']:>7.1f} {r['dead_fraction']:>6.3f}"
                 for r in self.layers]
        return head + "\n\n" + "\n".join(rows)


def _check_transcoder(tc: Any, what: str) -> None:
    if not getattr(tc, "is_transcoder", False):
        raise InterpError(f"{what} is an SAE (it reconstructs the hook it reads); evaluate it with evaluate_sae, or "
                          "give a transcoder (an SAE built with d_out)")


def evaluate_transcoder(model: Any, transcoder: Any, tokens: Any, hooks: Hooks | None = None,
                        **options: Any) -> TranscoderEvaluation:
    """``transcoder`` spliced in place of the MLP output it was trained on.

    Args:
        model: a HookedModel.
        transcoder: a :class:`saes.SAE` built with ``d_out`` (a transcoder).
        tokens: as :func:`interp.evaluation.splice.evaluate_sae` takes them.
        hooks: ``(hook_in, hook_out)``; default the hooks the transcoder records (a single
            hook name the output hook).
        options: ``batch_size``, ``attention_mask``, ``exclude_bos``, ``context_length``,
            ``max_tokens``, ``text_field``, ``progress`` (as :func:`evaluate_sae`).
    """
    _check_transcoder(transcoder, "the dictionary")
    splice = splice_of(transcoder, hooks)
    totals = evaluate_splices(model, [splice], tokens, desc="eval-transcoder", **options)
    rec = totals.reconstruction[0]
    return TranscoderEvaluation(
        hook_in=splice.hook_in, hook_out=splice.hook_out, tokens=totals.tokens, ce_clean=totals.ce_clean,
        ce_spliced=totals.ce_spliced, ce_zero_ablation=totals.ce_zero, ce_loss_recovered=totals.ce_loss_recovered,
        kl_spliced=totals.kl_spliced, kl_zero_ablation=totals.kl_zero, kl_recovered=totals.kl_recovered,
        fvu=rec["fvu"], explained_variance=1.0 - rec["fvu"], mse=rec["mse"], l0=rec["l0"],
        dead_fraction=rec["dead_fraction"],
    )


def evaluate_replacement(model: Any, transcoders: Sequence[Any], tokens: Any, **options: Any) -> ReplacementEvaluation:
    """The replacement model: every transcoder of ``transcoders`` (each at the hooks it
    records) in place of its MLP at once, each reading the stream the earlier ones changed.
    ``options`` as for :func:`evaluate_transcoder`."""
    if not transcoders:
        raise InterpError("a replacement model needs at least one transcoder")
    splices: list[Splice] = []
    for i, tc in enumerate(transcoders):
        _check_transcoder(tc, f"dictionary {i}")
        splices.append(splice_of(tc))
    outs = [sp.hook_out for sp in splices]
    if len(set(outs)) != len(outs):
        raise InterpError(f"two transcoders replace the same hook ({min(h for h in outs if outs.count(h) > 1)}); "
                          "give one per MLP")
    totals = evaluate_splices(model, splices, tokens, desc="eval-replacement", **options)
    layers = [{"hook_in": sp.hook_in, "hook_out": sp.hook_out, **{k: rec[k] for k in ("fvu", "mse", "l0", "dead_fraction")}}
              for sp, rec in zip(splices, totals.reconstruction)]
    return ReplacementEvaluation(
        tokens=totals.tokens, ce_clean=totals.ce_clean, ce_replacement=totals.ce_spliced,
        ce_zero_ablation=totals.ce_zero, ce_loss_recovered=totals.ce_loss_recovered,
        kl_replacement=totals.kl_spliced, kl_zero_ablation=totals.kl_zero, kl_recovered=totals.kl_recovered,
        layers=layers,
    )
