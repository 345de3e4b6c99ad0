"""probes: supervised directions and subspaces on activations.

>>> import probes
>>> v = probes.diff_in_means(acts[labels == 1], acts[labels == 0])
>>> result = probes.LinearProbe().fit(acts, labels)
>>> report = probes.coverage(sae_codes, concept_labels)   # best single-latent AUROC per concept
"""
from probes.directions import diff_in_means
from probes.linear import LinearProbe, ProbeResult
from probes.metrics import accuracy, auroc, binary_auroc, coverage
from probes.sweep import accuracy_figure, layer_sweep, probe_hooks

__all__ = ["diff_in_means", "LinearProbe", "ProbeResult", "auroc", "binary_auroc", "accuracy", "coverage",
           "layer_sweep", "probe_hooks", "accuracy_figure"]
