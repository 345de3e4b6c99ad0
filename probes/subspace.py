"""Rank-r interchange subspaces (distributed alignment search) and the PK/CK read-out.

The method of Islam, Atanasova & Augenstein (2025), "Multi-Step Knowledge Interaction
Analysis via Rank-2 Subspace Disentanglement": an orthonormal ``U ∈ R^{d×r}`` is trained so
that swapping the projection of a hidden state onto the subspace with a source's,

    h ← (I − U Uᵀ) h_base + U Uᵀ h_source        (the "full" interchange, the default),

makes the model give the source's answer; sources are the parametric-knowledge (PK,
"ignore the context") and context-knowledge (CK, "use only the context") renderings. This
is the interchange of the reference code (``LowRankOrthogonalProjection`` in nnpatch): the
whole subspace moves, so a rank-r subspace contains every rank-(r−1) one. The variant
``interchange="column"`` routes each source to its own column (PK to column 0, CK to
column 1) and swaps that coordinate only, a 1-D swap whatever the rank.

The training core only needs two callables, so it runs on any model:
``downstream(index, h) -> logits`` continues the forward pass from the patched states, and
the hidden states of bases and sources come precomputed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations


class Subspace(nn.Module):
    """An orthonormal basis ``U`` [d, rank], kept orthonormal by a parametrisation."""

    def __init__(self, d: int, rank: int, seed: int = 0) -> None:
        super().__init__()
        if not 1 <= rank <= d:
            raise ValueError(f"rank must be between 1 and d={d}, got {rank}")
        gen = torch.Generator().manual_seed(seed)
        self.basis = nn.Linear(d, rank, bias=False)
        with torch.no_grad():
            self.basis.weight.copy_(torch.linalg.qr(torch.randn(d, rank, generator=gen)).Q.T)
        parametrizations.orthogonal(self.basis, "weight")

    @property
    def U(self) -> torch.Tensor:
        """[d, rank] with ``UᵀU = I``."""
        return self.basis.weight.T

    def patch(self, h_base: torch.Tensor, h_source: torch.Tensor,
              column: torch.Tensor | None = None) -> torch.Tensor:
        """The interchange, shapes [n, d]. ``column`` None: swap the whole subspace,
        ``h + U Uᵀ (h_src − h)``; else swap only the coordinate on ``column[i]`` of row i."""
        return interchange(self.U, h_base, h_source, column)


def interchange(U: torch.Tensor, h_base: torch.Tensor, h_source: torch.Tensor,
                column: torch.Tensor | None = None) -> torch.Tensor:
    """``h_base`` with its projection on ``U`` [d, r] (or on column ``column[i]`` only) taken
    from ``h_source``; [n, d]."""
    if column is None:
        return h_base + ((h_source - h_base) @ U) @ U.T
    u = U.T[column]  # [n, d]
    return h_base + u * ((h_source - h_base) * u).sum(-1, keepdim=True)


@dataclass
class InterchangeData:
    """One training set. Row i swaps from ``h_source[i]`` into ``h_base[i]`` on ``column[i]``.

    ``target[i]`` is the answer token of the source; ``base_index[i]`` tells ``downstream``
    which base prompt row i belongs to.
    """

    h_base: torch.Tensor  # [n, d]
    h_source: torch.Tensor  # [n, d]
    column: torch.Tensor  # [n] long: 0 for PK-only sources, 1 for CK-only (0 for all with rank 1)
    target: torch.Tensor  # [n] long
    base_index: torch.Tensor  # [n] long


@dataclass
class SubspaceFit:
    """A trained subspace and its training record."""

    U: torch.Tensor  # [d, rank]
    losses: list[float] = field(default_factory=list)
    accuracy: float = float("nan")  # interchange accuracy on the training rows
    interchange: str = "full"


def train_subspace(
    data: InterchangeData,
    downstream: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rank: int = 2,
    steps: int = 200,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    interchange: str = "full",
) -> SubspaceFit:
    """Fit ``U`` by interchange training with cross-entropy on the source's answer.

    ``downstream(base_index [b], h_patched [b, d]) -> logits [b, vocab]`` finishes the
    forward pass of base prompts with the patched hidden state. ``interchange`` is "full"
    (swap the subspace) or "column" (``data.column`` picks the one coordinate swapped).
    """
    n, d = data.h_base.shape
    if n == 0:
        raise ValueError("no interchange rows: keep at least one item the model answers correctly in all renderings")
    column = routing(data, rank, interchange)
    space = Subspace(d, rank, seed)
    opt = torch.optim.Adam(space.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        patched = space.patch(data.h_base[idx], data.h_source[idx], None if column is None else column[idx])
        loss = F.cross_entropy(downstream(data.base_index[idx], patched), data.target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        logits = downstream(data.base_index, space.patch(data.h_base, data.h_source, column))  # all rows
        acc = float((logits.argmax(-1) == data.target).float().mean())
    return SubspaceFit(space.U.detach().clone(), losses, acc, interchange)


def routing(data: InterchangeData, rank: int, interchange: str) -> torch.Tensor | None:
    """The column each row swaps on (None for the full interchange)."""
    if interchange == "full":
        return None
    if interchange != "column":
        raise ValueError(f"interchange must be 'full' or 'column', got {interchange!r}")
    return data.column.clamp(max=rank - 1)


def orient_axes(U: torch.Tensor, pk_mean: torch.Tensor, ck_mean: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Name and orient the axes: PK is the column the mean PK-only state projects on most.

    Rank 2: ``U`` with columns ordered (PK, CK) and signs flipped so each anchor projects
    positively. Rank 1: the sign that puts the PK anchor above the CK anchor, and both
    anchors' coordinates (the continuous read-out of :func:`knowledge_shares` runs between
    them). Higher ranks are returned as they are (their axes have no names). The record
    says what was done.
    """
    proj_pk, proj_ck = U.T @ pk_mean, U.T @ ck_mean
    if U.shape[1] == 1:
        sign = 1.0 if proj_pk[0] >= proj_ck[0] else -1.0
        return U * sign, {"pk_column": 0, "flipped": [sign < 0],
                          "anchors": [float(proj_pk[0] * sign), float(proj_ck[0] * sign)]}
    if U.shape[1] > 2:
        return U, {"pk_column": None, "flipped": []}
    pk_col = int(proj_pk.abs().argmax())
    ck_col = 1 - pk_col
    ordered = U[:, [pk_col, ck_col]].clone()
    signs = torch.stack([proj_pk[pk_col].sign(), proj_ck[ck_col].sign()])
    signs[signs == 0] = 1
    return ordered * signs, {"pk_column": pk_col, "flipped": (signs < 0).tolist()}


def knowledge_shares(hidden: torch.Tensor, U: torch.Tensor,
                     anchors: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
    """Per-token coordinates ``c = Uᵀh`` and PK/CK shares from hidden states [..., d].

    Rank 2, oriented (PK, CK): ``PK = |c_pk| / (|c_pk| + |c_ck|)``, ``CK = 1 − PK``.
    Rank 1 with ``anchors`` (the PK-only and CK-only mean coordinates, from
    :func:`orient_axes`): where ``c`` sits between them, ``(c − a_ck) / (a_pk − a_ck)``
    clipped to [0, 1], so a token halfway between reads 0.5; without anchors, the sign
    (1 where ``c > 0``). Higher ranks have no named axes and no shares.
    """
    coords = hidden.float() @ U
    if U.shape[1] == 1:
        c = coords[..., 0]
        if anchors is None:
            pk = (c > 0).float()
        else:
            a_pk, a_ck = anchors
            pk = ((c - a_ck) / (a_pk - a_ck + 1e-12)).clamp(0, 1)
    elif U.shape[1] == 2:
        mag = coords.abs()
        pk = mag[..., 0] / (mag.sum(-1) + 1e-12)
    else:
        raise ValueError(f"PK/CK shares are read from rank 1 or 2, not {U.shape[1]}: higher ranks are "
                         "compared by interchange accuracy only")
    return {"coords": coords, "pk_share": pk, "ck_share": 1 - pk}


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of A [d, p] and B [d, q]."""
    qa, qb = torch.linalg.qr(A.double()).Q, torch.linalg.qr(B.double()).Q
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1, 1)
    return torch.arccos(cos)
