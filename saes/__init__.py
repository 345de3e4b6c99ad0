"""saes: sparse dictionary learning on activation tensors.

Knows nothing of language models: it trains, evaluates, saves and loads SAEs on tensors,
activation stores or any stream of ``[batch, d_in]`` batches.

>>> import saes
>>> data = saes.synthetic.superposition(n_features=32, d=16, n_samples=4096, seed=0)
>>> sae = saes.TopKSAE(d_in=16, d_sae=32, k=3)
>>> result = saes.train(sae, data.x, saes.TrainConfig(batch_size=256, total_tokens=20_000, lr=3e-3), progress=False)
>>> saes.metrics.mmcs(data.directions, sae.W_dec) > 0.5
True

Architectures (all trainable): :class:`TopKSAE`, :class:`BatchTopKSAE`,
:class:`MatryoshkaSAE`, :class:`MPSAE`, and the sparsity-penalised :class:`ReLUSAE` (L1,
SAELens "standard"), :class:`JumpReLUSAE` and :class:`GatedSAE`. One trainer (:func:`train`, :class:`TrainConfig`), files in the SAELens
layout (:meth:`SAE.save`, :func:`load`), :mod:`saes.metrics` and :mod:`saes.synthetic`.
"""
from saes import metrics, stats, synthetic
from saes.architectures.base import SAE
from saes.architectures.batchtopk import BatchTopKSAE
from saes.architectures.gated import GatedSAE
from saes.architectures.jumprelu import JumpReLUSAE
from saes.architectures.l1 import ReLUSAE
from saes.architectures.matryoshka import MatryoshkaSAE
from saes.architectures.mp import MPSAE
from saes.architectures.topk import TopKSAE
from saes.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EmptyDataError,
    FormatError,
    NonFiniteError,
    SAEError,
    ShapeMismatchError,
    WriteError,
)
from saes.formats import load
from saes.snmf import SNMF, SNMFResult
from saes.training.config import TrainConfig
from saes.training.runner import train
from saes.training.trainer import TrainResult

__all__ = [
    "SAE", "TopKSAE", "BatchTopKSAE", "MatryoshkaSAE", "MPSAE", "ReLUSAE", "JumpReLUSAE", "GatedSAE",
    "SNMF", "SNMFResult", "TrainConfig", "TrainResult", "train", "load", "metrics", "stats", "synthetic",
    "SAEError", "ConfigError", "DataError", "ShapeMismatchError", "NonFiniteError", "EmptyDataError",
    "CheckpointError", "FormatError", "WriteError",
]
