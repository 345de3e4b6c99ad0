"""`interp eval-saes`: the SAE evaluation suite (SAEBench's metric families) on the world's planted truth."""
from __future__ import annotations

import argparse
from typing import Any

from interp.errors import InterpError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval-saes", help="SAEBench-style evaluation suite of one or more SAEs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("saes", nargs="+", metavar="SAE_DIR", help="SAE directories (saes.load)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise InterpError("eval-saes is not available in this build yet")
