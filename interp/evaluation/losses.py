"""Per-position next-token losses, written once for splicing, steering and fluency scores.

Both return one number per position and leave the reduction to the caller: evaluation sums
over batches (then divides by the token count), steering averages over one batch of
prompts. Logits are read in float32 whatever the model's dtype, so a half-precision model
is scored as precisely as a full one.

>>> import torch
>>> logits = torch.zeros(1, 3, 5)
>>> next_token_nll(logits, torch.tensor([[0, 1, 2]])).shape, float(token_kl(logits, logits).sum())
(torch.Size([1, 2]), 0.0)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos - 1]``: the loss of token ``t + 1`` under the logits at position ``t``."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def token_kl(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: KL(clean || other) of the next-token distributions at every position."""
    p = F.log_softmax(clean.float(), dim=-1)
    q = F.log_softmax(other.float(), dim=-1)
    return (p.exp() * (p - q)).sum(-1)
