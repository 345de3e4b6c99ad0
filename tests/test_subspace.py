"""Interchange training recovers a planted 2-D subspace; read-outs and axis orientation."""
from __future__ import annotations

import math

import pytest
import torch

from probes.subspace import (InterchangeData, Subspace, knowledge_shares, orient_axes, principal_angles,
                             train_subspace)


def planted_task(n=600, d=24, vocab=6, seed=11, interchange="full"):  # not 0: the init draws with seed 0
    """A downstream read-out that sees h only through a planted plane S = span(s_pk, s_ck).

    The answer is arg-max of R h with R's rows in S; the PK source carries its answer on
    s_pk and the CK source on s_ck, while everything off S is noise that differs between runs.
    """
    g = torch.Generator().manual_seed(seed)
    S = torch.linalg.qr(torch.randn(d, 2, generator=g)).Q  # [d, 2]
    codes = torch.randn(vocab, 2, generator=g) * 3  # answer a lives at codes[a] inside S
    R = codes @ S.T  # [vocab, d]

    def state(pk_answer, ck_answer, noise):
        inside = codes[pk_answer, 0:1] * S[:, 0] + codes[ck_answer, 1:2] * S[:, 1]
        return inside + noise * torch.randn(len(pk_answer), d, generator=g)

    base_pk, base_ck = torch.randint(0, vocab, (n,), generator=g), torch.randint(0, vocab, (n,), generator=g)
    src_ans = torch.randint(0, vocab, (n,), generator=g)
    h_base = state(base_pk, base_ck, 2.0)
    column = torch.arange(n) % 2
    # Source states agree with the base except on the axis they are sources for.
    h_src = state(torch.where(column == 0, src_ans, base_pk), torch.where(column == 1, src_ans, base_ck), 2.0)
    # What the answer is after a perfect swap (of the plane, or of the source's axis only):
    # read out by R on the patched state.
    from probes.subspace import interchange as swap
    target = (swap(S, h_base, h_src, None if interchange == "full" else column) @ R.T).argmax(1)
    # Keep only the counterfactual rows: those where the swap changes the answer.
    changed = target != (h_base @ R.T).argmax(1)
    data = InterchangeData(h_base[changed], h_src[changed], column[changed], target[changed],
                           torch.arange(int(changed.sum())))
    return data, (lambda idx, h: h @ R.T), S


@pytest.mark.parametrize("interchange", ["full", "column"])
def test_interchange_training_recovers_planted_plane_and_stays_orthonormal(interchange):
    data, downstream, S = planted_task(interchange=interchange)
    fit = train_subspace(data, downstream, rank=2, steps=400, lr=0.05, batch_size=512, interchange=interchange)
    assert torch.allclose(fit.U.T @ fit.U, torch.eye(2), atol=1e-5)
    angles = principal_angles(fit.U, S)
    assert angles.max() < math.radians(12), torch.rad2deg(angles)
    assert fit.accuracy > 0.9
    assert sum(fit.losses[-20:]) / 20 < 0.05 * fit.losses[0]
    if interchange == "column":  # routing names the axes: column 0 is PK's direction, column 1 CK's
        assert abs(float(fit.U[:, 0] @ S[:, 0])) > 0.9 and abs(float(fit.U[:, 1] @ S[:, 1])) > 0.9


def test_rank_one_cannot_carry_both_axes():
    data, downstream, S = planted_task()
    rank1 = train_subspace(data, downstream, rank=1, steps=400, lr=0.05, batch_size=512)
    rank2 = train_subspace(data, downstream, rank=2, steps=400, lr=0.05, batch_size=512)
    assert rank1.accuracy < 0.7 < 0.9 < rank2.accuracy


def test_full_interchange_nests_ranks_where_column_routing_does_not():
    """A full swap of rank r+1 can do whatever rank r does, so accuracy does not fall with
    rank; routing each source to one column makes every swap 1-D, so on a task whose
    sources move both coordinates rank 2 column-routed is no better than rank 1."""
    data, downstream, S = planted_task(interchange="full")
    full = [train_subspace(data, downstream, rank=r, steps=400, lr=0.05, batch_size=512).accuracy for r in (1, 2, 3)]
    assert full[0] < 0.7 < 0.9 < min(full[1], full[2])
    column = train_subspace(data, downstream, rank=2, steps=400, lr=0.05, batch_size=512, interchange="column")
    assert column.accuracy < full[1] - 0.15


def test_orientation_and_shares():
    U = torch.eye(4)[:, :2]
    pk_mean = torch.tensor([0.0, -3.0, 0.0, 0.0])  # projects most on column 1, negatively
    ck_mean = torch.tensor([2.0, 0.0, 0.0, 0.0])
    oriented, record = orient_axes(U, pk_mean, ck_mean)
    assert record == {"pk_column": 1, "flipped": [True, False]}
    assert float(oriented[:, 0] @ pk_mean) > 0 and float(oriented[:, 1] @ ck_mean) > 0
    shares = knowledge_shares(torch.stack([pk_mean, ck_mean, pk_mean + ck_mean]), oriented)
    torch.testing.assert_close(shares["pk_share"], torch.tensor([1.0, 0.0, 0.6]))
    torch.testing.assert_close(shares["pk_share"] + shares["ck_share"], torch.ones(3))


def test_subspace_patch_only_moves_the_chosen_coordinate():
    space = Subspace(8, 2, seed=3)
    h, src = torch.randn(5, 8), torch.randn(5, 8)
    col = torch.tensor([0, 1, 0, 1, 1])
    out = space.patch(h, src, col)
    U = space.U.detach()
    coords_out, coords_h, coords_src = out.detach() @ U, h @ U, src @ U
    rows = torch.arange(5)
    torch.testing.assert_close(coords_out[rows, col], coords_src[rows, col])
    torch.testing.assert_close(coords_out[rows, 1 - col], coords_h[rows, 1 - col])
    with pytest.raises(ValueError, match="rank must be between 1 and d=8"):
        Subspace(8, 9)
    full = space.patch(h, src)                      # the whole plane moves
    torch.testing.assert_close(full.detach() @ U, coords_src)
    torch.testing.assert_close(full.detach() - full.detach() @ U @ U.T, h - h @ U @ U.T)


def test_rank_one_reads_a_share_between_its_anchors():
    """Rank 1's read-out is continuous between the PK-only and CK-only anchors, not a sign
    fixed in advance: a state halfway between reads 0.5."""
    u = torch.eye(3)[:, :1]
    pk_mean, ck_mean = torch.tensor([4.0, 1, 0]), torch.tensor([-2.0, 0, 1])
    oriented, record = orient_axes(u, pk_mean, ck_mean)
    shares = knowledge_shares(torch.stack([pk_mean, ck_mean, (pk_mean + ck_mean) / 2, 3 * pk_mean]), oriented,
                              tuple(record["anchors"]))
    torch.testing.assert_close(shares["pk_share"], torch.tensor([1.0, 0.0, 0.5, 1.0]))
