"""`interp dashboard`: feature dashboards of chosen latents as one self-contained HTML file."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interp.cli.options import MAX_LATENTS, also_names, bounded
from interp.errors import InterpError

MAX_EXAMPLES = 10_000          # examples per latent (each is a window of text in the page)
MAX_SHOWN = 100_000            # latents on one page

EPILOG = """example:
  interp dashboard --model world --sae runs/quickstart/topk --store runs/quickstart/store \\
      --latents 0,1,2 --out features.html --json features.json
  interp dashboard --model world --snmf runs/quickstart/snmf --store runs/quickstart/store --latents 0-9 --out snmf.html
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dashboard", help="feature dashboards (HTML, offline) of SAE or SNMF latents",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="model the store was harvested from (default: world)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sae", help="SAE directory (saes.load)")
    source.add_argument("--snmf", help="SNMF directory (SNMFResult.save); any store of its hook (rows it was not "
                        "fit on are encoded with its fixed features)")
    p.add_argument("--store", required=True, help="activation store directory")
    p.add_argument("--hook", default=None, help="store hook to read (default: the hook the SAE or SNMF records, "
                   "or the store's only one)")
    p.add_argument("--latents", required=True, help="comma-separated latents, ranges allowed: 0,5,10-14")
    p.add_argument("--out", default="features.html", help="HTML file to write")
    p.add_argument("--json", default=None, help="also write the Neuronpedia-style JSON here")
    p.add_argument("--examples", type=bounded(int, 0, MAX_EXAMPLES), default=10, help="top examples per latent")
    p.add_argument("--quantile-examples", type=bounded(int, 0, MAX_EXAMPLES), default=5,
                   help="examples per activation quantile group")
    also_names(p, {"hook": "--hook", "latents": "--latents", "n_examples": "--examples",
                   "n_quantile_examples": "--quantile-examples"})
    p.set_defaults(func=run)


def parse_latents(text: str) -> list[int]:
    """``0,5,10-14`` as latent indices (ranges inclusive), each from 0, at most MAX_SHOWN of them."""
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "-" in part[1:]:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise InterpError(f"--latents {text!r}: the range {part} runs backwards; write it as {b}-{a}")
                if b - a + len(out) >= MAX_SHOWN:
                    raise InterpError(f"--latents {text!r}: more than {MAX_SHOWN:,} latents on one page; choose fewer")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise InterpError(f"--latents {text!r} is not a list of integers; write e.g. 0,5,10-14") from None
    if not out:
        raise InterpError("--latents is empty; write e.g. 0,5,10-14")
    if min(out) < 0 or max(out) >= MAX_LATENTS or len(out) > MAX_SHOWN:
        raise InterpError(f"--latents {text!r}: latents are numbered from 0; write e.g. 0,5,10-14")
    return out


def _check_range(latents: list[int], n: int, what: str) -> None:
    """Every latent is one of the dictionary's ``n``."""
    outside = [i for i in latents if i >= n]
    if outside:
        raise InterpError(f"--latents: latent {outside[0]} is outside the {what}'s {n} latents; pick from 0 to {n - 1}")


def run(args: argparse.Namespace) -> int:
    import saes
    from interp.activations.store import ActivationStore
    from interp.dashboards import build_dashboard
    from interp.model.loading import load

    latents = parse_latents(args.latents)
    model = load(args.model)
    if args.sae:
        dictionary: Any = saes.load(args.sae)
        hook = args.hook or dictionary.metadata.get("hook_name")
        _check_range(latents, dictionary.d_sae, "SAE")
    else:
        dictionary = saes.SNMFResult.load(args.snmf)
        hook = args.hook or dictionary.config.get("hook_name")
        _check_range(latents, int(dictionary.features.shape[0]), "SNMF")
    if hook is not None and not isinstance(hook, str):
        raise InterpError(f"the {'SAE' if args.sae else 'SNMF'} records hook_name {hook!r}, not a hook name; "
                          "pass --hook")
    store = ActivationStore.open(args.store, hook=hook, model=model)
    dash = build_dashboard(model, dictionary, store, latents, n_examples=args.examples,
                           n_quantile_examples=args.quantile_examples)
    dash.save_html(args.out)
    print(f"{len(latents)} latent(s) of {store.hook} over {len(store):,} tokens in {dash.seconds:.1f}s -> "
          f"{args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")
    if args.json:
        dash.save_json(args.json)
        print(f"JSON -> {args.json}")
    return 0
