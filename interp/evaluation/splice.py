"""Model-level evaluation of an SAE: splice its reconstruction in and see what breaks.

:func:`evaluate_sae` runs the model three ways on the same tokens:

* clean;
* spliced: the activation at ``hook`` replaced by the SAE's reconstruction;
* zero-ablated: the activation at ``hook`` replaced by zeros;

and reports

* ``ce_loss_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)`` (1 = the SAE loses
  nothing, 0 = as bad as deleting the activation),
* ``kl_spliced``: mean KL(clean || spliced) of the next-token distributions (and
  ``kl_zero_ablation`` for scale),
* the reconstruction metrics at the hook: FVU, explained variance, MSE, L0 and the
  fraction of latents that never fired on these tokens.

Interventions apply only at the positions an SAE is trained on: real tokens (not padding)
and, with ``exclude_bos`` (the harvest default), not the BOS position, whose activation is
an outlier no SAE models. Cross-entropy and KL are averaged over every real next-token
prediction.

>>> import saes
>>> from interp.evaluation.splice import evaluate_sae
>>> from interp.model.tiny import tiny_model
>>> model = tiny_model("gpt2")
>>> sae = saes.TopKSAE(model.d_model, 64, k=4)
>>> texts = ["the cat sat on the mat", "a dog ran under the tree"]
>>> result = evaluate_sae(model, sae, "blocks.0.hook_resid_post", texts, context_length=8)
>>> result.tokens, round(result.l0, 1)
(14, 4.0)
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch

from saes.metrics import ReconstructionStats

from interp.activations.tokens import TokenSource
from interp.errors import InterpError, OriginWarning, ShapeError
from interp.evaluation.losses import next_token_nll, token_kl


@dataclass
class SAEEvaluation:
    """What :func:`evaluate_sae` measures (all averages over the evaluated tokens)."""

    hook: str
    tokens: int
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    kl_spliced: float
    kl_zero_ablation: float
    fvu: float
    explained_variance: float
    mse: float
    l0: float
    dead_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The numbers as an aligned two-column text table."""
        rows = [(k, v if isinstance(v, (str, int)) else f"{v:.6g}") for k, v in self.to_dict().items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def hook_width(model: Any, hook: str) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(s) for s in model.hook_shape(hook))
    return shape, math.prod(shape)


def check_sae_fits(model: Any, sae: Any, hook: str) -> tuple[int, ...]:
    """The per-token shape at ``hook``; raises when the SAE's ``d_in`` does not match it."""
    model.check_hooks(hook)
    shape, d = hook_width(model, hook)
    if sae.d_in != d:
        raise ShapeError(
            f"the SAE has d_in={sae.d_in} but {hook} of {model.name} has per-token shape {list(shape)} "
            f"(d={d}); use an SAE trained on this hook, or pick the hook it was trained on"
        )
    for problem in origin_mismatches(model, sae, hook):
        warnings.warn(f"{problem}; its figures here say little about it", OriginWarning, stacklevel=3)
    return shape


def origin_mismatches(model: Any, sae: Any, hook: str) -> list[str]:
    """How the model and hook the SAE's metadata records differ from ``model`` and ``hook``.

    An SAE of another model with the same width splices in without a shape error and gives
    numbers that look like a bad SAE (FVU in the hundreds, negative CE-loss recovered); only
    the recorded origin tells the two apart. Names are compared as paths where both are
    directories, so ``./m`` and ``/abs/m`` are one model."""
    recorded = getattr(sae, "metadata", None) or {}
    problems = []
    trained_model = recorded.get("model_name")
    if trained_model and _model_key(trained_model) != _model_key(getattr(model, "name", None)):
        problems.append(f"the SAE was trained on model {trained_model!r}, not {model.name!r}")
    trained_hook = recorded.get("hook_name")
    if trained_hook and trained_hook != hook:
        problems.append(f"the SAE was trained on {trained_hook}, not {hook}")
    return problems


def _model_key(name: Any) -> str:
    from pathlib import Path

    from interp.model.loading import DEFAULT_MODEL_ALIASES

    text = str(name)
    if text in DEFAULT_MODEL_ALIASES:
        return "world"
    path = Path(text).expanduser()
    if path.is_dir():
        from interp.world import default_model_path

        resolved = path.resolve()
        return "world" if resolved == default_model_path().resolve() else str(resolved)
    return text


@torch.no_grad()
def evaluate_sae(
    model: Any,
    sae: Any,
    hook: str,
    tokens: Any,
    *,
    batch_size: int = 8,
    attention_mask: torch.Tensor | None = None,
    exclude_bos: bool = True,
    context_length: int | None = None,
    max_tokens: int | None = None,
    text_field: str = "text",
    progress: bool = False,
) -> SAEEvaluation:
    """CE-loss recovered, KL and reconstruction metrics of ``sae`` spliced in at ``hook``.

    Args:
        model: a HookedModel.
        sae: a :class:`saes.SAE` whose ``d_in`` is the hook's per-token size.
        hook: the hook name (e.g. ``blocks.6.hook_resid_post``).
        tokens: token ids ``[seq, pos]`` (with ``attention_mask`` when padded), a list of
            texts, or a .txt/.jsonl path; text is packed into windows of
            ``context_length`` as the harvest does. Or a :class:`TokenSource` holding the
            data options (``attention_mask``, ``exclude_bos``, ``context_length``, ``text_field``).
        batch_size: windows per forward pass.
        exclude_bos: leave the BOS position alone (see the module docstring).
        max_tokens: stop after about this many evaluated tokens.

    Returns:
        :class:`SAEEvaluation`.
    """
    shape = check_sae_fits(model, sae, hook)
    sae = sae.to(model.device).eval()
    device = model.device
    sums = {k: 0.0 for k in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero")}
    n_pred = n_pos = 0
    stats = ReconstructionStats(sae.d_sae)
    from tqdm.auto import tqdm

    bar = tqdm(total=max_tokens, unit="tok", desc="eval-sae", disable=not progress)
    source = TokenSource.of(tokens, text_field=text_field, context_length=context_length, exclude_bos=exclude_bos,
                            attention_mask=attention_mask)
    for batch in source.batches(model, batch_size):
        tok = batch.tokens.to(device)
        mask = batch.attention_mask.to(device)
        keep = source.keep_mask(batch).to(device)
        keep_b = keep.view(*keep.shape, *([1] * len(shape)))
        attn = mask  # always passed: HF warns about unmasked padding otherwise
        captured: dict[str, torch.Tensor] = {}

        def capture(t: torch.Tensor, hook: Any = None) -> None:
            captured["x"] = t.detach()

        def splice(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
            flat = t.reshape(-1, sae.d_in).to(sae.dtype)
            rec = sae(flat).to(t.dtype).reshape(t.shape)
            return torch.where(keep_b, rec, t)

        def zero(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return t * ~keep_b

        with model.hooks([(hook, capture)]):
            clean = model(tok, attn)
        with model.hooks([(hook, splice)]):
            spliced = model(tok, attn)
        with model.hooks([(hook, zero)]):
            zeroed = model(tok, attn)

        valid = (mask[:, 1:] * mask[:, :-1]).float()
        real = mask.float()
        for key, logits in (("ce_clean", clean), ("ce_spliced", spliced), ("ce_zero", zeroed)):
            sums[key] += float((next_token_nll(logits, tok) * valid).sum())
        sums["kl_spliced"] += float((token_kl(clean, spliced) * real).sum())
        sums["kl_zero"] += float((token_kl(clean, zeroed) * real).sum())
        n_pred += int(valid.sum())
        n_pos += int(real.sum())

        x = captured["x"].reshape(*keep.shape, -1)[keep].float()  # [rows, d_in]
        if x.shape[0]:
            stats.add(sae, x)
        bar.update(x.shape[0])
        if max_tokens is not None and stats.rows >= max_tokens:
            break
    bar.close()
    if n_pred == 0 or stats.rows == 0:
        raise InterpError("no tokens to evaluate: the data is empty or every window is shorter than two tokens")
    ce_clean, ce_spliced, ce_zero = (sums[k] / n_pred for k in ("ce_clean", "ce_spliced", "ce_zero"))
    gap = ce_zero - ce_clean
    rec = stats.result()
    return SAEEvaluation(
        hook=hook,
        tokens=stats.rows,
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        ce_zero_ablation=ce_zero,
        ce_loss_recovered=(ce_zero - ce_spliced) / gap if abs(gap) > 1e-12 else float("nan"),
        kl_spliced=sums["kl_spliced"] / n_pos,
        kl_zero_ablation=sums["kl_zero"] / n_pos,
        fvu=rec["fvu"],
        explained_variance=1.0 - rec["fvu"],
        mse=rec["mse"],
        l0=rec["l0"],
        dead_fraction=rec["dead_fraction"],
    )
