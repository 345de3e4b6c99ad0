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
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from interp.activations.tokens import PackingConfig, TokenBatch, describe_source, iter_batches
from interp.errors import InterpError, ShapeError

DEFAULT_CONTEXT_LENGTH = 128


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


def packing_for(model: Any, context_length: int, prepend_bos: bool | None = None) -> PackingConfig:
    """How text becomes windows for ``model`` (the harvest's rule: BOS first when it has one)."""
    bos, eos = model.bos_token_id, model.eos_token_id
    pad = model.pad_token_id
    prepend = (bos is not None) if prepend_bos is None else prepend_bos
    return PackingConfig(context_length, prepend, bos, eos, pad if pad is not None else (eos if eos is not None else 0))


def token_batches(
    model: Any,
    data: Any,
    batch_size: int,
    *,
    context_length: int | None = None,
    prepend_bos: bool | None = None,
    text_field: str = "text",
    attention_mask: torch.Tensor | None = None,
) -> Iterator[TokenBatch]:
    """``data`` (token ids ``[seq, pos]``, a 1-D token stream, a list of strings, a .txt/.jsonl
    path or a dataset) as batches of windows, packed as the harvest packs them."""
    if isinstance(data, torch.Tensor) and data.ndim == 2 and attention_mask is not None:
        for a in range(0, data.shape[0], batch_size):
            tok = data[a : a + batch_size].to(torch.int64)
            mask = attention_mask[a : a + batch_size].to(torch.int64)
            bos = model.bos_token_id
            yield TokenBatch(tok, mask, (tok[:, 0] == bos) if bos is not None else torch.zeros(len(tok), dtype=torch.bool), a)
        return
    if isinstance(data, (str, os.PathLike)):
        describe_source(data, text_field)  # a missing file or a wrong field fails here, clearly
    if context_length is None:
        context_length = int(data.shape[1]) if isinstance(data, torch.Tensor) and data.ndim == 2 else DEFAULT_CONTEXT_LENGTH
    yield from iter_batches(data, model.tokenizer, packing_for(model, context_length, prepend_bos), batch_size,
                            text_field=text_field)


def keep_mask(batch: TokenBatch, exclude_bos: bool) -> torch.Tensor:
    """``[batch, pos]`` bool: the positions an SAE reads (real tokens, minus BOS if asked)."""
    keep = batch.attention_mask.bool().clone()
    if exclude_bos:
        keep[:, 0] &= ~batch.bos_at_start
    return keep


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
    trained_on = (getattr(sae, "metadata", None) or {}).get("hook_name")
    if trained_on and trained_on != hook:
        warnings.warn(f"the SAE was trained on {trained_on}, not {hook}", stacklevel=3)
    return shape


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the valid next-token predictions."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (nll * valid).sum()


def _kl(clean: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed KL(clean || other) over masked positions."""
    p = F.log_softmax(clean.float(), dim=-1)
    q = F.log_softmax(other.float(), dim=-1)
    kl = (p.exp() * (p - q)).sum(-1)
    return (kl * mask).sum()


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
            ``context_length`` as the harvest does.
        batch_size: windows per forward pass.
        exclude_bos: leave the BOS position alone (see the module docstring).
        max_tokens: stop after about this many evaluated tokens.

    Returns:
        :class:`SAEEvaluation`.
    """
    shape = check_sae_fits(model, sae, hook)
    sae = sae.to(model.device).eval()
    device = model.device
    sums = {k: 0.0 for k in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero", "err", "sq", "nnz")}
    n_pred = n_pos = n_rows = 0
    sum_x: torch.Tensor | None = None
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    from tqdm.auto import tqdm

    bar = tqdm(total=max_tokens, unit="tok", desc="eval-sae", disable=not progress)
    for batch in token_batches(model, tokens, batch_size, context_length=context_length, text_field=text_field,
                               attention_mask=attention_mask):
        tok = batch.tokens.to(device)
        mask = batch.attention_mask.to(device)
        keep = keep_mask(batch, exclude_bos).to(device)
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
        sums["ce_clean"] += float(_next_token_ce(clean, tok, valid))
        sums["ce_spliced"] += float(_next_token_ce(spliced, tok, valid))
        sums["ce_zero"] += float(_next_token_ce(zeroed, tok, valid))
        sums["kl_spliced"] += float(_kl(clean, spliced, real))
        sums["kl_zero"] += float(_kl(clean, zeroed, real))
        n_pred += int(valid.sum())
        n_pos += int(real.sum())

        x = captured["x"].reshape(*keep.shape, -1)[keep].float()  # [rows, d_in]
        if x.shape[0]:
            values, indices = sae.encode_sparse(x)
            x_hat = sae.decode_sparse(values, indices).float()
            z = torch.zeros(x.shape[0], sae.d_sae, device=x.device).scatter_add_(1, indices, values.float())
            sums["err"] += float((x - x_hat).double().pow(2).sum())
            sums["sq"] += float(x.double().pow(2).sum())
            sums["nnz"] += float((z != 0).sum())
            fired |= (z != 0).any(0).cpu()
            xs = x.double().sum(0)
            sum_x = xs if sum_x is None else sum_x + xs
            n_rows += x.shape[0]
        bar.update(x.shape[0])
        if max_tokens is not None and n_rows >= max_tokens:
            break
    bar.close()
    if n_pred == 0 or n_rows == 0:
        raise InterpError("no tokens to evaluate: the data is empty or every window is shorter than two tokens")
    ce_clean, ce_spliced, ce_zero = (sums[k] / n_pred for k in ("ce_clean", "ce_spliced", "ce_zero"))
    gap = ce_zero - ce_clean
    assert sum_x is not None
    total_var = sums["sq"] - float(sum_x.pow(2).sum()) / n_rows
    fvu = sums["err"] / max(total_var, 1e-30)
    return SAEEvaluation(
        hook=hook,
        tokens=n_rows,
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        ce_zero_ablation=ce_zero,
        ce_loss_recovered=(ce_zero - ce_spliced) / gap if abs(gap) > 1e-12 else float("nan"),
        kl_spliced=sums["kl_spliced"] / n_pos,
        kl_zero_ablation=sums["kl_zero"] / n_pos,
        fvu=fvu,
        explained_variance=1.0 - fvu,
        mse=sums["err"] / n_rows,
        l0=sums["nnz"] / n_rows,
        dead_fraction=float((~fired).float().mean()),
    )
