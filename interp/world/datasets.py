"""Labelled datasets that other modules read directly.

* :func:`labelled_batch`: documents as ``tokens [batch, pos]`` plus per-token label tensors,
  and, given a HookedModel and hook names, the activations at those hooks.
* :func:`pkck_items` / :func:`pkck_batch`: QA items rendered the three PK/CK ways with
  aligned positions and known answers (the data of the rank-2 PK/CK subspace).
* :func:`fact_prompts`: one recall prompt per memorised fact or composed question.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.world.generator import BOS, PAD, Doc, World
from interp.world.grammar import ITEM_TYPES, Z
from interp.world.labels import encode_docs
from interp.world.lexicon import INSTRUCTIONS
from interp.world.scorer import score_doc

QA_Z: Z = ("qa", None)


@dataclass
class LabelledBatch:
    """Tokens, labels and (optionally) cached activations of a batch of documents."""

    tokens: torch.Tensor                       # [batch, pos], right-padded with <pad>
    labels: dict[str, torch.Tensor]            # name -> [batch, pos] (or [batch, pos, k])
    docs: list[Doc]
    cache: dict[str, torch.Tensor] | None = None  # hook name -> [batch, pos, ...]

    @property
    def mask(self) -> torch.Tensor:
        """True on real tokens, False on padding."""
        return self.labels["doc_kind"] >= 0

    @property
    def attention_mask(self) -> torch.Tensor:
        """``[batch, pos]`` int64 for model calls: 1 on each document's tokens, 0 on the right
        padding after them. Activations at real positions are the same without it; with it HF
        knows the ``<pad>`` columns are padding rather than guessing (and warning)."""
        lengths = torch.tensor([len(d) for d in self.docs])
        return (torch.arange(self.tokens.shape[1]) < lengths[:, None]).long()


def labelled_batch(
    n: int,
    seed: int = 0,
    world: World | None = None,
    kind: str | None = None,
    topic: str | None = None,
    model: Any = None,
    names: Sequence[str] | None = None,
    with_scores: bool = False,
    pad_to: int | None = None,
    batch_size: int = 128,
) -> LabelledBatch:
    """``n`` documents of the world as tensors, one document per row.

    ``kind`` restricts to "topical", "fact" or "qa" documents (``topic`` to one topic).
    With ``model`` (a HookedModel) and ``names``, also returns the activations at those
    hooks from ``model.run_with_cache(tokens, names=names)``. ``with_scores`` adds the
    generator's exact ``true_logprob`` / ``true_entropy`` per token. Padding sits on the
    right, so a causal model's activations at real positions do not depend on it.
    Activations are computed ``batch_size`` rows at a time and returned on the CPU.
    """
    world = world or World()
    docs = world.sample_docs(n, seed=seed, kind=kind, topic=topic)
    scores = [score_doc(world, d.tokens) for d in docs] if with_scores else None
    tokens, labels = encode_docs(world, docs, pad_to=pad_to, scores=scores)
    cache = None
    if model is not None:
        if not names:
            raise ValueError("give hook names with the model, e.g. names=['blocks.1.hook_resid_post']")
        _check_vocab(world, model)
        batch = LabelledBatch(tokens, labels, docs)
        cache = _cached_activations(model, tokens, batch.attention_mask, list(names), batch_size)
    return LabelledBatch(tokens, labels, docs, cache)


def _cached_activations(model: Any, tokens: torch.Tensor, attention_mask: torch.Tensor, names: list[str],
                        batch_size: int) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            _, cache = model.run_with_cache(tokens[start:start + batch_size], names=names,
                                            attention_mask=attention_mask[start:start + batch_size])
            for name in names:
                parts[name].append(cache[name].detach().cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _check_vocab(world: World, model: Any) -> None:
    tok = getattr(model, "tokenizer", None)
    if tok is not None and len(tok) != len(world.vocab):
        raise ValueError(f"the model's tokenizer has {len(tok)} tokens but this world has {len(world.vocab)}: "
                         "the model was not trained on this world (check WorldConfig.seed)")


# -- QA items in three renderings ------------------------------------------------------------------
@dataclass
class PKCKItem:
    """One (context, question) rendered three ways. Prompts end at ``answer :``."""

    item_type: str
    source: str
    prompts: dict[str, list[str]]           # instruction -> prompt words (equal lengths)
    answers: dict[str, str]                 # instruction -> expected answer word
    answer_sources: dict[str, str]          # instruction -> memory/context/both/none
    relation: str
    subject: str
    full: dict[str, list[str]] = field(default_factory=dict)  # instruction -> whole document


def _run(world: World, u: Any, choose) -> tuple[list[str], dict]:
    """Drive the QA program; ``choose(step_index, dist)`` picks each token. Returns the
    document words and the segment record."""
    seg: dict = {}
    words = [BOS]
    program = world.grammar.program(QA_Z, u, seg, words)
    step = next(program)
    i = 0
    while True:
        token = choose(i, step.dist)
        words.append(token)
        i += 1
        try:
            step = program.send(token)
        except StopIteration:
            break
    return words + ["<eos>"], seg


def render(world: World, u: Any, free_choices: list[str], instruction: str) -> tuple[list[str], dict]:
    """Replay a QA item with its instruction replaced: the first free choice is the
    instruction, later free choices are reused in order, fixed tokens follow the grammar."""
    it = iter(free_choices[1:])

    def choose(i: int, dist) -> str:
        if i == 0:
            return instruction
        if len(dist.tokens) == 1:
            return dist.tokens[0]
        return next(it)

    return _run(world, u, choose)


def pkck_items(n: int, seed: int = 0, world: World | None = None,
               item_types: Sequence[str] | None = None) -> list[PKCKItem]:
    """``n`` QA items, each rendered the three ways (ignore / use / consider the context).

    The three prompts of one item have equal length and differ only in the instruction
    words (positions 1-4), so position-wise interventions line up across renderings.
    """
    world = world or World()
    rng = random.Random(f"pkck-{world.config.seed}-{seed}")
    latents = list(world.grammar.segment_latents(QA_Z))
    if item_types is not None:
        unknown = set(item_types) - set(ITEM_TYPES)
        if unknown:
            raise ValueError(f"unknown item types {sorted(unknown)}; use {', '.join(ITEM_TYPES)}")
        latents = [(u, p) for u, p in latents if u[0] in item_types]
    total = sum(p for _, p in latents)
    items = []
    for _ in range(n):
        r, acc, u = rng.random() * total, 0.0, latents[-1][0]
        for cand, p in latents:
            acc += p
            if r < acc:
                u = cand
                break
        free: list[str] = []

        def choose(i: int, dist) -> str:
            tok = dist.sample(rng)
            if len(dist.tokens) > 1 or i == 0:
                free.append(tok)
            return tok

        _run(world, u, choose)
        full, meta = {}, {}
        for ins in INSTRUCTIONS:
            full[ins], seg = render(world, u, free, ins)
            meta = seg
        m = meta["meta"]
        prompts = {ins: words[: words.index("answer") + 2] for ins, words in full.items()}
        items.append(PKCKItem(item_type=u[0], source=meta["source"], prompts=prompts, answers=m["answers"],
                              answer_sources=m["answer_sources"], relation=m["relation"], subject=m["subject"],
                              full=full))
    return items


def pkck_batch(items: Sequence[PKCKItem], world: World | None = None) -> dict[str, torch.Tensor]:
    """Tensors of PK/CK items, renderings in the order ignore, use, consider.

    * ``tokens [n, 3, pos]``: prompts, right-padded with <pad>;
    * ``last_pos [n]``: index of the last prompt token (the ``:`` after ``answer``);
    * ``answers [n, 3]``: expected answer token ids;
    * ``answer_sources [n, 3]``: 0 memory, 1 context, 2 both, 3 none;
    * ``item_type [n]``: index into ``ITEM_TYPES``; ``source [n]``: 0 expert, 1 rumor.
    """
    from interp.world.labels import ANSWER_SOURCES
    from interp.world.lexicon import SOURCES

    world = world or World()
    index = {w: i for i, w in enumerate(world.vocab)}
    width = max(len(it.prompts[INSTRUCTIONS[0]]) for it in items)
    tokens = torch.full((len(items), 3, width), index[PAD], dtype=torch.long)
    last = torch.zeros(len(items), dtype=torch.long)
    answers = torch.zeros(len(items), 3, dtype=torch.long)
    sources = torch.zeros(len(items), 3, dtype=torch.long)
    for i, it in enumerate(items):
        for j, ins in enumerate(INSTRUCTIONS):
            words = it.prompts[ins]
            tokens[i, j, : len(words)] = torch.tensor([index[w] for w in words])
            answers[i, j] = index[it.answers[ins]]
            sources[i, j] = ANSWER_SOURCES.index(it.answer_sources[ins])
        last[i] = len(it.prompts[INSTRUCTIONS[0]]) - 1
    return {"tokens": tokens, "last_pos": last, "answers": answers, "answer_sources": sources,
            "item_type": torch.tensor([ITEM_TYPES.index(it.item_type) for it in items]),
            "source": torch.tensor([SOURCES.index(it.source) for it in items])}


def fact_prompts(world: World | None = None, hops: int = 1) -> tuple[list[list[str]], list[str], list[int]]:
    """One prompt per question with ``hops`` look-ups, its expected value and fact id.

    ``hops=1``: every fact, ``<bos> the REL of ENT is``. ``hops=2``: ``<bos> the REL of the
    neighbor of ENT is`` and ``<bos> the REL of the land whose capital is CITY is`` for every
    land and relation; ``hops=3``: ``<bos> the REL of the neighbor of the land whose capital
    is CITY is``. The fact id is that of the fact the answer is (the last bridge's).
    """
    world = world or World()
    chains = world.facts.chains(hops)
    prompts = [[BOS] + c.words() for c in chains]
    return prompts, [c.value for c in chains], [world.facts.fact_id(c.target, c.relation) for c in chains]
