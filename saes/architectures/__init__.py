"""saes.architectures: one module per SAE family, each registered once in :mod:`.registry`.

Importing the package imports every family module, so the registry is complete for the
file loader and the command line. A new family: one module here (decorated with
``@register``), one import line below, and its tests.
"""
from saes.architectures import topk, batchtopk, matryoshka, mp, l1, jumprelu, gated  # noqa: F401  (they register, in this order)
