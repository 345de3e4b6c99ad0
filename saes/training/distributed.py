"""Data-parallel training on ``torch.distributed``: one batch, split across processes.

Launch any script that calls :func:`saes.train` (or ``interp train``) with ``torchrun`` or
``accelerate launch``; the trainer notices the launcher's environment (``WORLD_SIZE`` > 1),
joins the process group and trains data-parallel. Nothing else changes: the same config,
the same checkpoints, the same result.

How a step is shared, and why it equals the one-process step for the same global batch:

* every rank reads the same stream of *global* batches (so the data position in a
  checkpoint is one number and a run can resume on any number of processes), checks it,
  and computes the loss normaliser (the batch variance) on the whole batch;
* rank ``r`` trains on the ``r``-th contiguous slice of the batch (:func:`shard_rows`);
  its loss is a mean over its rows;
* gradients are all-reduced with weights ``n_r / N`` so that their sum is the gradient of
  the global mean loss, exactly, whatever the split (:meth:`DataParallel.reduce_grads`);
  every rank then takes the same Adam step;
* BatchTopK selection (BatchTopK and Matryoshka SAEs) needs the ``k * N`` largest
  pre-activations of the *global* batch: each rank offers its local top candidates, the
  threshold is agreed by an all-gather, and each rank keeps its entries above it
  (:func:`batch_topk_select`);
* which latents fired (for the dead-latent counts behind AuxK) is OR-ed across ranks, and
  the BatchTopK inference threshold is reduced with ``min`` (the global batch's smallest
  kept activation), so buffers stay identical on every rank;
* only rank 0 writes checkpoints, logs and the progress bar, and holds the checkpoint
  directory's write lock (:func:`saes.locks.directory_lock`), which the other ranks share.

The result differs from one process only by floating-point summation order (the
test suite checks 2 processes against 1 on CPU with gloo; see ``tests/test_distributed.py``).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saes.errors import ConfigError
from saes.kernels import global_batch

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True inside a multi-process launch (torchrun / accelerate set ``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init(backend: str | None = None, timeout_s: float = 600.0) -> None:
    """Join the process group the launcher described (no-op when already joined).

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise.
    """
    if dist.is_initialized():
        return
    missing = [v for v in LAUNCH_VARS if v not in os.environ]
    if missing:
        raise ConfigError(
            f"data-parallel training needs the launcher's environment; {', '.join(missing)} "
            "not set. Start the script with `torchrun --nproc-per-node N script.py` (or "
            "`accelerate launch`), or call torch.distributed.init_process_group yourself"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[a, b)`` of an ``n``-row batch that rank ``rank`` of ``world`` trains on.

    Contiguous slices whose sizes differ by at most one row.
    """
    base, extra = divmod(n, world)
    a = rank * base + min(rank, extra)
    return a, a + base + (1 if rank < extra else 0)


def shard_rows(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    a, b = shard_bounds(x.shape[0], rank, world)
    return x[a:b]


@dataclass
class DataParallel:
    """The process group of a data-parallel run and the collectives the trainer needs."""

    rank: int
    world: int
    group: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        """The device this rank trains on: ``cuda`` means this rank's GPU (``LOCAL_RANK``)."""
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        if requested is None:
            return torch.device(f"cuda:{local}" if dist.get_backend(self.group) == "nccl" else "cpu")
        dev = torch.device(requested)
        if dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", local)
        return dev

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < self.world:
            raise ConfigError(
                f"a batch of {x.shape[0]} rows cannot be split across {self.world} processes; "
                f"use batch_size >= {self.world} (and data with at least that many rows per batch)"
            )
        return shard_rows(x, self.rank, self.world)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (identical starts, whatever happened locally)."""
        with torch.no_grad():
            for t in chain_tensors(module):
                dist.broadcast(t.data, src=0, group=self.group)

    def reduce_grads(self, params: Sequence[torch.nn.Parameter], weight: float) -> None:
        """Replace each ``p.grad`` by ``sum_r weight_r * grad_r`` (one flat all-reduce).

        A parameter without a gradient on every rank keeps ``grad = None`` (Adam then
        leaves it alone, as in one process); one with a gradient on some rank gets the
        weighted sum, zeros standing in for the others.
        """
        params = list(params)
        if not params:
            return
        ref = params[0]
        flat = []
        for p in params:
            g = p.grad
            flat.append((g.float() * weight).reshape(-1) if g is not None else torch.zeros(p.numel(), device=ref.device))
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=ref.device)
        buf = torch.cat(flat + [flags])
        dist.all_reduce(buf, group=self.group)
        offset = 0
        for p in params:
            n = p.numel()
            # Views of the fresh buffer: nothing else holds it, so no copy is needed.
            p.grad = buf[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        for p, has in zip(params, buf[offset:].tolist()):
            if not has:
                p.grad = None

    def any_(self, mask: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of a boolean tensor across ranks."""
        t = mask.to(torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.bool()

    def min_(self, t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)

    def weighted_mean(self, values: list[float], weight: float, device: torch.device) -> list[float]:
        """``sum_r weight_r * values_r`` for a list of numbers (one all-reduce)."""
        t = torch.tensor(values, dtype=torch.float64, device=device) * weight
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def barrier(self) -> None:
        dist.barrier(group=self.group)


def chain_tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def current(backend: str | None = None) -> DataParallel | None:
    """The data-parallel context of this process, or None for a one-process run.

    Joins the launcher's process group on first use when started by torchrun /
    accelerate (``WORLD_SIZE`` > 1).
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if not launched():
            return None
        init(backend)
    world = dist.get_world_size()
    if world == 1:
        return None
    return DataParallel(rank=dist.get_rank(), world=world)


# ---------------------------------------------------------------- BatchTopK over ranks

@contextlib.contextmanager
def global_batch_selection(dp: DataParallel | None, global_rows: int) -> Iterator[None]:
    """Within the context, BatchTopK selects over the global batch of ``global_rows`` rows
    (installed in the kernels, :mod:`saes.kernels.global_batch`)."""
    if dp is None:
        yield
        return
    with global_batch.selecting(functools.partial(batch_topk_select, dp=dp, global_rows=global_rows)):
        yield


def batch_topk_select(h: torch.Tensor, k: int, *, dp: DataParallel, global_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchTopK on this rank's rows ``h [n, d_sae]`` with the global batch's threshold.

    The ``k * N`` largest positive entries of the global batch (``N = global_rows`` rows over
    all ranks): every rank gathers its own largest ``k * N`` values (no rank can hold more of
    the kept entries), the threshold is the ``k * N``-th largest of all of them, and each rank
    keeps its entries at or above it. Same output form as ``kernels.batch_topk``: padded
    ``(indices, keep) [n, k']``.
    """
    h = h.detach()
    n, d_sae = h.shape
    total = min(k * global_rows, global_rows * d_sae)
    m = min(total, h.numel())
    local = torch.full((total,), -float("inf"), dtype=torch.float32, device=h.device)
    if m:
        local[:m] = torch.topk(h.reshape(-1).float(), m, sorted=False).values
    gathered = [torch.empty_like(local) for _ in range(dp.world)]
    dist.all_gather(gathered, local, group=dp.group)
    theta = torch.topk(torch.cat(gathered), total, sorted=False).values.min()
    kept = (h.float() >= theta) & (h > 0)
    counts = kept.sum(1)
    kmax = max(1, int(counts.max())) if n else 1
    vals, idx = torch.topk(h, min(kmax, d_sae), dim=1)
    keep = (vals.float() >= theta) & (vals > 0)
    return idx, keep
