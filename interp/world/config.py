"""Configuration of the planted world: sizes of the fact base and the mixture of documents.

Every probability here is part of the generator's exact distribution, so changing one
changes the true per-token entropy the scorer reports as well.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class WorldConfig:
    """What the world contains. ``seed`` fixes the invented names and the fact base.

    The seed used to *sample* documents is separate (see :meth:`World.sample_docs`), so one
    world can produce any number of independent corpora.
    """

    seed: int = field(default=0, metadata={"help": "world seed: the invented names and the facts"})
    n_entities: int = 200          # invented lands; each has one value per relation
    n_languages: int = 12          # invented language names (values of the relation "language")
    n_aliases: int = 16            # invented names memory does not know: aliases and novel lands

    # Document mixture (by documents, not tokens).
    p_topical: float = 0.25
    p_fact: float = 0.40
    p_qa: float = 0.35
    # Fame of the lands: land i is written with weight (i + 1) ** -land_zipf, so the most
    # written land appears ~14x as often as the least (some facts common, some rare).
    land_zipf: float = 0.5

    # Topical documents.
    p_topical_stop: float = 0.3    # after each sentence: end the document
    max_topical_sentences: int = 5
    sentiment_prior: tuple[float, float, float] = (0.3, 0.35, 0.35)   # neutral, positive, negative
    p_adjective: float = 0.35      # an optional adjective before a noun
    p_sentiment_adjective: float = 0.6  # in a non-neutral sentence, the adjective is evaluative
    p_sentiment_verb: float = 0.4  # in a non-neutral action sentence, the verb is evaluative
    p_tail_optional: float = 0.3   # ", and it was ..." when the sentence already showed its sentiment
    p_place: float = 0.4           # an optional "in/near the PLACE"
    p_repeat: float = 0.5          # a noun slot repeats a noun the document already used

    # Fact documents.
    p_fact_stop: float = 0.35
    max_fact_sentences: int = 5
    # How a fact sentence reaches its land (facts.CHAINS): direct (1 look-up), through the
    # neighbour (2), through the capital (2), through the capital then the neighbour (3).
    chain_prior: tuple[float, float, float, float] = (0.45, 0.2, 0.2, 0.15)

    # QA items: prior over item types
    # (supportive, conflicting, novel, irrelevant, noise, complementary).
    item_type_prior: tuple[float, ...] = (0.12, 0.36, 0.20, 0.12, 0.08, 0.12)
    context_sizes: tuple[float, float, float] = (0.45, 0.35, 0.20)   # P(1, 2, 3 context facts)
    p_distractor_true: float = 0.7  # a distractor fact in a context states the true value
    p_noise_stop: float = 0.35      # noise passages: stop after each word (from the 2nd on)
    max_noise_words: int = 6

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorldConfig":
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**kwargs)


DEFAULT_CONFIG = WorldConfig()
