"""BatchTopK over a batch that spans processes.

BatchTopK keeps the ``k * N`` largest pre-activations of the whole batch. In a
data-parallel step each process holds only its slice of the batch, so the selection must
be agreed across processes. The trainer's data-parallel layer
(:func:`saes.training.distributed.global_batch_selection`) installs that agreeing
selector here for the duration of a step; :func:`saes.kernels.torch_ref.batch_topk_select`
asks here first. The kernels thus never import the training code above them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

Selector = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]

_selector: Selector | None = None


@contextlib.contextmanager
def selecting(select: Selector) -> Iterator[None]:
    """Within the context, BatchTopK selection is ``select(h, k)`` (same output as
    :func:`saes.kernels.torch_ref.batch_topk_select`: padded ``(indices, keep)``)."""
    global _selector
    saved = _selector
    _selector = select
    try:
        yield
    finally:
        _selector = saved


def selector() -> Selector | None:
    """The installed selector, or None when the batch is this process's own."""
    return _selector
