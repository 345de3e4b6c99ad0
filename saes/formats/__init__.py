"""saes.formats: SAE files on disk.

* :mod:`.durable`: the one way files are written (atomic, fsync'd) and safetensors read
  back checksum-verified;
* :mod:`.native`: this toolkit's directory (SAELens layout + a ``saes`` block), :func:`save`;
* :mod:`.saelens`, :mod:`.sparsify`, :mod:`.gemma_scope`, :mod:`.dictionary_learning`:
  other projects' files, for inference;
* :mod:`.loader`: :func:`load`, which recognises all of them;
* :mod:`.schema`: checking JSON read from files.
"""
from saes.formats.durable import (
    atomic_save_tensors,
    atomic_write,
    atomic_write_files,
    atomic_write_text,
    read_tensors,
    tensors_digest,
)
from saes.formats.loader import load
from saes.formats.native import save

__all__ = [
    "atomic_save_tensors",
    "atomic_write",
    "atomic_write_files",
    "atomic_write_text",
    "load",
    "read_tensors",
    "save",
    "tensors_digest",
]
