"""Checking JSON read from files (``cfg.json``, manifests) before any of it is used.

A file from elsewhere is input like any other: a value of the wrong type is an error that
names the file, the key and what was expected (never a ``TypeError`` later, deep inside
torch); a key this toolkit does not know is a warning (a newer writer may have added it)
and is otherwise ignored.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from saes.errors import UnknownKeyWarning


@dataclass(frozen=True)
class Field:
    """What one key may hold.

    Attributes:
        kind: "int", "number", "bool", "str", "dict", "list", "int_list" or "any".
        optional: None is allowed.
        minimum: smallest allowed value of an int or number.
        choices: allowed values of a str.
    """

    kind: str
    optional: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        what = {
            "int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
            "dict": "an object", "list": "a list", "int_list": "a list of integers", "any": "a value",
        }[self.kind]
        if self.choices:
            what = f"one of {list(self.choices)}"
        if self.minimum is not None:
            what += f" >= {self.minimum:g}"
        return what + (" or null" if self.optional else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def matches(value: Any, f: Field) -> bool:
    if value is None:
        return f.optional or f.kind == "any"
    if f.kind == "int":
        ok = _is_int(value)
    elif f.kind == "number":
        ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    elif f.kind == "bool":
        ok = isinstance(value, bool)
    elif f.kind == "str":
        ok = isinstance(value, str) and (f.choices is None or value in f.choices)
    elif f.kind == "dict":
        ok = isinstance(value, dict)
    elif f.kind == "list":
        ok = isinstance(value, list)
    elif f.kind == "int_list":
        ok = isinstance(value, list) and all(_is_int(v) for v in value)
    else:
        ok = True
    if ok and f.minimum is not None and f.kind in ("int", "number"):
        ok = value >= f.minimum
    if ok and f.minimum is not None and f.kind == "int_list":
        ok = all(v >= f.minimum for v in value)
    return ok


def check(
    data: Any,
    fields: Mapping[str, Field],
    where: str,
    error: type[Exception],
    *,
    required: tuple[str, ...] = (),
    also_known: tuple[str, ...] = (),
    warn_unknown: bool = True,
) -> dict[str, Any]:
    """``data`` checked against ``fields``; returns it without the unknown keys.

    Raises ``error`` for a non-object, a missing required key or a value of the wrong
    type; warns (:class:`UnknownKeyWarning`) once for keys in neither ``fields`` nor
    ``also_known`` and drops them, unless ``warn_unknown`` is False (a file whose other
    keys belong to another library), when every key is kept.
    """
    if not isinstance(data, dict):
        raise error(f"{where} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise error(f"{where} lacks {', '.join(repr(k) for k in missing)}; the file is incomplete or not of this kind")
    for key, f in fields.items():
        if key in data and not matches(data[key], f):
            raise error(
                f"{where}: {key!r} is {data[key]!r:.80} ({type(data[key]).__name__}) but must be {f.describe()}; "
                "the file is damaged or was not written by a compatible tool"
            )
    if not warn_unknown:  # another library's file: its other keys are its own business
        return dict(data)
    unknown = sorted(k for k in data if k not in fields and k not in also_known)
    if unknown:
        warnings.warn(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {unknown} ignored", UnknownKeyWarning,
                      stacklevel=3)
    return {k: v for k, v in data.items() if k not in unknown}


def plain_file_name(name: str, where: str, error: type[Exception]) -> str:
    """``name`` if it names a file directly inside its directory, else ``error``.

    Paths written inside a manifest are relative to the manifest's directory and must
    stay in it: no separators, no ``..``, nothing absolute.
    """
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or (len(name) > 1 and name[1] == ":")  # a Windows drive
    )
    if bad:
        raise error(
            f"{where}: file name {name!r} would leave the store's directory; a manifest may only name "
            "files directly inside its own directory (the manifest was tampered with or damaged)"
        )
    return name
