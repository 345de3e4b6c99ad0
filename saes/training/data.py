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

A source's :meth:`~Source.fingerprint` names its data by an ``identity`` (a short hash of
what the data is, see :func:`data_identity`) that a checkpoint records, so a run is never
resumed on other data of the same shape. :func:`spread_warnings` says when the first rows
carry no usable information (identical rows, zeros, a huge shared offset).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saes.errors import DataError, EmptyDataError, ShapeMismatchError

# Rows hashed into a tensor's identity: enough to tell two data sets apart, cheap for any size.
IDENTITY_ROWS = 4096


class Source:
    """A deterministic stream of batches (see the module docstring)."""

    kind = "source"

    def __init__(self, d: int | None, n_rows: int | None):
        self.d = d
        self.n_rows = n_rows

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records to recognise the same data on resume (``identity``:
        see :func:`data_identity`; absent where the data cannot be named, as for a stream)."""
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

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "identity": tensor_identity(self.x)}

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
        out = {**super().fingerprint(), "hook": self.hook}
        model = getattr(self.store, "model_name", None)
        if isinstance(model, str):
            out["model"] = model
        directory = getattr(self.store, "directory", None)
        if directory is not None:
            out["path"] = str(directory)  # for messages only: a moved store is the same data
        identity = store_identity(self.store)
        if identity is not None:
            out["identity"] = identity
        return out

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


# ---------------------------------------------------------------- transcoders: (input, target) pairs
#
# A transcoder trains on pairs: the activations x of its input hook and y of its output hook
# at the same tokens. Its sources stream them as one row [x | y] of width d_in + d_out, so
# that shuffling, skipping, non-finite checks and data-parallel shards, which work row by
# row, keep every pair together; the trainer splits the row before the step.

PAIR_FORMS = ("pass (x [N, d_in], y [N, d_out]) tensors of the same tokens, (input store, target store) views of "
              "one store, or an iterable of (x, y) batches")


def pair_rows(x: Any, y: Any, d_in: int, d_out: int, where: str) -> torch.Tensor:
    """``[N, d_in + d_out]``: a transcoder's input rows ``x [N, d_in]`` and target rows
    ``y [N, d_out]`` (the same tokens, row for row) side by side."""
    parts = []
    for t, d, name in ((x, d_in, "input"), (y, d_out, "target")):
        t = torch.from_numpy(t) if isinstance(t, np.ndarray) else t
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{where}: the {name} is a {type(t).__name__}, not a tensor of activations; {PAIR_FORMS}")
        if t.ndim < 1 or t.shape[-1] != d:
            raise ShapeMismatchError(
                f"{where}: the {name} has shape {list(t.shape)} but the transcoder has d_{'in' if name == 'input' else 'out'}"
                f"={d} (expects [N, {d}]); pass the activations of the hook it {'reads' if name == 'input' else 'writes'}")
        if not t.is_floating_point():
            raise DataError(f"{where}: the {name} has dtype {t.dtype}; activations must be floating point")
        parts.append(t.reshape(-1, d))
    if parts[0].shape[0] != parts[1].shape[0]:
        raise ShapeMismatchError(
            f"{where}: {parts[0].shape[0]} input rows but {parts[1].shape[0]} target rows; a transcoder trains on the "
            "input and target activations of the same tokens, row for row")
    dtype = torch.promote_types(parts[0].dtype, parts[1].dtype)
    return torch.cat([parts[0].to(dtype), parts[1].to(device=parts[0].device, dtype=dtype)], -1)


class PairedStoreSource(Source):
    """A transcoder's pairs from two hooks of one activation store (one harvest of both).

    Both views read the store in the same seeded order (its shuffle depends only on the
    manifest, the batch size and the seed), so row ``i`` of each batch is one token at both
    hooks."""

    kind = "store"

    def __init__(self, store_in: Any, store_out: Any, d_in: int, d_out: int, batch_size: int):
        hooks = (getattr(store_in, "hook", None), getattr(store_out, "hook", None))
        for store, d, name, hook in ((store_in, d_in, "d_in", hooks[0]), (store_out, d_out, "d_out", hooks[1])):
            if int(store.d) != d:
                raise ShapeMismatchError(
                    f"{getattr(store, 'directory', 'the store')}: hook {hook} has rows of width {int(store.d)} but the "
                    f"transcoder has {name}={d}; build it with {name}={int(store.d)}, or pick the hook it is for")
        places = {str(Path(s.directory).resolve()) for s in (store_in, store_out) if getattr(s, "directory", None)}
        if len(places) > 1 or len(store_in) != len(store_out):
            raise DataError(
                f"the input ({hooks[0]}) and target ({hooks[1]}) come from different stores ({', '.join(sorted(places))}); "
                "a transcoder needs both hooks of one harvest so that row i is the same token in both: harvest them "
                "together (interp harvest --hook IN --hook OUT) and open both from that store")
        self.inp = StoreSource(store_in, d_in, batch_size)
        self.out = StoreSource(store_out, d_out, batch_size)
        super().__init__(d_in + d_out, self.inp.n_rows)

    def fingerprint(self) -> dict[str, Any]:
        a, b = self.inp.fingerprint(), self.out.fingerprint()
        out = {**a, "d": self.d, "hook_out": b.get("hook")}
        if "identity" in a and "identity" in b:
            out["identity"] = _digest([a["identity"], b["identity"]])
        return out

    def iterate(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        d_in, d_out = self.inp.d or 0, self.out.d or 0
        for x, y in zip(self.inp.iterate(batch_size, seed, skip), self.out.iterate(batch_size, seed, skip)):
            yield pair_rows(x, y, d_in, d_out, "the store")


class PairedIterableSource(IterableSource):
    """A stream of ``(x, y)`` batches, each turned into rows ``[x | y]``."""

    def __init__(self, data: Iterable[Any], d_in: int, d_out: int):
        super().__init__(data, d_in + d_out)
        self.d_in, self.d_out = d_in, d_out

    def iterate(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        for i, item in enumerate(super().iterate(batch_size, seed, skip)):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise DataError(f"batch {skip + i} of the stream is a {type(item).__name__}, not an (x, y) pair; "
                                f"{PAIR_FORMS}")
            yield pair_rows(item[0], item[1], self.d_in, self.d_out, f"batch {skip + i}")


def _is_rows(t: Any) -> bool:
    return isinstance(t, (torch.Tensor, np.ndarray))


def make_paired_source(data: Any, d_in: int, d_out: int, batch_size: int, check_finite: bool = True) -> Source:
    """The :class:`Source` of a transcoder's ``(input, target)`` pairs: two tensors, two store
    views (of one store), or an iterable of ``(x, y)`` batches."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(_is_rows(t) for t in data):
        return TensorSource(pair_rows(data[0], data[1], d_in, d_out, "the training data"), d_in + d_out, batch_size,
                            check_finite)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(is_store(s) for s in data):
        return PairedStoreSource(data[0], data[1], d_in, d_out, batch_size)
    if _is_rows(data) or is_store(data):
        raise DataError(f"a transcoder trains on (input, target) pairs, not on one {type(data).__name__}; {PAIR_FORMS}")
    if isinstance(data, Iterable):
        return PairedIterableSource(data, d_in, d_out)
    raise DataError(f"cannot train a transcoder on a {type(data).__name__}; {PAIR_FORMS}")


def make_source(data: Any, d_in: int, batch_size: int, check_finite: bool = True, d_out: int | None = None) -> Source:
    """The :class:`Source` for ``data`` (tensor, numpy array, store or iterable); with ``d_out``
    (a transcoder), of ``(input, target)`` pairs (:func:`make_paired_source`).

    ``check_finite=False`` leaves non-finite rows of a tensor to the training step (which
    drops them when the config says ``on_nonfinite="skip"``).
    """
    if d_out is not None:
        return make_paired_source(data, d_in, d_out, batch_size, check_finite)
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
    x: Any, d_in: int, batch_index: int, *, hook: str | None = None, first_token: int | None = None,
    target_from: int | None = None,
) -> torch.Tensor:
    """``x`` as a flat ``[batch, d_in]`` tensor, or a clear error saying what is wrong.

    ``hook`` and ``first_token`` (tokens of the stream before this batch) only make a
    non-finite error name the place more precisely; ``target_from`` (a transcoder's rows
    ``[x | y]``: where ``y`` starts) makes it say whether the input or the target holds it.
    """
    x = as_rows(x, d_in, batch_index)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        row, col = bad
        value = x[row, col].item()
        n_bad_rows = int((~finite).any(-1).sum())
        raise _nonfinite(batch_index, row, col, value, n_bad_rows, hook, first_token, target_from)
    return x


def finite_rows(x: Any, d_in: int) -> tuple[torch.Tensor, list[int]]:
    """``(the rows of x that are all finite, the indices of the others)``."""
    x = as_rows(x, d_in, -1)
    ok = torch.isfinite(x).all(-1)
    return x[ok], (~ok).nonzero().flatten().tolist()


def _nonfinite(
    batch_index: int, row: int, col: int, value: float, n_rows: int, hook: str | None = None,
    first_token: int | None = None, target_from: int | None = None,
) -> DataError:
    from saes.errors import NonFiniteError

    kind = "NaN" if value != value else ("inf" if value > 0 else "-inf")
    place = f" at hook {hook}" if hook else ""
    token = f", token {first_token + row} of the training stream" if first_token is not None else ""
    column = f"column {col}"
    if target_from is not None:
        column = f"column {col - target_from} of the target" if col >= target_from else f"column {col} of the input"
    return NonFiniteError(
        f"non-finite activations{place}: {kind} in batch {batch_index} (counting from 0; training step "
        f"{batch_index + 1}), row {row} of that batch, {column}{token} ({n_rows} bad "
        f"row{'s' if n_rows != 1 else ''} in the batch); check the harvest (fp16 overflow is a common cause), "
        "drop those rows before training, or train with on_nonfinite='skip' to drop them as they come"
    )


# ---------------------------------------------------------------- what the data is


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tensor_identity(x: torch.Tensor) -> str:
    """A hash of ``x``'s shape and of up to :data:`IDENTITY_ROWS` rows spread evenly over it
    (as float32, the dtype training sees): cheap for any size, and two data sets that differ
    anywhere but in rows between the hashed ones get different identities."""
    n = x.shape[0]
    idx = torch.linspace(0, n - 1, min(n, IDENTITY_ROWS)).round().long().unique()
    rows = x[idx.to(x.device)].detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(json.dumps(list(x.shape)).encode())
    h.update(rows.numpy().tobytes())
    return h.hexdigest()[:16]


def store_identity(store: Any) -> str | None:
    """A hash of the model, the hook and the shards (rows, bytes, sha256) an activation
    store's manifest records: the store's content, named without reading a shard."""
    shards = getattr(getattr(store, "manifest", None), "shards", None)
    if not isinstance(shards, (list, tuple)):
        return None
    try:
        listed = [[int(s.rows), int(s.bytes), str(s.sha256)] for s in shards]
    except (AttributeError, TypeError, ValueError):
        return None
    return _digest({"model": getattr(store, "model_name", None), "hook": getattr(store, "hook", None),
                    "shards": listed})


# What of a live run's token-source description says which text it is (the path is left
# out when a content fingerprint is there: a moved file is the same data).
_SOURCE_KEYS = ("kind", "fingerprint", "name", "split", "text_field", "attention_mask")


def data_identity(desc: Any) -> str | None:
    """The identity of the data a fingerprint (a checkpoint's ``data``) describes, or None
    where it cannot be told (a stream of batches, a checkpoint from before identities).

    Stores and tensors carry theirs (``identity``); a live run's is a hash of the model, the
    hook and the token source's description (its content fingerprint, or its dataset name)."""
    if not isinstance(desc, dict):
        return None
    if isinstance(desc.get("identity"), str):
        return desc["identity"]
    source = desc.get("source")
    if desc.get("kind") != "live" or not isinstance(source, dict):
        return None
    if source.get("fingerprint") is None and not source.get("name"):
        return None  # an iterable of texts: nothing names it
    picked = {k: source[k] for k in _SOURCE_KEYS if source.get(k) is not None}
    if source.get("fingerprint") is None and source.get("path") is not None:
        picked["path"] = source["path"]
    pair = {"hook_out": desc["hook_out"]} if desc.get("hook_out") else {}  # a transcoder's target hook
    return _digest({"model": desc.get("model"), "hook": desc.get("hook"), **pair, "source": picked})


def describe_data(desc: dict[str, Any]) -> str:
    """One phrase naming the data of a fingerprint, for messages."""
    ident = data_identity(desc)
    tail = f"identity {ident}" if ident else "no recorded identity"
    kind = desc.get("kind")
    if kind == "store":
        where = desc.get("path", "an activation store")
        of = ", ".join(f"{k} {desc[k]}" for k in ("model", "hook") if desc.get(k))
        return f"store {where} ({desc.get('rows')} rows{', ' + of if of else ''}; {tail})"
    if kind == "tensor":
        return f"a tensor of {desc.get('rows')} rows ({tail})"
    if kind == "live":
        source = desc.get("source") if isinstance(desc.get("source"), dict) else {}
        text = source.get("path") or source.get("name") or source.get("kind", "a token source")
        return f"{desc.get('model')} at {desc.get('hook')} on {text} ({tail})"
    return f"{kind} data ({tail})"


# ---------------------------------------------------------------- data with nothing to learn


# Spread across rows relative to the rows' norm below which rows differ by a few float32
# roundings at most, and below which a shared offset leaves few bits of what varies.
IDENTICAL_BELOW = 1e-7
OFFSET_BELOW = 1e-4
# Spreads (RMS distance of rows from their mean) outside this range cannot be trained on in
# float32 as they are: squares underflow below (and the loss normaliser is clamped at 1e-12),
# overflow towards the top. Below the first, rows vary only in float32's subnormal range.
SUBNORMAL_SPREAD = 1e-36
TRAINABLE_SPREAD = (1e-5, 1e10)


def row_spread(x: torch.Tensor) -> tuple[float, float, float]:
    """``(rms, spread, offset)`` of the rows of ``x [n, d]`` in float64: the RMS row norm,
    the RMS distance of the rows from their mean, and the norm of that mean."""
    x = x.detach().to(torch.float64)
    mean = x.mean(0)
    rms = math.sqrt(float(x.pow(2).sum(-1).mean()))
    spread = math.sqrt(float((x - mean).pow(2).sum(-1).mean())) if x.shape[0] > 1 else 0.0
    return rms, spread, float(mean.norm())


def spread_warning(x: torch.Tensor) -> str | None:
    """What is wrong with training rows ``x [n, d]`` that carry little or no information
    (all zero, identical up to float32 rounding, a shared offset that dwarfs their spread),
    or None when they vary as activations do."""
    n = x.shape[0]
    rms, spread, offset = row_spread(x)
    if rms == 0:
        return (f"the first {n} training rows are all zero: an SAE learns nothing from them (fvu and l0 read 0); "
                "check the hook and the harvest")
    if spread <= IDENTICAL_BELOW * rms or spread < SUBNORMAL_SPREAD:
        return (f"the first {n} training rows are identical{' up to float32 rounding' if spread else ''} "
                f"(spread across rows {spread:.3g}, row norm {rms:.3g}): an SAE learns nothing from them "
                "(fvu and l0 read 0); check the hook and the harvest")
    if spread < OFFSET_BELOW * rms:
        ratio = offset / spread
        bits = max(0, round(24 - math.log2(ratio)))
        return (f"the training rows share an offset {ratio:.3g} times their spread (mean norm {offset:.3g}, "
                f"spread {spread:.3g}): float32 keeps about {bits} bits of what varies; check the harvest, or "
                "subtract the mean from the activations before training")
    return None


def needs_rescaling(x: torch.Tensor) -> bool:
    """Whether rows ``x`` that vary (see :func:`spread_warning`) vary on a scale float32
    training cannot handle as it is (see :data:`TRAINABLE_SPREAD`)."""
    _, spread, _ = row_spread(x)
    low, high = TRAINABLE_SPREAD
    return SUBNORMAL_SPREAD <= spread < low or spread > high
