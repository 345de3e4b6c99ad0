"""Where a dashboard's codes come from: an SAE run over store rows, or an SNMF's codes.

Both give, for a range of store rows, the codes of the chosen latents only ``[rows, L]``,
and each latent's decoder direction in the hook's space ``[L, d]``. Activations are read a
shard at a time with ``store.shard_rows`` (which bypasses the store's shard cache), so a
dashboard holds at most one shard and one chunk of codes, whatever the store's size.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from interp.errors import InterpError


class SAECodes:
    """Codes of ``latents`` from ``sae.encode`` on store rows (the whole code row is computed,
    since TopK-style selection depends on every latent, then cut to the chosen ones)."""

    kind = "sae"
    needs_activations = True

    def __init__(self, sae: Any, store: Any, latents: list[int]) -> None:
        hook = (getattr(sae, "metadata", None) or {}).get("hook_name")
        if hook is not None and hook != store.hook:
            raise InterpError(
                f"the SAE was trained at {hook!r} but the store is read at {store.hook!r}; open the store "
                f"with ActivationStore.open(dir, hook={hook!r}) or store.select({hook!r})"
            )
        if sae.d_in != store.d:
            raise InterpError(f"the SAE takes d_in={sae.d_in} but the store's hook {store.hook!r} has d={store.d}; "
                              "use the store the SAE was trained on")
        self.sae, self.store, self.latents = sae, store, torch.tensor(latents)
        self.n_latents = sae.d_sae

    @torch.no_grad()
    def codes(self, start: int, stop: int, x: torch.Tensor | None) -> torch.Tensor:
        """Codes of rows ``[start, stop)``, whose activations are ``x [rows, d]``."""
        x = x.to(self.sae.device, self.sae.dtype)
        return self.sae.encode(x)[:, self.latents.to(self.sae.device)].float().cpu()

    @torch.no_grad()
    def codes_at(self, rows: torch.Tensor) -> torch.Tensor:
        x = read_rows(self.store, rows).to(self.sae.device, self.sae.dtype)
        return self.sae.encode(x)[:, self.latents.to(self.sae.device)].float().cpu()

    def directions(self) -> torch.Tensor:
        return self.sae.W_dec.detach()[self.latents.to(self.sae.W_dec.device)].float().cpu()

    def describe(self) -> dict[str, Any]:
        return {"kind": "sae", "architecture": getattr(self.sae, "architecture", type(self.sae).__name__),
                "d_in": self.sae.d_in, "d_sae": self.sae.d_sae}


class SNMFCodes:
    """SNMF codes of ``latents`` on any store of the SNMF's hook.

    On the rows the factorisation was fit on (a store with exactly as many rows) the codes
    are its coefficients, read without touching the activations. On any other store of the
    hook each chunk of rows is encoded with the fixed features (``SNMFResult.encode``: the
    non-negative least-squares coefficients), so a dashboard can show held-out text, or
    more of it than the fit saw.

    SNMF coefficients are non-negative but almost never exactly zero (on the quickstart's
    fit, 99.8% of them are above zero), so "fires" would mean every token. A latent counts
    as active where its coefficient is at least ``active_fraction`` of its largest
    coefficient on the fit; smaller ones read as zero (10% keeps about 9% of the quickstart's
    coefficients, the heavy tail the top examples come from).
    """

    kind = "snmf"

    def __init__(self, result: Any, store: Any, latents: list[int], n_iter: int = 100,
                 active_fraction: float = 0.1) -> None:
        if not 0.0 <= active_fraction < 1.0:
            raise InterpError(f"active_fraction must be in [0, 1), got {active_fraction}")
        hook = (result.config or {}).get("hook_name")
        if hook is not None and hook != store.hook:
            raise InterpError(
                f"the SNMF was fit at {hook!r} but the store is read at {store.hook!r}; open the store "
                f"with ActivationStore.open(dir, hook={hook!r}) or store.select({hook!r})"
            )
        rank, d = result.features.shape
        if d != store.d:
            raise InterpError(f"the SNMF features have width {d} but the store's hook {store.hook!r} has "
                              f"d={store.d}; read the store at the hook it was fit on (an mlp.hook_post)")
        self.result, self.store, self.latents, self.n_iter = result, store, torch.tensor(latents), n_iter
        self.n_latents = rank
        self.fit_rows = result.coefficients.shape[0] == len(store)
        self.needs_activations = not self.fit_rows  # held-out rows are encoded from their activations
        self.active_fraction = active_fraction
        # Magnitudes: SNMF's own coefficients are non-negative, but a result may carry signed codes.
        self.floor = active_fraction * result.coefficients[:, self.latents].float().abs().amax(0)  # [L]

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.result.encode(x.float(), n_iter=self.n_iter)[:, self.latents].float().cpu()

    def _active(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.where(codes.abs() >= self.floor, codes, 0.0)

    def codes(self, start: int, stop: int, x: torch.Tensor | None = None) -> torch.Tensor:
        if self.fit_rows:
            return self._active(self.result.coefficients[start:stop][:, self.latents].float())
        assert x is not None, "held-out rows are encoded from their activations"
        return self._active(self._encode(x))

    def codes_at(self, rows: torch.Tensor) -> torch.Tensor:
        if self.fit_rows:
            return self._active(self.result.coefficients[rows][:, self.latents].float())
        return self._active(self._encode(read_rows(self.store, rows)))

    def directions(self) -> torch.Tensor:
        return self.result.features[self.latents].float()

    def describe(self) -> dict[str, Any]:
        rank, d = self.result.features.shape
        codes = ("the fit's coefficients" if self.fit_rows else
                 f"non-negative least squares on the fixed features ({self.result.coefficients.shape[0]:,} rows fit)")
        return {"kind": "snmf", "architecture": "snmf", "d_in": d, "d_sae": rank, "codes": codes,
                "active": f"coefficient >= {self.active_fraction:g} of the latent's largest on the fit"}


def code_source(dictionary: Any, store: Any, latents: list[int]) -> SAECodes | SNMFCodes:
    """The code source for an SAE (``encode`` + ``W_dec``) or an SNMF (an ``SNMFResult``, or
    its ``as_dictionary()`` view, whose ``n_iter`` then sets the encoding's iterations)."""
    snmf = getattr(dictionary, "result", None) if not hasattr(dictionary, "coefficients") else dictionary
    if snmf is not None and hasattr(snmf, "coefficients") and hasattr(snmf, "features"):
        source: SAECodes | SNMFCodes = SNMFCodes(snmf, store, latents, n_iter=getattr(dictionary, "n_iter", 100))
    elif hasattr(dictionary, "encode") and hasattr(dictionary, "W_dec"):
        source = SAECodes(dictionary, store, latents)
    else:
        raise InterpError(f"a dashboard needs an SAE (saes.SAE) or an SNMF (saes.SNMFResult), "
                          f"got {type(dictionary).__name__}")
    bad = [i for i in latents if not 0 <= i < source.n_latents]
    if bad:
        raise InterpError(f"latents {bad} are out of range: the dictionary has {source.n_latents} latents "
                          f"(0..{source.n_latents - 1})")
    return source


def shard_starts(store: Any) -> list[int]:
    """First row of each shard, and the row count at the end."""
    starts = [0]
    for shard in store.manifest.shards:
        starts.append(starts[-1] + shard.rows)
    return starts


def chunks(store: Any, chunk_rows: int, read: bool) -> Iterator[tuple[int, int, torch.Tensor | None]]:
    """``(start, stop, activations [rows, d] or None)`` over the store in order, one shard in memory."""
    starts = shard_starts(store)
    for k in range(store.n_shards):
        acts = store.shard_rows(k) if read else None
        n = starts[k + 1] - starts[k]
        for a in range(0, n, chunk_rows):
            b = min(a + chunk_rows, n)
            # A copy, not a view: the caller still holds the last chunk while the next shard
            # loads, and a view would keep this whole shard alive alongside it.
            yield starts[k] + a, starts[k] + b, (acts[a:b].clone() if acts is not None else None)
        del acts


def read_rows(store: Any, rows: torch.Tensor) -> torch.Tensor:
    """``[len(rows), d]`` activations of scattered rows, reading one shard at a time."""
    starts = torch.tensor(shard_starts(store))
    shard = torch.bucketize(rows, starts[1:], right=True)
    out = torch.empty(rows.numel(), store.d, dtype=store.dtype)
    for k in shard.unique().tolist():
        sel = (shard == k).nonzero()[:, 0]
        out[sel] = store.shard_rows(k)[rows[sel] - starts[k]]
    return out
