"""Checking JSON read from files (``cfg.json``, manifests) before any of it is used.

A file from elsewhere is input like any other: a value of the wrong type is an error that
names the file, the key and what was expected (never a ``TypeError`` later, deep inside
torch); a key this toolkit does not know is a warning (a newer writer may have added it)
and is otherwise ignored.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
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


# ------------------------------------------------------------------ reading JSON files

# Every JSON file this toolkit reads is small: a cfg.json is a few hundred bytes, a manifest
# of 100,000 shards about 15 MB. The caps stop a crafted file from costing gigabytes of
# memory (a sparse 1 GiB file reads as 1 GiB of zeros) or the stack (5,000 nested brackets).
MAX_JSON_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 32


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects more than ``limit`` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def parse_json(
    text: str | bytes, where: str, error: type[Exception], *, max_depth: int = MAX_JSON_DEPTH,
    allow_nan: bool = False,
) -> Any:
    """``text`` parsed as JSON, or ``error`` naming ``where`` (a file, a file and line, a key).

    Refuses invalid UTF-8, invalid JSON, NaN/Infinity literals (not JSON; ``allow_nan`` reads
    them, for text Python's ``json.dumps`` wrote with them, whose values are checked after)
    and nesting deeper than ``max_depth``, each with its own message, so no
    ``RecursionError`` or ``UnicodeDecodeError`` ever reaches the user.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{where} is not valid UTF-8 (byte {e.start}); the file is damaged or not a JSON file") from None

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        value = json.loads(text, parse_constant=None if allow_nan else refuse_constant)
    except RecursionError:  # the C parser counts its recursion: deep nesting ends here, not in a crash
        raise error(f"{where} nests deeper than {max_depth} levels; no file this toolkit writes does (damaged or crafted)") from None
    except ValueError as e:
        raise error(f"{where} is not valid JSON ({e}); the file is damaged or was cut short") from None
    if json_depth_exceeds(value, max_depth):
        raise error(f"{where} nests deeper than {max_depth} levels; no file this toolkit writes does")
    return value


def read_json(
    path: str | os.PathLike, error: type[Exception], *, what: str = "",
    max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """The JSON value in the file at ``path``, read within size and depth limits.

    ``what`` describes the file in messages (default: its path). A missing file, a file
    larger than ``max_bytes`` (checked before reading), invalid UTF-8, invalid JSON and
    excessive nesting each raise ``error`` with a message naming the file.
    """
    path = Path(path)
    where = what or str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise error(f"{where} does not exist") from None
    if not path.is_file():
        raise error(f"{where} is not a regular file")
    if size > max_bytes:
        raise error(
            f"{where} is {size:,} bytes, more than the {max_bytes:,} this toolkit reads from a JSON file "
            "(damaged or not written by this toolkit)"
        )
    with path.open("rb") as f:
        data = f.read(size + 1)  # never more than the cap plus one byte (size <= max_bytes here)
    if len(data) > size:
        raise error(f"{where} grew while it was read; read it again once its writer has finished")
    return parse_json(data, where, error, max_depth=max_depth)
