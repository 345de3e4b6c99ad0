"""Where :class:`ReLUSAE` and :class:`JumpReLUSAE` were defined when they could only be read
from other libraries' files. They are trainable families now (:mod:`.l1`, :mod:`.jumprelu`);
this module keeps imports from here working.
"""
from saes.architectures.jumprelu import JumpReLUSAE
from saes.architectures.l1 import ReLUSAE

__all__ = ["JumpReLUSAE", "ReLUSAE"]
