"""Attribution graphs against the world's planted truth: the bridge land of a composed fact.

In ``the flag of the land whose capital is CITY is`` the land is never written: the model
looks it up from the city (the bridge) and then looks up its flag. The world model does the
first look-up in block 0 at the final ``is`` (interp/world/WORLD.md: patching that position
after block 0 restores everything, and a probe reads the unwritten land there). A faithful
graph must therefore route the answer through layer-0 features at the final position that
stand for the bridge land, and setting those features to another land's must move the
answer to that land's flag.

:func:`bridge_check` measures both over pairs of lands with different flags:

* ``route_share``: the share of the answer logit's influence (graph influence, as pruning
  uses it) that passes through the layer's feature nodes at the final position, and
  ``route_top``: the share of prompts where that place carries more influence than any
  other (layer, position) of features;
* ``selective_share``: of the influence, the part carried by features selective for the
  bridge land (firing at that place on at most ``selective_fraction`` of all lands'
  prompts). On the world model it is small: the land is a combination of many features,
  most of which fire for many lands;
* ``moved``: the share of pairs (A, B) whose greedy answer becomes B's flag when every feature
  at that place is given its value on B's prompt (:func:`~.interventions.patch_features`, in
  the real model), beside two controls where the graph says the land is not carried: the
  same layer's features at the city's own position (``moved_at_city``), and the other
  layers' features at the final position (``moved_elsewhere``, where they have transcoders);
* ``stayed``: pairs still answering A's flag.

:func:`rendering_check` asks the bridge question on the PK/CK renderings, and
:func:`instruction_check` whether the instruction's features gate memory against context
(transcoders for it train on :func:`pkck_corpus`).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.circuits.attribution import attribute
from interp.circuits.interventions import intervene, patch_features
from interp.circuits.replacement import ReplacementModel, Transcoders, load_transcoders
from interp.errors import InterpError


def bridge_corpus(repeats: int = 4, seed: int = 0, world: Any = None) -> list[str]:
    """Text for transcoders that must see the bridge look-up: every one-hop fact and every
    composed fact through a capital (``... of the land whose capital is CITY is VALUE .``),
    five sentences a line, shuffled anew ``repeats`` times (about 63,000 tokens each). The
    world's documents hold these sentences too, but too rarely for a short training run to
    give the 200 city-to-land look-ups features of their own."""
    from interp.world import World
    from interp.world.datasets import fact_prompts

    world = world or World()
    sentences = []
    for hops in (1, 2, 3):
        prompts, answers, _ = fact_prompts(world, hops)
        sentences += [" ".join([*p[1:], a, "."]) for p, a in zip(prompts, answers) if hops == 1 or "capital" in p[4:]]
    gen = random.Random(seed)
    lines = []
    for _ in range(repeats):
        gen.shuffle(sentences)
        lines += [" ".join(sentences[i:i + 5]) for i in range(0, len(sentences), 5)]
    return lines


def pkck_corpus(n_items: int = 6000, seed: int = 11, world: Any = None) -> list[str]:
    """Text for transcoders that must see the PK/CK renderings: ``n_items`` QA documents in
    each of the three renderings (about 100 tokens per item), one a line. Transcoders trained
    on ordinary world text rarely see an instruction, so their features at the final ``:``
    do not carry which source the instruction asks for (patching them moves nothing)."""
    from interp.world import pkck_items

    return [" ".join(words[1:-1]) for it in pkck_items(n_items, seed=seed, world=world) for words in it.full.values()]


def capital_prompt(facts: Any, land: str, relation: str = "flag") -> str:
    """``the RELATION of the land whose capital is CITY is`` for ``land``."""
    return f"the {relation} of the land whose capital is {facts.value(land, 'capital')} is"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table: the header, its rule, one line per row."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


@dataclass
class BridgeCheck:
    layer: int
    n_pairs: int
    route_share: float
    route_top: float
    selective_share: float
    moved: float
    stayed: float
    moved_at_city: float
    moved_elsewhere: float | None      # None when no other layer has a transcoder
    pairs: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        elsewhere = "no other layer" if self.moved_elsewhere is None else f"{self.moved_elsewhere:.3f}"
        return _markdown_table(("measure", "value"), [
            ("pairs of lands (different flags)", self.n_pairs),
            (f"answer influence through layer-{self.layer} features at the final position", f"{self.route_share:.3f}"),
            ("prompts where that place carries the most influence of any (layer, position)", f"{self.route_top:.3f}"),
            ("... of it through features selective for the bridge land", f"{self.selective_share:.3f}"),
            (f"answer moved to the other land's flag (layer-{self.layer} features patched)", f"{self.moved:.3f}"),
            ("answer kept its own flag", f"{self.stayed:.3f}"),
            (f"answer moved when layer-{self.layer} features at the city's position are patched instead",
             f"{self.moved_at_city:.3f}"),
            ("answer moved when the other layers' features are patched instead", elsewhere),
        ])


def _selectivity(rms: dict[str, ReplacementModel], layer: int) -> dict[int, float]:
    """Per feature index: the share of lands whose prompt it fires on at (layer, final position)."""
    fired: dict[int, int] = {}
    for rm in rms.values():
        sel = (rm.feature_layer == layer) & (rm.feature_pos == rm.n_pos - 1)
        for feature in rm.feature_index[sel].tolist():
            fired[feature] = fired.get(feature, 0) + 1
    return {k: v / len(rms) for k, v in fired.items()}


def bridge_check(model: Any, transcoders: Transcoders, *, lands: Sequence[str] | None = None, n_pairs: int = 30,
                 layer: int = 0, selective_fraction: float = 0.05, freeze_attention: bool = True,
                 seed: int = 0, relation: str = "flag") -> BridgeCheck:
    """The planted-truth check of the module docstring on the world model."""
    from interp.world import World

    facts = World().facts
    tcs = load_transcoders(transcoders, model)
    lands = list(lands or facts.entities)
    rms = {land: ReplacementModel(model, tcs, capital_prompt(facts, land, relation)) for land in lands}
    selectivity = _selectivity(rms, layer)
    token = model.tokenizer.convert_tokens_to_ids
    gen = random.Random(seed)
    chosen = gen.sample(lands, min(n_pairs, len(lands)))
    rows = []
    others = [x for x, tc in sorted(tcs.items()) if x != layer and tc is not None]
    for a in chosen:
        b = gen.choice([x for x in lands if facts.value(x, relation) != facts.value(a, relation)])
        rm_a, rm_b = rms[a], rms[b]
        flag_a, flag_b = token(facts.value(a, relation)), token(facts.value(b, relation))
        graph = attribute(model, rm_a, logit_tokens=[flag_a])
        influence = graph.node_influence()
        here = ((graph.active_features[:, 0] == layer) & (graph.active_features[:, 1] == graph.n_pos - 1)).nonzero()
        here = here.squeeze(1)
        selective = torch.tensor([selectivity[int(f)] <= selective_fraction
                                  for f in graph.active_features[here, 2]], dtype=torch.bool)
        total = float(influence.sum())
        groups: dict[tuple[int, int], float] = {}
        for (lay, pos, _), value in zip(graph.active_features.tolist(), influence[:graph.n_features].tolist()):
            groups[(lay, pos)] = groups.get((lay, pos), 0.0) + value
        answer = {}
        for name, layers, pos in (("patched", [layer], -1), ("city", [layer], -2), ("elsewhere", others, -1)):
            if layers:
                result = intervene(model, rm_a, edits=patch_features(rm_a, rm_b, layers, [pos]),
                                   freeze_attention=freeze_attention)
                answer[name] = int(result.logits[-1].argmax())
        rows.append({"land": a, "other": b, "route": float(influence[here].sum()) / total,
                     "top": max(groups, key=groups.get) == (layer, graph.n_pos - 1),
                     "selective": float(influence[here][selective].sum()) / total,
                     "moved": answer["patched"] == flag_b, "stayed": answer["patched"] == flag_a,
                     "moved_at_city": answer["city"] == flag_b,
                     "moved_elsewhere": answer["elsewhere"] == flag_b if others else None})

    def mean(key: str) -> float | None:
        values = [float(r[key]) for r in rows if r[key] is not None]
        return sum(values) / len(values) if values else None

    return BridgeCheck(layer=layer, n_pairs=len(rows), route_share=mean("route"), route_top=mean("top"),
                       selective_share=mean("selective"),
                       moved=mean("moved"), stayed=mean("stayed"), moved_at_city=mean("moved_at_city"),
                       moved_elsewhere=mean("moved_elsewhere"), pairs=rows)


@dataclass
class RenderingCheck:
    """Per rendering (ignore / consider / use the context): how often the graph's top feature
    place is the final position, and how often patching it from the same item about another
    land moves the answer to that land's remembered value (``moved``) or leaves it (``kept``)."""

    n_items: int
    renderings: dict[str, dict[str, float]]

    def table(self) -> str:
        return _markdown_table(
            ("rendering", "prompts the model answers", "top place at the final position",
             "moved to the other land's remembered value", "answer kept"),
            [(name, f"{r['n']:.0f}", f"{r['top_last']:.3f}", f"{r['moved']:.3f}", f"{r['kept']:.3f}")
             for name, r in self.renderings.items()])


def rendering_check(model: Any, transcoders: Transcoders, *, n_items: int = 10, seed: int = 3,
                    renderings: Sequence[str] = ("ignore", "consider", "use")) -> RenderingCheck:
    """The bridge check's question on the PK/CK renderings of QA items whose context does not
    state the asked fact (``irrelevant`` and ``noise`` items): the asked land is written, the
    value must come from memory when the instruction allows it (``ignore``, ``consider``) and is
    ``unknown`` when only the context may be used (``use``). For each item the graph of the
    model's own answer picks the (layer, position) whose features carry the most influence;
    those features get their values on the same prompt with another land asked. A faithful
    graph moves a remembered answer to the other land's value and leaves ``unknown`` alone."""
    from interp.world import World, pkck_items

    facts = World().facts
    tcs = load_transcoders(transcoders, model)
    token = model.tokenizer.convert_tokens_to_ids
    gen = random.Random(seed)
    items = [it for it in pkck_items(20 * n_items, seed=seed) if it.item_type in ("irrelevant", "noise")
             and it.subject in facts.entities][:n_items]
    out: dict[str, dict[str, float]] = {}
    for name in renderings:
        counts = {"n": 0.0, "top_last": 0.0, "moved": 0.0, "kept": 0.0}
        for it in items:
            other = gen.choice([x for x in facts.entities if facts.value(x, it.relation) != facts.value(it.subject, it.relation)])
            words = it.prompts[name][1:]
            rm_a = ReplacementModel(model, tcs, " ".join(words))
            rm_b = ReplacementModel(model, tcs, " ".join(other if w == it.subject else w for w in words))
            answer = int(rm_a.logits[-1].argmax())
            if answer != token(it.answers[name]):
                continue
            graph = attribute(model, rm_a, logit_tokens=[answer])
            influence = graph.node_influence()[:graph.n_features]
            places: dict[tuple[int, int], float] = {}
            for (lay, pos, _), value in zip(graph.active_features.tolist(), influence.tolist()):
                places[(lay, pos)] = places.get((lay, pos), 0.0) + value
            layer, pos = max(places, key=places.get)
            after = int(intervene(model, rm_a, edits=patch_features(rm_a, rm_b, [layer], [pos])).logits[-1].argmax())
            counts["n"] += 1
            counts["top_last"] += pos == graph.n_pos - 1
            counts["moved"] += after == token(facts.value(other, it.relation))
            counts["kept"] += after == answer
        n = max(counts["n"], 1.0)
        out[name] = {"n": counts["n"], **{k: counts[k] / n for k in ("top_last", "moved", "kept")}}
    return RenderingCheck(n_items=len(items), renderings=out)


@dataclass
class InstructionCheck:
    """Does the instruction gate memory against context? On conflicting QA items (the context
    states a value that differs from the remembered one), per direction (``ignore->use``: the
    "ignore the context" prompt, answered from memory, gets features from the "use only the
    context" prompt, answered from the context; ``use->ignore`` the other way):

    * ``n``: items the model answers as both renderings demand;
    * ``instruction_share``: the share of the answer's graph influence at the instruction's
      positions (their token embeddings, features and errors), and ``instruction_feature_share``
      the part of it on features;
    * ``flipped_free`` / ``flipped_frozen``: the share of items whose answer becomes the other
      rendering's when layer ``layer``'s features at the final position take their values on
      the other rendering, attention free to respond / frozen at the clean run's;
    * ``flipped_instruction``: the same patch at the instruction's own positions, every layer
      with a transcoder, attention free.
    """

    n_items: int
    layer: int
    directions: dict[str, dict[str, float]]

    def table(self) -> str:
        return _markdown_table(
            ("direction", "items answered", "influence at the instruction (features)", "flipped, attention free",
             "flipped, attention frozen", "flipped by the instruction's own features"),
            [(name, f"{r['n']:.0f}", f"{r['instruction_share']:.3f} ({r['instruction_feature_share']:.3f})",
              f"{r['flipped_free']:.3f}", f"{r['flipped_frozen']:.3f}", f"{r['flipped_instruction']:.3f}")
             for name, r in self.directions.items()])


def instruction_check(model: Any, transcoders: Transcoders, *, n_items: int = 16, seed: int = 3,
                      layer: int = 0) -> InstructionCheck:
    """The PK/CK renderings' gate, read off graphs and tested by patching (see
    :class:`InstructionCheck`). The renderings of one item differ only in the instruction's
    words, so positions line up. On the world model the instruction is read into layer 0 at
    the final ``:``, and what it decides acts through the later layers' attention: patched
    there with attention free the answer switches sources, with attention frozen (the graph's
    own linear system, in which attention patterns are constants) it does not."""
    from interp.world import pkck_items

    tcs = load_transcoders(transcoders, model)
    if layer not in tcs:
        raise InterpError(f"instruction_check patches layer {layer}'s features, but the transcoders cover "
                         f"layers {sorted(tcs)}")
    token = model.tokenizer.convert_tokens_to_ids
    items = [it for it in pkck_items(40 * n_items, seed=seed, item_types=["conflicting"])
             if it.answers["ignore"] != it.answers["use"]][:n_items]
    keys = ("instruction_share", "instruction_feature_share", "flipped_free", "flipped_frozen", "flipped_instruction")
    directions = (("ignore", "use"), ("use", "ignore"))
    sums = {d: dict.fromkeys(("n", *keys), 0.0) for d in directions}
    for it in items:
        rms = {name: ReplacementModel(model, tcs, " ".join(it.prompts[name][1:])) for name in ("ignore", "use")}
        answers = {name: token(it.answers[name]) for name in rms}
        if any(int(rm.logits[-1].argmax()) != answers[name] for name, rm in rms.items()):
            continue
        instruction = (rms["ignore"].tokens != rms["use"].tokens).nonzero().squeeze(1)
        for base, source in directions:
            rm_a, rm_b, acc = rms[base], rms[source], sums[(base, source)]
            graph = attribute(model, rm_a, logit_tokens=[answers[base]])
            influence = graph.node_influence()
            total = float(influence[:graph.logit_start].sum())
            at_instruction = torch.isin(graph.active_features[:, 1], instruction)
            features = float(influence[:graph.n_features][at_instruction].sum())
            errors_and_tokens = (graph.error_start + torch.arange(graph.n_layers + 1)[:, None] * graph.n_pos
                                 + instruction[None, :])  # the token nodes follow the errors as one more "layer"
            acc["n"] += 1
            acc["instruction_share"] += (features + float(influence[errors_and_tokens.flatten()].sum())) / total
            acc["instruction_feature_share"] += features / total
            for key, layers, positions, freeze in (("flipped_free", [layer], [-1], False),
                                                   ("flipped_frozen", [layer], [-1], True),
                                                   ("flipped_instruction", sorted(tcs), instruction.tolist(), False)):
                edits = patch_features(rm_a, rm_b, layers, positions)
                after = int(intervene(model, rm_a, edits=edits, freeze_attention=freeze).logits[-1].argmax())
                acc[key] += after == answers[source]
    out = {f"{base}->{source}": {"n": acc["n"], **{k: acc[k] / max(acc["n"], 1.0) for k in keys}}
           for (base, source), acc in sums.items()}
    return InstructionCheck(n_items=len(items), layer=layer, directions=out)
