"""Where training batches come from: a tensor, an activation store, or any iterable.

Each source turns into one deterministic stream of ``[batch, d_in]`` batches, so that a
checkpoint can record "batches consumed" and a resumed run continues with exactly the
batches an uninterrupted run would have seen:

* a tensor ``[N, d_in]``: an endless sequence of seeded permutations (one per epoch), cut
  into full batches (a batch may straddle two epochs). Skipping is index arithmetic.
* an activation store (anything with ``batches(batch_size, shuffle, seed, ...)`` and
  ``d``, like :class:`interp.activations.store.ActivationStore`): epoch ``e`` reads
  ``store.batches(batch_size, shuffle=True, seed=seed + e, drop_last=True)``. Whole
  skipped epochs are not read at all.
* any other iterable of tensors ``[..., d_in]`` (numpy arrays work too): read once, in
  order; on resume pass the same stream from its start and the consumed batches are
  skipped. Training stops early if it runs out.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from saes.errors import DataError, EmptyDataError, ShapeMismatchError


class Source:
    """A deterministic stream of batches (see the module docstring)."""

    kind = "source"

    def __init__(self, d: int | None, n_rows: int | None):
        self.d = d
        self.n_rows = n_rows

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records to recognise the same data on resume."""
        return {"kind": self.kind, "d": self.d, "rows": self.n_rows}

    def iterate(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        raise NotImplementedError


def _describe(sae_d: int) -> str:
    return f"the SAE has d_in={sae_d}"


class TensorSource(Source):
    kind = "tensor"

    def __init__(self, x: torch.Tensor, d_in: int, batch_size: int, check_finite: bool = True):
        if x.ndim < 2:
            raise ShapeMismatchError(f"training data must be [N, d_in]; got a tensor of shape {list(x.shape)}")
        if x.shape[-1] != d_in:
            raise ShapeMismatchError(
                f"training data has rows of width {x.shape[-1]} (shape {list(x.shape)}) but {_describe(d_in)} "
                f"(expects [N, {d_in}]); pass activations from the hook the SAE is for, or build the SAE "
                f"with d_in={x.shape[-1]}"
            )
        x = x.reshape(-1, d_in)
        if x.shape[0] == 0:
            raise EmptyDataError("training data is empty (0 rows); pass at least one batch of activations")
        if x.shape[0] < batch_size:
            raise EmptyDataError(
                f"training data has {x.shape[0]} rows, fewer than batch_size={batch_size}; "
                "lower batch_size or pass more activations"
            )
        if check_finite:
            _check_finite_rows(x)
        super().__init__(d_in, x.shape[0])
        self.x = x

    def _perm(self, seed: int, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(self.x.shape[0], generator=g)

    def iterate(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        n = self.x.shape[0]
        pos = skip * batch_size  # global row position in the endless permuted stream
        epoch, offset = divmod(pos, n)
        perm = self._perm(seed, epoch)
        while True:
            parts, need = [], batch_size
            while need:
                take = min(need, n - offset)
                parts.append(perm[offset : offset + take])
                offset += take
                need -= take
                if offset == n:
                    epoch, offset = epoch + 1, 0
                    perm = self._perm(seed, epoch)
            idx = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield self.x[idx.to(self.x.device)]


def _check_finite_rows(x: torch.Tensor, chunk: int = 1 << 16) -> None:
    """One pass over a whole tensor, so a bad row is reported by its index in the tensor."""
    for a in range(0, x.shape[0], chunk):
        part = x[a : a + chunk]
        finite = torch.isfinite(part)
        if not bool(finite.all()):
            row, col = (~finite).nonzero()[0].tolist()
            value = part[row, col].item()
            kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
            n_bad = int((~torch.isfinite(x)).any(-1).sum())
            from saes.errors import NonFiniteError

            raise NonFiniteError(
                f"non-finite activations: {kind} in row {a + row} (column {col}) of the training tensor, "
                f"{n_bad} bad row{'s' if n_bad != 1 else ''} in all; drop them (x[torch.isfinite(x).all(-1)]) "
                "or fix the harvest (fp16 overflow is a common cause)"
            )


class StoreSource(Source):
    kind = "store"

    def __init__(self, store: Any, d_in: int, batch_size: int):
        d = int(store.d)
        n = len(store)
        where = getattr(store, "directory", "the activation store")
        hook = getattr(store, "hook", None)
        if d != d_in:
            raise ShapeMismatchError(
                f"{where} holds {f'hook {hook} with ' if hook else ''}rows of width d={d} "
                f"(batches [batch, {d}]) but {_describe(d_in)} (expects [batch, {d_in}]); train an SAE "
                f"with d_in={d}, or open the store on the hook the SAE is for"
            )
        if n == 0:
            raise EmptyDataError(f"{where} is empty (0 rows); run the harvest that fills it first")
        if n < batch_size:
            raise EmptyDataError(
                f"{where} has {n} rows, fewer than batch_size={batch_size}; lower batch_size or harvest more"
            )
        super().__init__(d, n)
        self.store = store
        self.hook = hook

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "hook": self.hook}

    def iterate(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        per_epoch = self.n_rows // batch_size  # drop_last=True
        epoch, within = divmod(skip, per_epoch)
        while True:
            for b, x in enumerate(self.store.batches(batch_size, shuffle=True, seed=seed + epoch, drop_last=True)):
                if b < within:
                    continue
                yield x
            epoch, within = epoch + 1, 0


class IterableSource(Source):
    kind = "iterable"

    def __init__(self, data: Iterable[Any], d_in: int):
        super().__init__(d_in, None)
        self.data = data

    def iterate(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        it = iter(self.data)
        for _ in range(skip):
            if next(it, None) is None:
                raise DataError(
                    f"the data stream ended after fewer than the {skip} batches the checkpoint already "
                    "consumed; on resume pass the same stream from its start"
                )
        for x in it:
            yield torch.as_tensor(x) if isinstance(x, np.ndarray) else x


def is_store(data: Any) -> bool:
    return callable(getattr(data, "batches", None)) and hasattr(data, "d") and hasattr(data, "__len__")


def make_source(data: Any, d_in: int, batch_size: int, check_finite: bool = True) -> Source:
    """The :class:`Source` for ``data`` (tensor, numpy array, store or iterable).

    ``check_finite=False`` leaves non-finite rows of a tensor to the training step (which
    drops them when the config says ``on_nonfinite="skip"``).
    """
    if isinstance(data, Source):
        return data
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        return TensorSource(data, d_in, batch_size, check_finite)
    if is_store(data):
        return StoreSource(data, d_in, batch_size)
    if isinstance(data, Iterable):
        return IterableSource(data, d_in)
    raise DataError(
        f"cannot train on a {type(data).__name__}; pass a tensor [N, d_in], an ActivationStore, "
        "or an iterable of [batch, d_in] tensors"
    )


def as_rows(x: Any, d_in: int, batch_index: int) -> torch.Tensor:
    """``x`` as a flat floating-point ``[batch, d_in]`` tensor (finiteness not checked)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"batch {batch_index} is a {type(x).__name__}, not a tensor of activations")
    if x.ndim < 1 or x.shape[-1] != d_in:
        raise ShapeMismatchError(
            f"batch {batch_index} has shape {list(x.shape)} but {_describe(d_in)} (expects [batch, {d_in}]); "
            "the data comes from a different hook or model than the SAE"
        )
    x = x.reshape(-1, d_in)
    if x.shape[0] == 0:
        raise EmptyDataError(f"batch {batch_index} has no rows; the data stream must not yield empty batches")
    if not x.is_floating_point():
        raise DataError(f"batch {batch_index} has dtype {x.dtype}; activations must be floating point")
    return x


def check_batch(
    x: Any, d_in: int, batch_index: int, *, hook: str | None = None, first_token: int | None = None
) -> torch.Tensor:
    """``x`` as a flat ``[batch, d_in]`` tensor, or a clear error saying what is wrong.

    ``hook`` and ``first_token`` (tokens of the stream before this batch) only make a
    non-finite error name the place more precisely.
    """
    x = as_rows(x, d_in, batch_index)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        row, col = bad
        value = x[row, col].item()
        n_bad_rows = int((~finite).any(-1).sum())
        raise _nonfinite(batch_index, row, col, value, n_bad_rows, hook, first_token)
    return x


def finite_rows(x: Any, d_in: int) -> tuple[torch.Tensor, list[int]]:
    """``(the rows of x that are all finite, the indices of the others)``."""
    x = as_rows(x, d_in, -1)
    ok = torch.isfinite(x).all(-1)
    return x[ok], (~ok).nonzero().flatten().tolist()


def _nonfinite(
    batch_index: int, row: int, col: int, value: float, n_rows: int, hook: str | None = None,
    first_token: int | None = None,
) -> DataError:
    from saes.errors import NonFiniteError

    kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
    place = f" at hook {hook}" if hook else ""
    token = f", token {first_token + row} of the training stream" if first_token is not None else ""
    return NonFiniteError(
        f"non-finite activations{place}: {kind} in batch {batch_index} (counting from 0; training step "
        f"{batch_index + 1}), row {row} of that batch, column {col}{token} ({n_rows} bad "
        f"row{'s' if n_rows != 1 else ''} in the batch); check the harvest (fp16 overflow is a common cause), "
        "drop those rows before training, or train with on_nonfinite='skip' to drop them as they come"
    )
