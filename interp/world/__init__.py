"""`interp.world`: a planted-ground-truth language and the tiny model trained on it.

>>> from interp.world import World, labelled_batch, pkck_items
>>> world = World()                                   # seed 0: names, facts, grammar
>>> batch = labelled_batch(8, seed=1, world=world)     # tokens [8, pos] + per-token labels
>>> sorted(batch.labels)[:3]
['answer_source', 'doc_kind', 'entity']

See WORLD.md next to this file for what is planted and where to look for it in the model.
"""
from __future__ import annotations

from pathlib import Path

from interp.world.config import WorldConfig
from interp.world.datasets import LabelledBatch, PKCKItem, fact_prompts, labelled_batch, pkck_batch, pkck_items
from interp.world.facts import Fact, FactBase
from interp.world.generator import Doc, World
from interp.world.labels import SCHEMA, describe_schema, encode_docs
from interp.world.scorer import DocScore, score_doc

__all__ = [
    "World", "WorldConfig", "Doc", "Fact", "FactBase", "score_doc", "DocScore",
    "labelled_batch", "LabelledBatch", "pkck_items", "pkck_batch", "PKCKItem", "fact_prompts",
    "encode_docs", "SCHEMA", "describe_schema", "default_model_path", "world_of_model", "write_corpus",
]


def default_model_path() -> Path:
    """Directory of the default model shipped inside the package (``from_pretrained``-ready)."""
    return Path(__file__).resolve().parent / "default_model"


def world_of_model(path: str | Path | None = None) -> World:
    """The world a model directory was trained on (read from its ``world.json``).

    Without a path: the default model's world. A directory without ``world.json`` gets the
    default world.
    """
    from interp.errors import InterpError
    from saes.formats.schema import read_json

    meta = Path(path or default_model_path()) / "world.json"
    if not meta.exists():
        return World()
    data = read_json(meta, InterpError)  # bounded, and a damaged file is named
    settings = data.get("world") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        raise InterpError(f"{meta} has no 'world' object of settings; the file is damaged or not a model's world.json")
    try:
        return World(WorldConfig.from_dict(settings))
    except (TypeError, ValueError, KeyError, IndexError) as err:
        raise InterpError(f"{meta}: its world settings cannot build a world ({type(err).__name__}: {err}); "
                          "the file is damaged or was written by another version") from None


def write_corpus(path, n: int, seed: int = 0, world: World | None = None) -> Path:
    """Write ``n`` labelled documents as JSONL (see :mod:`.corpus`)."""
    from interp.world.corpus import write_corpus as _write

    return _write(path, n, seed=seed, world=world)
