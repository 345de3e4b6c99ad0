"""Command-line options generated from config dataclasses, and messages translated to flags.

A config dataclass is the one place for a setting's default, type, range and help text. A
field documents itself in ``dataclasses.field(metadata=...)``:

    help          what the setting does (``--help`` shows it, followed by the default); it
                  may name other fields by their Python names, --help shows their flags
    off_help      for a True-by-default switch: what its ``--no-...`` flag does
    flag          the flag when it is not ``--field-name`` (``--tokens`` for total_tokens);
                  a True-by-default switch is turned off by a ``--no-...`` flag
    choices       the values allowed
    cli_default   the command line's default, where it differs from the Python one
    default_text  how ``--help`` describes a default of None ("the SAE's recorded hook")
    metavar       the placeholder ``--help`` shows for the value
    positive      True: the command line refuses a value that is not above 0
    minimum       the smallest value the command line takes (``maximum``: the largest)
    cli           False leaves the field off the command line

:func:`add_config_options` adds one argparse option per field and records, on the parser,
which Python name each flag sets. The library's errors name Python arguments
(``batch_size=1``, ``pass hook=...``) because Python users call it; :func:`to_flags`
rewrites such a message with that table, so the command line's messages name flags.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import sys
import types
import typing
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

# The attribute of the parsed args that holds the flag table of the command that ran.
TABLE_DEST = "cli_options"


@dataclasses.dataclass(frozen=True)
class Option:
    """One flag and the Python name it sets. ``negated``: the flag sets it to False
    (``--no-auxk`` sets auxk=False; ``--keep-bos`` sets exclude_bos=False)."""

    name: str
    flag: str
    negated: bool = False
    metavar: str | None = None


# The TokenSource fields every command that reads text offers (--data, --text-field, ...).
DATA_FLAGS = ("data", "text_field", "context_length", "exclude_bos")
MODEL_HELP = "HF hub name, local model directory, or 'world' (the shipped default model)"
DEVICE_HELP = "e.g. cpu or cuda (default: cuda when available)"


# Upper bounds of sizes, far above any real run, so that a slip (10**26) is one clear line
# instead of a job that never ends or an allocation that fails deep inside torch.
MAX_TOKENS = 10**15        # token rows to harvest, train on or evaluate
MAX_CONTEXT = 1 << 20      # tokens per window (a model's own limit is checked once it is loaded)
MAX_BATCH = 1 << 24        # activation rows per training step
MAX_WINDOWS = 1 << 16      # windows per forward pass of a model
MAX_LATENTS = 1 << 26      # SAE width (the largest published SAEs have 2**24 latents)
MAX_NEW_TOKENS = 1 << 20   # tokens to generate
# The generated data flags, checked when read.
DATA_RANGES: dict[str, dict[str, Any]] = {"context_length": {"positive": True, "maximum": MAX_CONTEXT}}


def check_context(model: Any, length: int, flag: str = "--context-length") -> None:
    """Refuse windows longer than ``model`` has positions for: its position table would be
    indexed out of range somewhere inside the forward pass."""
    from interp.errors import InterpError

    limit = model_positions(model)
    if limit is not None and length > limit:
        raise InterpError(f"{flag} {length}: {getattr(model, 'name', 'the model')} has {limit} positions; "
                          f"use at most {limit}")


def model_positions(model: Any) -> int | None:
    """How many positions ``model`` (a HookedModel) was built for, where its config says."""
    config = getattr(getattr(model, "model", None), "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def add_model_option(parser: Any, *, help: str = MODEL_HELP, **kwargs: Any) -> None:
    """``--model``, worded the same in every command (``required=True`` or a ``default``)."""
    parser.add_argument("--model", help=help, **kwargs)


def add_device_option(parser: Any, *, help: str = DEVICE_HELP) -> None:
    """``--device``, worded the same in every command (checked by :func:`check_device`)."""
    parser.add_argument("--device", default=None, help=help)


def check_device(name: str | None, flag: str = "--device") -> None:
    """Refuse a ``--device`` this machine lacks before anything loads (the check of
    :func:`saes.devices.device_problem`, worded for the command line)."""
    if name is None:
        return
    from interp.errors import InterpError
    from saes.devices import device_problem

    shown = name if name and name.strip() == name else repr(name)  # '' and ' cpu' stay visible
    problem = device_problem(name, f"{flag} {shown}", flag, when_left_out="cuda when available, else cpu")
    if problem:
        raise InterpError(problem)


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def add_config_options(
    parser: argparse.ArgumentParser,
    config: type,
    names: Iterable[str] | None = None,
    *,
    group: Any = None,
    required: Iterable[str] = (),
    keep_unset: bool = False,
    prefix: str = "",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Option]:
    """Add a flag for each field of the dataclass ``config`` (those in ``names``, else all
    with help text) to ``parser`` (or to ``group`` of it); ``dest`` is the field's name.

    ``keep_unset``: a flag not given leaves the field as it is (its value in the parsed
    args is None, see :func:`changed_fields`), for commands that start from a preset.
    ``prefix``: for a second config on one command (``--world-seed`` beside ``--seed``):
    flags and dests start with it, and messages keep the Python name (it would be ambiguous).
    ``overrides``: per field, metadata this command sees differently (``{"context_length":
    {"default_text": "the SAE's recorded context size"}}``).
    """
    by_name = {f.name: f for f in dataclasses.fields(config)}
    wanted = list(names) if names is not None else [n for n, f in by_name.items() if _on_cli(f)]
    hints = typing.get_type_hints(config)
    options = []
    for name in wanted:
        if name not in by_name:
            raise KeyError(f"{config.__name__} has no field {name!r}")
        meta = {**by_name[name].metadata, **(overrides or {}).get(name, {})}
        options.append(_add_field(group or parser, by_name[name], meta, hints[name], name in required,
                                  keep_unset, prefix))
    register_names(parser, [] if prefix else options)
    return options


def _on_cli(f: dataclasses.Field) -> bool:
    return "help" in f.metadata and f.metadata.get("cli", True)


def _add_field(target: Any, f: dataclasses.Field, meta: Mapping[str, Any], hint: Any, required: bool,
               keep_unset: bool, prefix: str) -> Option:
    """One ``add_argument`` call for the field ``f`` of type ``hint``, described by ``meta``."""
    default = meta.get("cli_default", f.default)
    if default is dataclasses.MISSING:
        default = None
    dest = f"{prefix}_{f.name}" if prefix else f.name
    flag = meta.get("flag") or flag_name(dest)
    help_text = meta.get("help", "")
    if _base_type(hint) is bool:
        negated = bool(default)
        flag = meta.get("flag") or (flag_name("no_" + dest) if negated else flag)
        if negated:
            help_text = meta.get("off_help", f"switch off: {help_text}")
        target.add_argument(flag, dest=dest, action="store_false" if negated else "store_true",
                            default=None if keep_unset else default, help=help_text)
        return Option(f.name, flag, negated)
    shown = meta.get("default_text", default)
    if shown is not None and not required:
        help_text = f"{help_text} (default: {_show(shown)})"
    kind = _kind(f.name, _base_type(hint), meta)
    target.add_argument(flag, dest=dest, type=kind, choices=meta.get("choices"), required=required,
                        default=None if (keep_unset or required) else default, metavar=meta.get("metavar"),
                        help=help_text)
    return Option(f.name, flag, metavar=meta.get("metavar"))


def _kind(name: str, base: type, meta: Mapping[str, Any]) -> Any:
    """The argparse ``type`` of a field: a seed's range, positive or bounded numbers (metadata
    ``positive``, ``minimum``, ``maximum``), and floats that must be finite."""
    if base is int and (name == "seed" or name.endswith("_seed")):
        return seed
    if base in (int, float) and (meta.get("positive") or "minimum" in meta or "maximum" in meta or base is float):
        if meta.get("positive"):
            return positive(base, meta.get("maximum"))
        return bounded(base, meta.get("minimum"), meta.get("maximum"))
    return base


def _base_type(hint: Any) -> type:
    """``int | None`` -> int; the type argparse converts the value with."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(inner[0])
    return hint if hint in (int, float, str, bool) else str


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000 and value % 1000 == 0:
        return f"{value:_}".replace("_", ",")
    return str(value)


def register_names(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Record on ``parser`` which flag sets which Python name, for :func:`to_flags`."""
    table = dict(parser.get_default(TABLE_DEST) or {})
    table.update({o.name: o for o in options})
    parser.set_defaults(**{TABLE_DEST: table})
    for action in parser._actions:  # help texts written for Python name fields; show flags
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = to_flags(action.help, table)


def also_names(parser: argparse.ArgumentParser, flags: Mapping[str, str], negated: Iterable[str] = ()) -> None:
    """Record Python parameter names that hand-written flags set (``max_tokens`` ->
    ``--tokens``), so that library messages naming them are translated too."""
    register_names(parser, [Option(name, flag, name in set(negated)) for name, flag in flags.items()])


def positive(kind: type, maximum: float | None = None) -> Any:
    """An argparse ``type`` for a hand-written flag whose value must be above 0 (and finite,
    and at most ``maximum``): checked when the command line is read, so the library's
    message about its parameter never shows, and no job starts on 10**26 of anything."""
    return bounded(kind, minimum=0, maximum=maximum, above=True)


def bounded(kind: type, minimum: float | None = None, maximum: float | None = None, above: bool = False) -> Any:
    """An argparse ``type``: a ``kind`` (int or float) within ``[minimum, maximum]`` (above
    ``minimum`` when ``above``); a float must also be finite (NaN passes no comparison and
    would reach the library as a value)."""

    def convert(text: str) -> Any:
        value = kind(text)  # argparse reports a ValueError as "invalid ... value"
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(
                f"must be positive, got {text}" if (above and minimum == 0) else
                f"must be {'above' if above else 'at least'} {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {_show_bound(maximum)}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def _show_bound(value: float) -> str:
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return f"{value:g}"


def path_text(text: str) -> str:
    """An argparse ``type`` for a file or directory: not empty (``Path("")`` is the current
    directory, and an empty value also reads as "not given" where the code tests its truth)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or directory")
    return text


path_text.__name__ = "path"

# The dests that name files or directories, on every command (see :func:`require_paths`).
PATH_DESTS = frozenset({"model", "sae", "snmf", "vector", "store", "data", "out", "json", "source", "saes"})


def require_paths(parser: argparse.ArgumentParser) -> None:
    """Give every file or directory option of ``parser`` and its subcommands the
    :func:`path_text` type (where it has no type of its own)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                require_paths(sub)
        elif action.dest in PATH_DESTS and action.type in (None, str) and action.nargs != 0:
            action.type = path_text


# Seeds are 0 to 2**32 - 1: torch takes 64-bit seeds, but seeds are also offset and
# multiplied (per epoch, per run) before they reach it, and numpy's legacy seeding stops at 2**32.
SEED_MAX = 2**32 - 1


def seed(text: str) -> int:
    """An argparse ``type`` for a seed: an integer from 0 to :data:`SEED_MAX`."""
    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be from 0 to {SEED_MAX} (2**32 - 1), got {text}")
    return value


seed.__name__ = "int"


def config_values(config: type, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The fields of ``config`` that ``args`` holds (options added with this ``prefix``), as
    keyword arguments. Only fields documented for the command line count, so that another
    option with a field's name (and no help of the field's own) is never taken for it."""
    dest = (lambda name: f"{prefix}_{name}") if prefix else (lambda name: name)
    return {f.name: getattr(args, dest(f.name)) for f in dataclasses.fields(config)
            if _on_cli(f) and hasattr(args, dest(f.name))}


def changed_fields(config: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``config`` given on the command line (options added with ``keep_unset``)."""
    return {k: v for k, v in config_values(config, args).items() if v is not None}


# ---------------------------------------------------------------------- messages

# Python code inside a message (``interp.load(..., tokenizer=...)``) stays as it is.
_CALL = re.compile(r"[A-Za-z_][\w.]*\([^()]*\)")
_VALUE = r"('[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)|\.\.\.|[^\s,;:)\]]+)"


def to_flags(message: str, table: Mapping[str, Option] | None) -> str:
    """``message`` with the Python names in ``table`` written as the flags that set them:
    ``batch_size=1: use at least 2`` -> ``--batch-size 1: use at least 2``."""
    if not table:
        return message
    out, start = [], 0
    for call in _CALL.finditer(message):
        out += [_translate(message[start:call.start()], table), call.group()]
        start = call.end()
    out.append(_translate(message[start:], table))
    return "".join(out)


def _translate(text: str, table: Mapping[str, Option]) -> str:
    for name, option in sorted(table.items(), key=lambda kv: -len(kv[0])):
        assign = re.compile(rf"(?<![\w.\-/])(?:\w+\.)?{re.escape(name)}={_VALUE}")
        text = assign.sub(lambda m, o=option: _assignment(o, m.group(1)), text)
        # A bare identifier like max_tokens cannot be ordinary prose; "lr must be" names lr too.
        bare = r"\b(?![.\-/])" if "_" in name else r"(?= must\b)"
        text = re.sub(rf"(?<![\w.\-/]){re.escape(name)}{bare}", option.flag, text)
    return re.sub(r"(--[\w-]+) \(\1\)", r"\1", text)  # "--resume (--resume)" -> "--resume"


def _assignment(option: Option, value: str) -> str:
    """``name=value`` as the command line writes it."""
    if value in ("True", "False"):
        on = (value == "True") != option.negated
        return option.flag if on else f"no {option.flag}"
    if value == "...":
        return f"{option.flag} {option.metavar or option.name.upper()}"
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" and " " not in value:
        value = value[1:-1]
    if re.fullmatch(r"\[[\d., -]*\]", value):  # lists are comma-separated on the command line
        value = ",".join(v.strip() for v in value[1:-1].split(",") if v.strip())
    return f"{option.flag} {value}"


# Warnings raised from these packages are the toolkit's own advice: one line, no source echo.
_OWN_PACKAGES = tuple(str(Path(__file__).resolve().parents[2] / name) for name in ("interp", "saes", "probes"))


def _own(category: Any, filename: str) -> bool:
    """A warning of the toolkit's: its own kind (a library warning points at its caller, which
    may be torch's no_grad wrapper), or raised in its code."""
    from interp.errors import InterpWarning
    from saes.errors import UnknownKeyWarning

    return (isinstance(category, type) and issubclass(category, (InterpWarning, UnknownKeyWarning))
            or str(Path(filename).resolve()).startswith(_OWN_PACKAGES))


@contextlib.contextmanager
def warnings_in_flags(table: Mapping[str, Option] | None, prog: str = "interp") -> Iterator[None]:
    """Warnings shown while the command runs name its flags too; the toolkit's own are one
    ``PROG: warning: ...`` line, like its errors (others keep Python's format)."""
    show = warnings.showwarning

    def translated(message: Any, category: Any, filename: str, *rest: Any, **kw: Any) -> None:
        text = to_flags(str(message), table)
        if _own(category, filename):
            print(f"{prog}: warning: {text}", file=sys.stderr)
        else:
            show(text, category, filename, *rest, **kw)

    warnings.showwarning = translated
    try:
        yield
    finally:
        warnings.showwarning = show
