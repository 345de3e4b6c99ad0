"""Semi-nonnegative matrix factorisation of MLP activations (Shafran, Geiger, Geva 2025).

Factorises MLP hidden activations ``A ∈ R^{d_mlp × N}`` (TransformerLens hook
``blocks.L.mlp.hook_post``, given here token-major as ``[N, d_mlp]``) as ``A ≈ Z Y`` with
mixed-sign, column-sparse features ``Z ∈ R^{d_mlp × r}`` and non-negative per-token
coefficients ``Y ∈ R^{r × N}``. One iteration:

1. ``Z ← A Yᵀ (Y Yᵀ + εI)⁻¹`` (least squares);
2. keep the ⌈s·d_mlp⌉ largest-magnitude entries of each column of Z (the only sparsity);
3. rescale each row of Y to unit norm, moving the scale into Z;
4. multiplicative semi-NMF update of Ding, Li & Jordan (2010):
   ``Yᵀ ← Yᵀ ⊙ sqrt(([AᵀZ]⁺ + Yᵀ[ZᵀZ]⁻) / ([AᵀZ]⁻ + Yᵀ[ZᵀZ]⁺ + ε))``;
5. track ``‖A − ZY‖²`` and keep the best factors; stop after ``patience`` iterations
   without relative improvement.

Results are exposed token-major to match the rest of the toolkit: ``features`` is ``Zᵀ``
``[rank, d_mlp]`` and ``coefficients`` is ``Yᵀ`` ``[n_tokens, rank]``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saes.errors import FormatError
from saes.formats import schema
from saes.formats.durable import (
    atomic_save_tensors,
    atomic_write_text,
    check_replaceable,
    ensure_directory,
    read_tensors_checked,
    remove_stale_temporaries,
    require_finite,
)

# A dense [N, d_mlp] float32 matrix plus its factors must fit comfortably in memory.
DEFAULT_MAX_TOKENS = 200_000
SNMF_TENSORS = "snmf.safetensors"
SNMF_JSON = "snmf.json"
SNMF_FIELDS = {"rank": schema.Field("int", minimum=1), "d_mlp": schema.Field("int", minimum=1),
               "best_iteration": schema.Field("int", minimum=-1), "loss_history": schema.Field("list"),
               "tensors_sha256": schema.Field("str", optional=True)}


def _pos(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() + x) / 2


def _neg(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() - x) / 2


def sparsify_columns(Z: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the ``keep`` largest-magnitude entries in each column of ``Z`` [d, r]."""
    idx = Z.abs().topk(keep, dim=0).indices
    return torch.zeros_like(Z).scatter_(0, idx, Z.gather(0, idx))


def semi_nmf_coefficient_step(A: torch.Tensor, Z: torch.Tensor, Yt: torch.Tensor, eps: float,
                              AtZ: torch.Tensor | None = None) -> torch.Tensor:
    """The multiplicative update of ``Yᵀ`` [N, r] for fixed ``Z`` [d, r]; keeps ``Yᵀ ≥ 0``.

    ``AtZ`` [N, r] may be passed in when the caller computed it more cheaply (sparse Z).
    """
    AtZ = A.T @ Z if AtZ is None else AtZ
    ZtZ = Z.T @ Z  # [r, r]
    numer = _pos(AtZ) + Yt @ _neg(ZtZ)
    denom = _neg(AtZ) + Yt @ _pos(ZtZ) + eps
    return Yt * torch.sqrt(numer / denom)


def sparse_AtZ(A: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """``Aᵀ Z`` [N, r] exploiting a column-sparse ``Z`` [d, r]: O(N·nnz) instead of O(N·d·r)."""
    return torch.sparse.mm(Z.T.to_sparse(), A).T


def times_Yt(A: torch.Tensor, Yt: torch.Tensor) -> torch.Tensor:
    """``A Yᵀ`` [d, r] for ``A`` [d, N], computed as ``(Y Aᵀ)ᵀ``: a wide output is much faster
    on CPU BLAS than the narrow one, for the same product."""
    return (Yt.T @ A.T).T


def error_from_products(A_sq: float, Z: torch.Tensor, AY: torch.Tensor, Yt: torch.Tensor) -> float:
    """``‖A − Z Y‖²`` from ``‖A‖²`` and ``AY = A Yᵀ`` [d, r], without forming the d×N residual.

    ‖A − ZY‖² = ‖A‖² − 2⟨Z, A Yᵀ⟩ + ⟨ZᵀZ, Y Yᵀ⟩; the small products are summed in float64.
    """
    Z64 = Z.double()
    cross = float((Z64 * AY.double()).sum())
    gram = float(((Z64.T @ Z64) * (Yt.double().T @ Yt.double())).sum())
    return max(A_sq - 2 * cross + gram, 0.0)


def reconstruction_error(A: torch.Tensor, Z: torch.Tensor, Yt: torch.Tensor) -> float:
    """``‖A − Z Y‖²_F`` with ``A`` [d, N], ``Z`` [d, r], ``Yᵀ`` [N, r]."""
    return float((A - Z @ Yt.T).pow(2).sum())


@dataclass
class SNMFResult:
    """Fitted factors, token-major. ``features`` [rank, d_mlp]; ``coefficients`` [n_tokens, rank]."""

    features: torch.Tensor
    coefficients: torch.Tensor
    loss_history: list[float]
    best_iteration: int
    config: dict = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> None:
        """``snmf.safetensors`` (features, coefficients) plus ``snmf.json``; each written
        atomically, and ``snmf.json`` records the sha256 of the tensors it goes with, so a save
        killed between the two files is refused on loading instead of mixing two saves."""
        out = Path(directory)
        ensure_directory(out)
        meta = {"architecture": "snmf", "rank": self.features.shape[0], "d_mlp": self.features.shape[1],
                "best_iteration": self.best_iteration, "loss_history": self.loss_history, **self.config}
        for name in (SNMF_TENSORS, SNMF_JSON):  # both refused before either is written
            check_replaceable(out / name)
        remove_stale_temporaries(out, (SNMF_TENSORS, SNMF_JSON))  # left by saves killed mid-write
        meta["tensors_sha256"] = atomic_save_tensors(
            out / SNMF_TENSORS, {"features": self.features, "coefficients": self.coefficients})
        atomic_write_text(out / SNMF_JSON, json.dumps(meta, indent=2))

    @torch.no_grad()
    def encode(self, acts: torch.Tensor, n_iter: int = 100, eps: float = 1e-8) -> torch.Tensor:
        """Non-negative coefficients ``[n, rank]`` of new tokens ``acts`` [n, d_mlp] on these features:
        the non-negative least-squares fit ``min ‖acts − Y·features‖, Y ≥ 0`` with the features fixed.

        ``coefficients`` only covers the tokens the factors were fitted on. For held-out
        tokens the features stay fixed and the fit's own coefficient update (the
        multiplicative semi-NMF step, which never raises ``‖A − ZY‖``) runs ``n_iter`` times
        from the least-squares solution clamped at zero: clamping alone is not the best
        non-negative fit, and a multiplicative update cannot move a coefficient off an exact
        zero, so the start is lifted slightly above it.
        """
        A = torch.as_tensor(acts).to(self.features.device, torch.float32)
        if A.ndim != 2 or A.shape[1] != self.features.shape[1]:
            raise ValueError(f"acts must be [n_tokens, {self.features.shape[1]}] (the features' d_mlp); "
                             f"got shape {tuple(A.shape)}")
        Z = self.features.T.float()  # [d, r]
        Yt = torch.linalg.lstsq(Z, A.T).solution.T.clamp_min(0)  # [n, r]
        Yt = Yt + 1e-3 * Yt.mean().clamp_min(eps)
        AtZ = A @ Z  # the features are fixed, so this product is the same every step
        for _ in range(n_iter):
            Yt = semi_nmf_coefficient_step(A.T, Z, Yt, eps, AtZ=AtZ)
        return Yt

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Reconstructed activations ``[n, d_mlp]`` from coefficients ``[n, rank]``."""
        return coefficients.to(self.features.dtype) @ self.features

    def as_dictionary(self, n_iter: int = 100) -> SNMFDictionary:
        """These features behind the SAE interface (``encode_sparse``/``decode_sparse``), so
        the same evaluation code (CE-loss recovered, FVU, L0) and dashboards read them."""
        return SNMFDictionary(self, n_iter)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SNMFResult:
        """The result :meth:`save` wrote to ``directory``, checked: the two files from one save,
        tensors finite and of the shapes ``snmf.json`` gives (else :class:`~saes.FormatError`)."""
        d = Path(directory)
        meta = schema.read_json(d / SNMF_JSON, FormatError)
        meta = schema.check(meta, SNMF_FIELDS, str(d / SNMF_JSON), FormatError, warn_unknown=False,
                            required=("rank", "d_mlp", "best_iteration", "loss_history"))
        # Only this package writes them: the checksum is required.
        tensors, _, digest = read_tensors_checked(d / SNMF_TENSORS, require_checksum=True)
        bound = meta.pop("tensors_sha256", None)
        if bound is not None and bound != digest:
            raise FormatError(
                f"{d}: {SNMF_TENSORS} and {SNMF_JSON} come from different saves: the last save was interrupted; "
                "save the result again"
            )
        expected = {"features": [meta["rank"], meta["d_mlp"]], "coefficients": [None, meta["rank"]]}
        for name, shape in expected.items():
            t = tensors.get(name)
            if t is None or not t.is_floating_point() or t.ndim != 2 or any(
                    want is not None and want != got for want, got in zip(shape, t.shape)):
                found = "nothing" if t is None else f"{t.dtype} {list(t.shape)}"
                raise FormatError(f"{d / SNMF_TENSORS}: tensor {name!r} must be floating point of shape "
                                  f"{['n_tokens' if w is None else w for w in shape]} ({SNMF_JSON}), found {found}")
        require_finite(tensors, d / SNMF_TENSORS, FormatError,
                       "the fit that wrote it diverged, or the file is damaged: fit again")
        history = meta.pop("loss_history")
        best = meta.pop("best_iteration")
        for key in ("architecture", "rank", "d_mlp"):
            meta.pop(key, None)
        return cls(tensors["features"], tensors["coefficients"], history, best, meta)


class SNMFDictionary(torch.nn.Module):
    """An :class:`SNMFResult` as a dictionary: codes are the non-negative coefficients of
    :meth:`SNMFResult.encode` (held-out tokens get their own fit), all ``rank`` of them per
    token, so ``encode_sparse`` returns every index and L0 counts the non-zero ones."""

    def __init__(self, result: SNMFResult, n_iter: int = 100) -> None:
        super().__init__()
        self.result, self.n_iter = result, n_iter
        self.d_sae, self.d_in = result.features.shape

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[n, rank] non-negative coefficients of ``x`` [n, d_mlp]."""
        return self.result.encode(x.reshape(-1, self.d_in), n_iter=self.n_iter).reshape(*x.shape[:-1], self.d_sae)

    def encode_sparse(self, x: torch.Tensor, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.encode(x)
        return codes, torch.arange(self.d_sae, device=codes.device).expand_as(codes)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        dense = torch.zeros(*values.shape[:-1], self.d_sae, dtype=values.dtype, device=values.device)
        return self.result.decode(dense.scatter_add_(-1, indices, values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``[..., d_mlp]`` of ``x`` through the features."""
        return self.result.decode(self.encode(x)).to(x.dtype)


class SNMF:
    """Semi-NMF of MLP activations with column-sparse features.

    >>> acts = torch.relu(torch.randn(500, 64))          # [n_tokens, d_mlp]
    >>> result = SNMF(rank=8, sparsity=0.1, max_iter=20).fit(acts)
    >>> tuple(result.features.shape), tuple(result.coefficients.shape)
    ((8, 64), (500, 8))
    >>> bool((result.coefficients >= 0).all()), int((result.features[0] != 0).sum())
    (True, 7)
    """

    def __init__(self, rank: int, sparsity: float = 0.01, init: str = "random", max_iter: int = 500,
                 patience: int = 20, tol: float = 1e-4, seed: int = 0, device: str | torch.device | None = None,
                 dtype: str = "float32", eps: float = 1e-8, max_tokens: int = DEFAULT_MAX_TOKENS,
                 sparsify: bool = True, n_init: int = 1) -> None:
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        if not 0 < sparsity <= 1:
            raise ValueError(f"sparsity is the kept fraction of neurons per feature, in (0, 1]; got {sparsity}")
        if init not in ("random", "svd", "kmeans"):
            raise ValueError(f"init must be 'random', 'svd' or 'kmeans', got {init!r}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.rank, self.sparsity, self.init = rank, sparsity, init
        self.max_iter, self.patience, self.tol, self.seed, self.eps = max_iter, patience, tol, seed, eps
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, dtype)
        self.max_tokens = max_tokens
        self.sparsify = sparsify  # off only to check the update's monotonicity
        # The objective is non-convex: several random/k-means starts, keeping the best, avoid
        # most poor local optima. The SVD start is deterministic, so it runs once.
        self.n_init = 1 if init == "svd" else n_init

    def _matrix(self, A) -> torch.Tensor:
        if hasattr(A, "batches") and hasattr(A, "__len__"):  # an ActivationStore
            if len(A) > self.max_tokens:
                raise ValueError(
                    f"the store holds {len(A)} tokens but SNMF holds all of them in memory and is capped at "
                    f"max_tokens={self.max_tokens}; pass SNMF(max_tokens=...) or a slice of the store"
                )
            A = torch.cat([b for b in A.batches(4096, shuffle=False)])
        A = torch.as_tensor(A)
        if A.ndim != 2:
            raise ValueError(f"SNMF takes activations [n_tokens, d_mlp]; got shape {tuple(A.shape)}")
        if A.shape[0] == 0:
            raise ValueError("SNMF got no tokens: the activation matrix is empty")
        if A.shape[0] > self.max_tokens:
            raise ValueError(
                f"{A.shape[0]} tokens exceed max_tokens={self.max_tokens} (SNMF keeps the dense matrix in memory); "
                "subsample the tokens or raise SNMF(max_tokens=...)"
            )
        if not torch.isfinite(A).all():
            bad = (~torch.isfinite(A)).any(1).nonzero()[:5, 0].tolist()
            raise ValueError(f"activations contain NaN or inf (first bad token rows: {bad}); clean them before fitting")
        if self.rank > min(A.shape):
            raise ValueError(f"rank {self.rank} exceeds min(n_tokens, d_mlp) = {min(A.shape)}")
        return A.to(self.device, self.dtype)

    def _init(self, A: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial ``(Z [d, r], Yᵀ [N, r] ≥ 0)``; A is [d, N]."""
        d, n = A.shape
        if self.init == "svd":
            Yt = self._nndsvd_init(A)
        elif self.init == "kmeans":
            Yt = self._kmeans_init(A.T, gen)
        else:
            Yt = torch.rand(n, self.rank, generator=gen, dtype=A.dtype, device="cpu").to(A.device)
        return torch.zeros(d, self.rank, dtype=A.dtype, device=A.device), Yt

    def _nndsvd_init(self, A: torch.Tensor) -> torch.Tensor:
        """NNDSVD-style coefficients: per singular pair, the dominant sign-part of v."""
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        Yt = torch.empty(A.shape[1], self.rank, dtype=A.dtype, device=A.device)
        for j in range(self.rank):
            u, v = U[:, j], Vh[j]
            pos_mass = _pos(u).norm() * _pos(v).norm()
            neg_mass = _neg(u).norm() * _neg(v).norm()
            part = _pos(v) if pos_mass >= neg_mass else _neg(v)
            Yt[:, j] = torch.sqrt(S[j] * max(pos_mass, neg_mass)) * part / part.norm().clamp_min(self.eps)
        # Multiplicative updates cannot leave an exact zero: lift them slightly.
        return Yt + 1e-3 * Yt.mean()

    def _kmeans_init(self, X: torch.Tensor, gen: torch.Generator, iters: int = 10) -> torch.Tensor:
        """Soft cluster memberships from a few rounds of k-means on the tokens [N, d]."""
        n = X.shape[0]
        centers = X[torch.randperm(n, generator=gen)[: self.rank].to(X.device)].clone()
        for _ in range(iters):
            assign = torch.cdist(X, centers).argmin(1)
            for c in range(self.rank):
                members = X[assign == c]
                if len(members):
                    centers[c] = members.mean(0)
        Yt = torch.full((n, self.rank), 0.1, dtype=X.dtype, device=X.device)
        Yt[torch.arange(n), torch.cdist(X, centers).argmin(1)] = 1.0
        return Yt

    def fit(self, A) -> SNMFResult:
        """Fit ``A`` ([n_tokens, d_mlp] tensor or an ActivationStore at ``mlp.hook_post``)."""
        A = self._matrix(A).T.contiguous()  # [d, N]
        gen = torch.Generator().manual_seed(self.seed)
        runs = [self._fit_once(A, gen) for _ in range(self.n_init)]
        return min(runs, key=lambda r: r.loss_history[r.best_iteration])

    def _fit_once(self, A: torch.Tensor, gen: torch.Generator) -> SNMFResult:
        Z, Yt = self._init(A, gen)
        keep = math.ceil(self.sparsity * A.shape[0])
        eye = torch.eye(self.rank, dtype=A.dtype, device=A.device)
        best = (math.inf, Z, Yt, -1)
        history: list[float] = []
        stale = 0
        A_sq = float(A.double().pow(2).sum())
        AY = times_Yt(A, Yt)  # [d, r]; carried from the end of one iteration to the start of the next
        for it in range(self.max_iter):
            # A Yᵀ (Y Yᵀ + εI)⁻¹; the Gram matrix is symmetric positive definite, so Cholesky.
            Z = torch.cholesky_solve(AY.T, torch.linalg.cholesky(Yt.T @ Yt + self.eps * eye)).T
            if self.sparsify:
                Z = sparsify_columns(Z, keep)
            scale = Yt.norm(dim=0).clamp_min(self.eps)  # row norms of Y
            Yt, Z = Yt / scale, Z * scale
            AtZ = sparse_AtZ(A, Z) if self.sparsify and keep * 4 < A.shape[0] else None
            Yt = semi_nmf_coefficient_step(A, Z, Yt, self.eps, AtZ)
            AY = times_Yt(A, Yt)
            loss = error_from_products(A_sq, Z, AY, Yt)
            history.append(loss)
            if loss < best[0] * (1 - self.tol):
                stale = 0
            else:
                stale += 1
            if loss < best[0]:
                best = (loss, Z.clone(), Yt.clone(), it)
            if stale >= self.patience:
                break
        _, Z, Yt, best_it = best
        config = {"sparsity": self.sparsity, "init": self.init, "seed": self.seed, "n_init": self.n_init,
                  "dtype": str(self.dtype)[6:]}
        return SNMFResult(Z.T.contiguous().cpu(), Yt.contiguous().cpu(), history, best_it, config)


def hierarchical(features: torch.Tensor, rank: int, **kwargs) -> tuple[SNMFResult, torch.Tensor]:
    """Coarse features whose non-negative combinations give the fine ones.

    Factorises the fine features ``[r_fine, d_mlp]`` again at a smaller ``rank``; returns the
    coarse result and the non-negative mixing matrix ``[r_fine, rank]`` (fine ≈ mixing @ coarse).
    """
    if rank >= features.shape[0]:
        raise ValueError(f"the coarse rank {rank} must be smaller than the fine rank {features.shape[0]}")
    coarse = SNMF(rank, **kwargs).fit(features)
    return coarse, coarse.coefficients

