"""The fixed fact base: invented lands, one value per relation, and the chains that compose them.

Every land has a capital (a city no other land has), a flag colour, an emblem animal, a
language and a neighbour (another land). Because capitals are unique and every land has a
neighbour, facts compose: ``the flag of the neighbor of velar`` needs two look-ups (the
neighbour, then its flag), and ``the flag of the neighbor of the land whose capital is mip``
needs three (capital to land, land to neighbour, neighbour to flag). The lands in between
(the *bridges*) are never written.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from interp.world.lexicon import QA_RELATIONS, RELATIONS, Lexicon

# How a fact sentence reaches the land whose relation it asks, from the name it writes.
# "direct":   the REL of ENT                                  (1 look-up)
# "neighbor": the REL of the neighbor of ENT                  (2)
# "capital":  the REL of the land whose capital is CITY       (2)
# "capital_neighbor": the REL of the neighbor of the land whose capital is CITY   (3)
CHAINS = ["direct", "neighbor", "capital", "capital_neighbor"]
CHAIN_HOPS = {"direct": 1, "neighbor": 2, "capital": 2, "capital_neighbor": 3}


@dataclass(frozen=True)
class Fact:
    """One memorised fact: ``the {relation} of {entity} is {value}``."""

    fact_id: int
    entity: str
    relation: str
    value: str

    def sentence(self) -> list[str]:
        return ["the", self.relation, "of", self.entity, "is", self.value, "."]


@dataclass(frozen=True)
class Chain:
    """A composed question: the relation asked, how the land is reached, and the answer.

    ``anchor`` is the written name (a land for "direct"/"neighbor", a city otherwise);
    ``bridges`` are the lands passed through, in order, ending at the land whose
    ``relation`` is asked (empty for one look-up).
    """

    relation: str
    chain: str
    anchor: str
    bridges: tuple[str, ...]
    target: str               # the land whose relation is the answer
    value: str

    @property
    def hops(self) -> int:
        return CHAIN_HOPS[self.chain]

    def words(self) -> list[str]:
        """``the REL of ... is`` (the prompt without its answer)."""
        middle = {"direct": [self.anchor], "neighbor": ["the", "neighbor", "of", self.anchor],
                  "capital": ["the", "land", "whose", "capital", "is", self.anchor],
                  "capital_neighbor": ["the", "neighbor", "of", "the", "land", "whose", "capital", "is",
                                       self.anchor]}[self.chain]
        return ["the", self.relation, "of", *middle, "is"]


class FactBase:
    """``n_entities x len(RELATIONS)`` facts. Capitals are unique per land; neighbours form
    one random cycle-free-of-self permutation; other values repeat.

    Fact ids are ``entity_index * len(RELATIONS) + relation_index``. Lands are not equally
    famous: land ``i`` is written with weight ``(i + 1) ** -zipf`` (:attr:`land_weights`), so
    some facts are common and some rare.
    """

    def __init__(self, lexicon: Lexicon, seed: int, zipf: float = 0.0) -> None:
        rng = random.Random(f"facts-{seed}")
        self.lexicon = lexicon
        self.entities = list(lexicon.entities)
        self.relations = list(RELATIONS)
        self.qa_relations = list(QA_RELATIONS)
        self._entity_index = {e: i for i, e in enumerate(self.entities)}
        self._relation_index = {r: i for i, r in enumerate(self.relations)}
        capitals = list(lexicon.cities)
        rng.shuffle(capitals)
        # A derangement: every land's neighbour is another land.
        order = list(self.entities)
        rng.shuffle(order)
        neighbor = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
        self._value: dict[tuple[str, str], str] = {}
        for i, entity in enumerate(self.entities):
            for relation in self.relations:
                if relation == "capital":
                    value = capitals[i]
                elif relation == "neighbor":
                    value = neighbor[entity]
                else:
                    value = rng.choice(lexicon.relation_values(relation))
                self._value[(entity, relation)] = value
        self._land_of_capital = {capitals[i]: e for i, e in enumerate(self.entities)}
        self.facts = [Fact(self.fact_id(e, r), e, r, self._value[(e, r)])
                      for e in self.entities for r in self.relations]
        raw = [(i + 1) ** -zipf for i in range(len(self.entities))]
        self.land_weights = {e: w / sum(raw) for e, w in zip(self.entities, raw)}

    def __len__(self) -> int:
        return len(self.facts)

    def value(self, entity: str, relation: str) -> str:
        """The true value of ``relation`` for ``entity``."""
        return self._value[(entity, relation)]

    def land_of_capital(self, city: str) -> str:
        return self._land_of_capital[city]

    def fact_id(self, entity: str, relation: str) -> int:
        return self._entity_index[entity] * len(self.relations) + self._relation_index[relation]

    def values(self, relation: str) -> list[str]:
        """Every value ``relation`` can take (the context of a conflicting item draws from these)."""
        return self.lexicon.relation_values(relation)

    def resolve(self, relation: str, chain: str, anchor: str) -> Chain:
        """Follow ``chain`` from the written ``anchor`` to the value of ``relation``."""
        bridges: list[str] = []
        land = anchor
        if chain.startswith("capital"):
            land = self.land_of_capital(anchor)
            bridges.append(land)
        if chain.endswith("neighbor"):
            land = self.value(land, "neighbor")
            bridges.append(land)
        return Chain(relation, chain, anchor, tuple(bridges), land, self.value(land, relation))

    def chains(self, hops: int) -> list[Chain]:
        """Every composed question with ``hops`` look-ups (one per relation, chain and anchor).

        "the capital of the land whose capital is C" only repeats C, so it is not asked.
        """
        out = []
        for chain in (c for c in CHAINS if CHAIN_HOPS[c] == hops):
            for relation in self.relations:
                if chain == "capital" and relation == "capital":
                    continue
                for land in self.entities:
                    anchor = self.value(land, "capital") if chain.startswith("capital") else land
                    out.append(self.resolve(relation, chain, anchor))
        return out

    def anchor_land(self, item: Chain) -> str:
        """The land the question's written name stands for (a capital names its land)."""
        return self.land_of_capital(item.anchor) if item.chain.startswith("capital") else item.anchor

    def weight(self, item: Chain) -> float:
        """How often the generator writes this question's anchor (its land's fame)."""
        return self.land_weights[self.anchor_land(item)]
