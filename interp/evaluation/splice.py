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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from saes.metrics import ReconstructionStats

from interp.activations.tokens import TokenSource
from interp.errors import InterpError, OriginWarning, ShapeError
from interp.evaluation.losses import next_token_nll, token_kl

# A hook name, or a transcoder's (hook_in, hook_out) pair.
Hooks = str | tuple[str, str]


class NumbersTable:
    """``to_dict`` and a two-column ``table`` for a dataclass of evaluation numbers."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def table(self) -> str:
        """The numbers as an aligned two-column text table."""
        return two_column_table(self.to_dict())


@dataclass
class SAEEvaluation(NumbersTable):
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



def two_column_table(numbers: dict[str, Any]) -> str:
    """``name  value`` lines, names aligned, floats to 6 significant digits."""
    rows = [(k, v if isinstance(v, (str, int)) else f"{v:.6g}") for k, v in numbers.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def hook_width(model: Any, hook: str) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(s) for s in model.hook_shape(hook))
    return shape, math.prod(shape)


def check_sae_fits(model: Any, sae: Any, hook: Hooks) -> tuple[int, ...]:
    """The per-token shape at ``hook``; raises when the SAE's ``d_in`` does not match it.

    For a transcoder ``hook`` is its ``(hook_in, hook_out)`` pair: ``d_in`` must fit the
    first, ``d_out`` the second, and the shape returned is the output hook's."""
    pair = (hook, hook) if isinstance(hook, str) else tuple(hook)
    model.check_hooks(list(dict.fromkeys(pair)))
    widths = (("d_in", sae.d_in), ("d_out", getattr(sae, "d_out", sae.d_in)))
    for (name, want), where in zip(widths, pair):
        shape, d = hook_width(model, where)
        if want != d:
            raise ShapeError(
                f"the SAE has {name}={want} but {where} of {model.name} has per-token shape {list(shape)} "
                f"(d={d}); use an SAE trained on this hook, or pick the hook it was trained on"
            )
    for problem in origin_mismatches(model, sae, hook):
        warnings.warn(f"{problem}; its figures here say little about it", OriginWarning, stacklevel=3)
    return hook_width(model, pair[1])[0]


def origin_mismatches(model: Any, sae: Any, hook: Hooks) -> list[str]:
    """How the model and hook the SAE's metadata records differ from ``model`` and ``hook``
    (a transcoder's: its ``(hook_in, hook_out)`` pair against both recorded hooks).

    An SAE of another model with the same width splices in without a shape error and gives
    numbers that look like a bad SAE (FVU in the hundreds, negative CE-loss recovered); only
    the recorded origin tells the two apart. Names are compared as paths where both are
    directories, so ``./m`` and ``/abs/m`` are one model."""
    recorded = getattr(sae, "metadata", None) or {}
    problems = []
    trained_model = recorded.get("model_name")
    if trained_model and _model_key(trained_model) != _model_key(getattr(model, "name", None)):
        problems.append(f"the SAE was trained on model {trained_model!r}, not {model.name!r}")
    pair = (hook, None) if isinstance(hook, str) else tuple(hook)
    for key, now in zip(("hook_name", "hook_name_out"), pair):
        trained_hook = recorded.get(key)
        if now is not None and trained_hook and trained_hook != now:
            problems.append(f"the SAE was trained on {trained_hook}, not {now}")
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


@dataclass(frozen=True)
class Splice:
    """A dictionary spliced into a model: it reads ``hook_in`` and its output replaces the
    activation at ``hook_out`` (one hook for an SAE; a transcoder's input and output hooks,
    read in the same forward pass, the input first)."""

    sae: Any
    hook_in: str
    hook_out: str

    @property
    def hooks(self) -> Hooks:
        return self.hook_out if self.hook_in == self.hook_out and not _transcodes(self.sae) else (self.hook_in, self.hook_out)


def _transcodes(sae: Any) -> bool:
    return bool(getattr(sae, "is_transcoder", False))


def splice_of(sae: Any, hook: Hooks | None = None) -> Splice:
    """Where ``sae`` splices in: an SAE at ``hook`` (default its recorded ``hook_name``); a
    transcoder from ``hook = (hook_in, hook_out)``, or from its recorded ``hook_name`` and
    ``hook_name_out`` (a single ``hook`` then names the output hook)."""
    meta = getattr(sae, "metadata", None) or {}
    if not _transcodes(sae):
        hook = hook or meta.get("hook_name")
        if not isinstance(hook, str) or not hook:
            raise InterpError(f"an SAE splices in at one hook, given as a hook name; got {hook!r}")
        return Splice(sae, hook, hook)
    if isinstance(hook, (tuple, list)) and len(hook) == 2:
        hook_in, hook_out = hook
    else:
        hook_in, hook_out = meta.get("hook_name"), hook or meta.get("hook_name_out")
    if not (isinstance(hook_in, str) and hook_in and isinstance(hook_out, str) and hook_out):
        raise InterpError(f"a transcoder reads one hook and replaces another; it records hook_name={hook_in!r}, "
                          f"hook_name_out={hook_out!r}: give hook=(hook_in, hook_out), e.g. "
                          "('blocks.0.hook_resid_mid', 'blocks.0.hook_mlp_out')")
    return Splice(sae, hook_in, hook_out)


def _keep_like(keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``keep [batch, pos]`` broadcast over ``t``'s per-token trailing shape."""
    return keep.view(*keep.shape, *([1] * (t.ndim - keep.ndim)))


def splice_hooks(splices: Sequence[Splice], keep: torch.Tensor) -> list[tuple[str, Any]]:
    """Hooks that put each dictionary's output in place of its ``hook_out`` activation at the
    positions ``keep [batch, pos]`` marks (elsewhere the activation stays). A transcoder's
    input is taken at its ``hook_in`` earlier in the same forward pass, so with several
    transcoders each reads the stream the ones before it have already changed."""
    inputs: dict[int, torch.Tensor] = {}
    hooks: list[tuple[str, Any]] = []
    for n, sp in enumerate(splices):
        if _transcodes(sp.sae):
            def take(t: torch.Tensor, hook: Any = None, n: int = n) -> None:
                inputs[n] = t
            hooks.append((sp.hook_in, take))

        def put(t: torch.Tensor, hook: Any = None, n: int = n, sae: Any = sp.sae) -> torch.Tensor:
            x = inputs.pop(n) if _transcodes(sae) else t
            rec = sae(x.reshape(-1, sae.d_in).to(sae.dtype)).to(t.dtype).reshape(t.shape)
            return torch.where(_keep_like(keep, t), rec, t)
        hooks.append((sp.hook_out, put))
    return hooks


def zero_hooks(splices: Sequence[Splice], keep: torch.Tensor) -> list[tuple[str, Any]]:
    """Hooks that zero each splice's ``hook_out`` activation at the positions ``keep`` marks."""
    def zero(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return t * ~_keep_like(keep, t)
    return [(hook, zero) for hook in dict.fromkeys(sp.hook_out for sp in splices)]


@dataclass
class SpliceTotals:
    """What :func:`evaluate_splices` measures: mean CE over next-token predictions (clean,
    every dictionary spliced in at once, every spliced activation zeroed) and mean KL per
    position, with each dictionary's reconstruction numbers on the clean run's activations."""

    tokens: int
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    kl_spliced: float
    kl_zero: float
    reconstruction: list[dict[str, float]]

    @property
    def ce_loss_recovered(self) -> float:
        """``(CE_zero - CE_spliced) / (CE_zero - CE_clean)``: 1 loses nothing, 0 is as bad as zeroing."""
        gap = self.ce_zero - self.ce_clean
        return (self.ce_zero - self.ce_spliced) / gap if abs(gap) > 1e-12 else float("nan")

    @property
    def kl_recovered(self) -> float:
        """``(KL_zero - KL_spliced) / KL_zero`` (SAEBench's KL score)."""
        return (self.kl_zero - self.kl_spliced) / self.kl_zero if abs(self.kl_zero) > 1e-12 else float("nan")


@torch.no_grad()
def evaluate_splices(
    model: Any,
    splices: Sequence[Splice],
    tokens: Any,
    *,
    batch_size: int = 8,
    attention_mask: torch.Tensor | None = None,
    exclude_bos: bool = True,
    context_length: int | None = None,
    max_tokens: int | None = None,
    text_field: str = "text",
    progress: bool = False,
    desc: str = "eval-sae",
) -> SpliceTotals:
    """Run the model clean, with every dictionary of ``splices`` spliced in at once, and with
    every spliced activation zeroed, on the same tokens (see the module docstring; arguments
    as :func:`evaluate_sae`'s)."""
    if not splices:
        raise InterpError("nothing to splice: give at least one dictionary")
    for sp in splices:
        check_sae_fits(model, sp.sae, sp.hooks)
    device = model.device
    splices = [Splice(sp.sae.to(device).eval(), sp.hook_in, sp.hook_out) for sp in splices]
    sums = {k: 0.0 for k in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero")}
    n_pred = n_pos = 0
    stats = [ReconstructionStats(sp.sae.d_sae) for sp in splices]
    from tqdm.auto import tqdm

    bar = tqdm(total=max_tokens, unit="tok", desc=desc, disable=not progress)
    source = TokenSource.of(tokens, text_field=text_field, context_length=context_length, exclude_bos=exclude_bos,
                            attention_mask=attention_mask)
    captured: dict[str, torch.Tensor] = {}  # the clean run's activations at every hook a splice reads or writes
    watched = list(dict.fromkeys(h for sp in splices for h in (sp.hook_in, sp.hook_out)))
    capture = [(h, _capture_into(captured, h)) for h in watched]
    for batch in source.batches(model, batch_size):
        tok = batch.tokens.to(device)
        attn = batch.attention_mask.to(device)  # always passed: HF warns about unmasked padding otherwise
        keep = source.keep_mask(batch).to(device)
        with model.hooks(capture):
            clean = model(tok, attn)
        with model.hooks(splice_hooks(splices, keep)):
            spliced = model(tok, attn)
        with model.hooks(zero_hooks(splices, keep)):
            zeroed = model(tok, attn)

        valid = (attn[:, 1:] * attn[:, :-1]).float()
        real = attn.float()
        for key, logits in (("ce_clean", clean), ("ce_spliced", spliced), ("ce_zero", zeroed)):
            sums[key] += float((next_token_nll(logits, tok) * valid).sum())
        sums["kl_spliced"] += float((token_kl(clean, spliced) * real).sum())
        sums["kl_zero"] += float((token_kl(clean, zeroed) * real).sum())
        n_pred += int(valid.sum())
        n_pos += int(real.sum())

        for sp, st in zip(splices, stats):
            x = captured[sp.hook_in].reshape(*keep.shape, -1)[keep].float()  # [rows, d_in]
            if x.shape[0]:
                y = captured[sp.hook_out].reshape(*keep.shape, -1)[keep].float() if _transcodes(sp.sae) else None
                st.add(sp.sae, x, y)
        rows = stats[0].rows
        bar.update(rows - bar.n)
        if max_tokens is not None and rows >= max_tokens:
            break
    bar.close()
    if n_pred == 0 or stats[0].rows == 0:
        raise InterpError("no tokens to evaluate: the data is empty or every window is shorter than two tokens")
    return SpliceTotals(
        tokens=stats[0].rows, ce_clean=sums["ce_clean"] / n_pred, ce_spliced=sums["ce_spliced"] / n_pred,
        ce_zero=sums["ce_zero"] / n_pred, kl_spliced=sums["kl_spliced"] / n_pos, kl_zero=sums["kl_zero"] / n_pos,
        reconstruction=[st.result() for st in stats],
    )


def _capture_into(captured: dict[str, torch.Tensor], name: str) -> Any:
    """A hook that keeps its activation in ``captured[name]``."""
    def hook_fn(t: torch.Tensor, hook: Any = None) -> None:
        captured[name] = t.detach()
    return hook_fn


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
        :class:`SAEEvaluation`. A transcoder reads ``hook`` and is spliced in place of the
        hook it records as ``hook_name_out`` (its FVU is that hook's); for both hooks and
        the KL recovered see :func:`interp.evaluation.transcoders.evaluate_transcoder`.
    """
    splice = splice_of(sae, (hook, (getattr(sae, "metadata", None) or {}).get("hook_name_out"))) \
        if _transcodes(sae) else Splice(sae, hook, hook)
    totals = evaluate_splices(model, [splice], tokens, batch_size=batch_size,
                              attention_mask=attention_mask, exclude_bos=exclude_bos, context_length=context_length,
                              max_tokens=max_tokens, text_field=text_field, progress=progress)
    rec = totals.reconstruction[0]
    return SAEEvaluation(
        hook=hook,
        tokens=totals.tokens,
        ce_clean=totals.ce_clean,
        ce_spliced=totals.ce_spliced,
        ce_zero_ablation=totals.ce_zero,
        ce_loss_recovered=totals.ce_loss_recovered,
        kl_spliced=totals.kl_spliced,
        kl_zero_ablation=totals.kl_zero,
        fvu=rec["fvu"],
        explained_variance=1.0 - rec["fvu"],
        mse=rec["mse"],
        l0=rec["l0"],
        dead_fraction=rec["dead_fraction"],
    )
