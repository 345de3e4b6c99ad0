"""The fixed fact base: invented lands and one value per relation, drawn from the world seed."""
from __future__ import annotations

import random
from dataclasses import dataclass

from interp.world.lexicon import RELATIONS, Lexicon


@dataclass(frozen=True)
class Fact:
    """One memorised fact: ``the {relation} of {entity} is {value}``."""

    fact_id: int
    entity: str
    relation: str
    value: str

    def sentence(self) -> list[str]:
        return ["the", self.relation, "of", self.entity, "is", self.value, "."]


class FactBase:
    """``n_entities x len(RELATIONS)`` facts. Capitals are unique per land; other values repeat.

    Fact ids are ``entity_index * len(RELATIONS) + relation_index``.
    """

    def __init__(self, lexicon: Lexicon, seed: int) -> None:
        rng = random.Random(f"facts-{seed}")
        self.lexicon = lexicon
        self.entities = list(lexicon.entities)
        self.relations = list(RELATIONS)
        self._entity_index = {e: i for i, e in enumerate(self.entities)}
        self._relation_index = {r: i for i, r in enumerate(self.relations)}
        capitals = list(lexicon.cities)
        rng.shuffle(capitals)
        self._value: dict[tuple[str, str], str] = {}
        for i, entity in enumerate(self.entities):
            for relation in self.relations:
                value = capitals[i] if relation == "capital" else rng.choice(lexicon.relation_values(relation))
                self._value[(entity, relation)] = value
        self.facts = [Fact(self.fact_id(e, r), e, r, self._value[(e, r)])
                      for e in self.entities for r in self.relations]

    def __len__(self) -> int:
        return len(self.facts)

    def value(self, entity: str, relation: str) -> str:
        """The true value of ``relation`` for ``entity``."""
        return self._value[(entity, relation)]

    def fact_id(self, entity: str, relation: str) -> int:
        return self._entity_index[entity] * len(self.relations) + self._relation_index[relation]

    def values(self, relation: str) -> list[str]:
        """Every value ``relation`` can take (the context of a conflicting item draws from these)."""
        return self.lexicon.relation_values(relation)
