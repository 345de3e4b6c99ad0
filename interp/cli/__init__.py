"""The `interp` command line. Each command lives in its own module with a ``register``."""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from interp.cli.options import TABLE_DEST, check_device, require_paths, to_flags, warnings_in_flags
from interp.errors import InterpError

# Modules that each add their commands to the parser, in the order `interp --help` lists them.
COMMAND_MODULES = [
    "interp.cli.quickstart",
    "interp.cli.harvest",
    "interp.cli.train",
    "interp.cli.transcoders",
    "interp.cli.circuits",
    "interp.cli.eval_suite",
    "interp.cli.interventions",
    "interp.cli.dashboard",
    "interp.cli.pkck",
    "interp.cli.world",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp",
        description="Mechanistic-interpretability toolkit: hooked models, activation stores, SAEs, probes, steering.",
        epilog="Start with: interp quickstart",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    require_paths(parser)  # an empty --out or --sae is refused, not taken for the current directory
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from saes.errors import SAEError

    table = getattr(args, TABLE_DEST, None)
    # "interp world eval", not "interp world": the subcommand that failed.
    prog = " ".join(["interp", args.command, *filter(None, [getattr(args, "world_command", None)])])
    try:
        with warnings_in_flags(table, prog=prog):
            check_device(getattr(args, "device", None))  # every command's --device, before a model loads
            return int(args.func(args) or 0)
    except (InterpError, SAEError) as err:
        # The toolkit's own errors already say what to do; a traceback would bury that. They
        # name Python arguments (for library users); here they name this command's flags.
        # A WriteError is also an OSError, whose str() starts "[Errno 28]": its message is its strerror.
        text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        print(f"{prog}: error: {to_flags(text, table)}", file=sys.stderr)
        return 1
    except OSError as err:
        # A file the command names cannot be opened, read or written (a name too long for the
        # file system, a directory where a file belongs, a full disk): the OS says why, and
        # which file, in one line.
        print(f"{prog}: error: {os_error_message(err)}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        print(f"{prog}: error: out of memory ({_first_line(err)}); use smaller sizes "
              "(--batch-size, --d-sae, --tokens, --context-length) or a machine with more memory", file=sys.stderr)
        return 1


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says an allocation failed (Python's MemoryError, torch's CPU allocator
    or its CUDA OutOfMemoryError): sizes the machine cannot hold, not a fault in the code."""
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


def os_error_message(err: OSError) -> str:
    """``err`` as one line: the file (long names cut in the middle) and the system's reason."""
    reason = err.strerror or str(err) or type(err).__name__
    names = [_short(str(n)) for n in (err.filename, err.filename2) if n is not None]
    if not names:
        return reason
    return f"{' -> '.join(names)}: {reason}" + ("; choose a shorter name" if err.errno == errno.ENAMETOOLONG else "")


def _short(name: str, keep: int = 60) -> str:
    return name if len(name) <= 2 * keep else f"{name[:keep]}...{name[-keep:]} ({len(name)} characters)"


if __name__ == "__main__":
    sys.exit(main())
