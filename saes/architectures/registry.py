"""The architecture registry: every SAE family, named once.

Each architecture module registers its class with :func:`register` where it is defined::

    @register(cli_name="topk")
    class TopKSAE(SAE):
        architecture = "topk"      # the name in cfg.json's "saes" block
        ...

The file name is the class's ``architecture`` attribute; ``cli_name`` is what
``interp train --arch`` calls it (None for the inference-only kinds, which only load from
other libraries' files). The file loader, the saver and the command line read this table,
so a new architecture is one module (imported in ``saes/architectures/__init__.py``) plus
its tests.

The file layer sits above the architectures; it installs its writer here
(:func:`set_saver`) so that :meth:`SAE.save` works without the architectures importing it.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from saes.architectures.base import SAE

C = TypeVar("C", bound=type)

# Constructor arguments that describe where an SAE lives, not what it is.
PLACEMENT_ARGS = ("self", "dtype", "device", "metadata")


@dataclass(frozen=True)
class Architecture:
    """One registered family: its class, its name in files and on the command line."""

    name: str
    cls: type[SAE]
    cli_name: str | None


_BY_NAME: dict[str, Architecture] = {}
_saver: Callable[[SAE, str | os.PathLike], Any] | None = None


def register(cli_name: str | None = None) -> Callable[[C], C]:
    """Class decorator: enter the class under its ``architecture`` name (once)."""

    def enter(cls: C) -> C:
        name = cls.architecture  # type: ignore[attr-defined]
        if name in _BY_NAME:
            raise ValueError(f"architecture {name!r} is registered twice ({_BY_NAME[name].cls.__name__}, {cls.__name__})")
        if cli_name is not None and not cls.trainable:  # type: ignore[attr-defined]
            raise ValueError(f"{cls.__name__} is inference-only (trainable = False); register it without a cli_name")
        _BY_NAME[name] = Architecture(name, cls, cli_name)  # type: ignore[arg-type]
        return cls

    return enter


def names() -> tuple[str, ...]:
    """Every file-format name, in registration order."""
    return tuple(_BY_NAME)


def get(name: str) -> type[SAE]:
    """The class saved under ``name`` in cfg.json's "saes" block (KeyError if none is)."""
    if name not in _BY_NAME:
        raise KeyError(f"no architecture is called {name!r}; known: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[name].cls


def cli_names() -> tuple[str, ...]:
    """The architectures ``interp train --arch`` offers, in registration order."""
    return tuple(a.cli_name for a in _BY_NAME.values() if a.cli_name is not None)


def for_cli(cli_name: str) -> type[SAE]:
    """The class the command line calls ``cli_name``."""
    for a in _BY_NAME.values():
        if a.cli_name == cli_name:
            return a.cls
    raise KeyError(f"no architecture is called {cli_name!r} on the command line; known: {', '.join(cli_names())}")


def settings_of(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword settings ``cls`` and its bases take (not dtype, device or metadata):
    what ``arch_config()`` may hold and what a builder may pass."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if name not in PLACEMENT_ARGS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(name, p)
    return params


def build(cls: type[SAE], settings: dict[str, Any]) -> SAE:
    """``cls`` built from those of ``settings`` it takes (the command line offers every
    family's options; each family takes its own)."""
    takes = settings_of(cls)
    return cls(**{k: v for k, v in settings.items() if k in takes})


def set_saver(save: Callable[[SAE, str | os.PathLike], Any]) -> None:
    """Install the function :meth:`SAE.save` calls (done by :mod:`saes.formats.native`)."""
    global _saver
    _saver = save


def saver() -> Callable[[SAE, str | os.PathLike], Any]:
    if _saver is None:  # only when saes.formats was never imported, which `import saes` does
        raise RuntimeError("no SAE file writer is installed; import saes (or saes.formats) first")
    return _saver
