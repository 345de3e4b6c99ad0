"""The words of the world: topics, the category hierarchy, sentiment, and invented names.

Everything here is fixed data plus a seeded name generator. Word classes are kept
disjoint where the grammar has an optional slot (adjective or noun next?), so a token
sequence has one parse and the scorer's probabilities stay exact.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

# -- topics ----------------------------------------------------------------------------------
# Each topic: agents (people who act), objects, places, verbs (agent actions), adjectives.
# Words listed under several topics are the shared words. Hierarchy members are added to
# the topics their root belongs to (see HIERARCHY_TOPICS).
TOPICS: dict[str, dict[str, list[str]]] = {
    "nature": {
        "agents": ["hunter", "farmer", "ranger"],
        "objects": ["nest", "seed", "branch", "stone", "water"],
        "places": ["forest", "meadow", "river", "valley", "field"],
        "verbs": ["watches", "feeds", "finds", "follows", "plants"],
        "adjectives": ["wild", "quiet", "tall", "tiny"],
    },
    "cooking": {
        "agents": ["cook", "baker", "chef"],
        "objects": ["soup", "pan", "knife", "salt", "dough", "water"],
        "places": ["kitchen", "market", "bakery"],
        "verbs": ["cooks", "bakes", "cuts", "tastes", "boils"],
        "adjectives": ["fresh", "hot", "sweet", "salty"],
    },
    "travel": {
        "agents": ["driver", "pilot", "tourist"],
        "objects": ["ticket", "map", "bag", "suitcase"],
        "places": ["station", "harbor", "airport", "city"],
        "verbs": ["drives", "boards", "books", "reaches", "checks"],
        "adjectives": ["fast", "long", "busy", "distant"],
    },
    "music": {
        "agents": ["singer", "drummer", "composer"],
        "objects": ["song", "tune", "note", "record"],
        "places": ["stage", "hall", "studio"],
        "verbs": ["plays", "tunes", "hears", "records", "composes"],
        "adjectives": ["loud", "soft", "slow", "sweet"],
    },
    "sport": {
        "agents": ["player", "coach", "runner"],
        "objects": ["ball", "goal", "medal", "match", "trophy"],
        "places": ["stadium", "gym", "track", "field"],
        "verbs": ["kicks", "throws", "wins", "catches", "trains"],
        "adjectives": ["strong", "quick", "tired", "young"],
    },
    "school": {
        "agents": ["teacher", "student", "pupil"],
        "objects": ["book", "lesson", "exam", "pencil", "essay", "bag"],
        "places": ["classroom", "library", "school"],
        "verbs": ["reads", "writes", "studies", "teaches", "grades"],
        "adjectives": ["smart", "quiet", "new", "difficult"],
    },
    "health": {
        "agents": ["doctor", "nurse", "patient"],
        "objects": ["medicine", "pill", "fever", "wound", "water"],
        "places": ["clinic", "hospital", "ward"],
        "verbs": ["treats", "heals", "examines", "cures", "checks"],
        "adjectives": ["sick", "healthy", "weak", "calm"],
    },
    "work": {
        "agents": ["worker", "manager", "clerk"],
        "objects": ["report", "contract", "machine", "tool", "desk"],
        "places": ["office", "factory", "warehouse"],
        "verbs": ["builds", "fixes", "sells", "signs", "checks"],
        "adjectives": ["busy", "early", "late", "careful"],
    },
}

# -- the category hierarchy ---------------------------------------------------------------------
# node -> parent (None for roots). Leaves are the member words that occur in sentences.
HIERARCHY_PARENT: dict[str, str | None] = {
    "living": None, "animal": "living", "plant": "living",
    "bird": "animal", "fish": "animal", "mammal": "animal",
    "tree": "plant", "flower": "plant",
    "food": None, "fruit": "food", "vegetable": "food",
    "vehicle": None, "motor": "vehicle", "boat": "vehicle", "aircraft": "vehicle",
    "instrument": None, "strings": "instrument", "wind": "instrument", "percussion": "instrument",
}
HIERARCHY_MEMBERS: dict[str, list[str]] = {
    "bird": ["sparrow", "robin", "eagle", "owl"],
    "fish": ["salmon", "trout", "shark", "eel"],
    "mammal": ["fox", "deer", "horse", "rabbit"],
    "tree": ["oak", "pine", "birch", "willow"],
    "flower": ["rose", "tulip", "lily", "daisy"],
    "fruit": ["apple", "pear", "plum", "cherry"],
    "vegetable": ["carrot", "onion", "leek", "bean"],
    "motor": ["car", "bus", "truck", "van"],
    "boat": ["ship", "ferry", "canoe", "yacht"],
    "aircraft": ["plane", "jet", "glider", "balloon"],
    "strings": ["violin", "guitar", "harp", "cello"],
    "wind": ["flute", "horn", "trumpet", "oboe"],
    "percussion": ["drum", "bell", "gong", "cymbal"],
}
# Behaviour verbs of each category node: a member's verb is drawn from its ancestors', so
# predicting it needs the member's parent and grandparent categories (why the model must
# represent the hierarchy at all).
CATEGORY_VERBS: dict[str, list[str]] = {
    "living": ["grows", "lives"],
    "animal": ["eats", "sleeps", "hides"],
    "bird": ["sings", "flies", "nests"],
    "fish": ["swims", "dives"],
    "mammal": ["runs", "digs", "grazes"],
    "plant": ["spreads", "wilts"],
    "tree": ["sheds", "towers"],
    "flower": ["blooms", "opens"],
    "food": ["cools", "spoils"],
    "fruit": ["ripens", "falls"],
    "vegetable": ["sprouts", "softens"],
    "vehicle": ["moves", "stops", "waits"],
    "motor": ["honks", "speeds"],
    "boat": ["sails", "floats"],
    "aircraft": ["lands", "soars"],
    "instrument": ["sounds", "rings"],
    "strings": ["hums", "twangs"],
    "wind": ["whistles", "toots"],
    "percussion": ["booms", "rattles"],
}
# Which topics talk about which hierarchy roots (and extra members shared across topics).
HIERARCHY_TOPICS: dict[str, list[str]] = {
    "nature": ["living"],
    "cooking": ["food"],
    "travel": ["vehicle"],
    "music": ["instrument"],
}
EXTRA_TOPIC_MEMBERS: dict[str, list[str]] = {"cooking": ["salmon", "trout"]}  # fish is food too

# -- sentiment -----------------------------------------------------------------------------------
SENTIMENTS = ["neutral", "positive", "negative"]
SENTIMENT_ADJECTIVES = {"positive": ["good", "lovely", "happy", "bright", "gentle"],
                        "negative": ["bad", "ugly", "sad", "grim", "cruel"]}
SENTIMENT_VERBS = {"positive": ["loves", "likes", "enjoys", "admires"],
                   "negative": ["hates", "fears", "dislikes", "avoids"]}
EVALUATIONS = {"positive": ["wonderful", "great", "perfect"],
               "negative": ["awful", "terrible", "horrible"]}

# -- facts -------------------------------------------------------------------------------------
QA_RELATIONS = ["capital", "flag", "emblem", "language"]   # what QA items ask
RELATIONS = QA_RELATIONS + ["neighbor"]                    # a neighbour is a land: facts compose
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
EMBLEM_ANIMALS = [m for cat in ("bird", "fish", "mammal") for m in HIERARCHY_MEMBERS[cat]]

# -- QA items ----------------------------------------------------------------------------------
INSTRUCTIONS = ["ignore", "use", "consider"]        # PK-only, CK-only, base
INSTRUCTION_PHRASES = {                              # equal lengths keep the renderings aligned
    "ignore": ["ignore", "the", "given", "context", "."],
    "use": ["use", "only", "the", "context", "."],
    "consider": ["consider", "the", "given", "context", "."],
}
SOURCES = ["expert", "rumor"]                         # a trusted or an untrusted passage
ANSWER_SOURCES = ["memory", "context", "both"]
UNKNOWN = "unknown"

PUNCTUATION = [".", ",", ":", "?", "(", ")"]
FUNCTION_WORDS = ["the", "a", "of", "is", "in", "near", "and", "it", "was", "kind", "also", "called",
                  "question", "answer", "from", "only", "given", "land", "whose"]
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def hierarchy_ancestors(node: str) -> list[str]:
    """``node`` and its ancestors, nearest first: sparrow -> [sparrow, bird, animal, living]."""
    chain = [node]
    parent = MEMBER_PARENT.get(node, HIERARCHY_PARENT.get(node))
    while parent is not None:
        chain.append(parent)
        parent = HIERARCHY_PARENT[parent]
    return chain


MEMBER_PARENT: dict[str, str] = {m: cat for cat, ms in HIERARCHY_MEMBERS.items() for m in ms}
HIERARCHY_NODES: list[str] = list(HIERARCHY_PARENT) + [m for ms in HIERARCHY_MEMBERS.values() for m in ms]


def topic_members(topic: str) -> list[str]:
    """The hierarchy members (leaf words) a topic talks about."""
    members = [m for m, cat in MEMBER_PARENT.items()
               if hierarchy_ancestors(cat)[-1] in HIERARCHY_TOPICS.get(topic, [])]
    return members + [m for m in EXTRA_TOPIC_MEMBERS.get(topic, []) if m not in members]


def topic_categories(topic: str) -> list[str]:
    """The inner hierarchy nodes (non-leaves) below a topic's roots, roots included."""
    roots = HIERARCHY_TOPICS.get(topic, [])
    return [n for n in HIERARCHY_PARENT if hierarchy_ancestors(n)[-1] in roots]


# -- invented names -------------------------------------------------------------------------
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
           "tr", "st", "sk", "pl", "th"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l", "s", "k", "m", "th", "x"]


def invent_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """``n`` new pronounceable two-syllable names not in ``taken`` (which is updated)."""
    names: list[str] = []
    while len(names) < n:
        name = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS))
        if name not in taken and 4 <= len(name) <= 7:
            taken.add(name)
            names.append(name)
    return names


@dataclass
class Lexicon:
    """All words of one world, with the names invented from its seed."""

    entities: list[str]
    cities: list[str]
    languages: list[str]
    aliases: list[str]
    vocab: list[str] = field(default_factory=list)   # special tokens first, then every word once

    @classmethod
    def build(cls, seed: int, n_entities: int, n_languages: int, n_aliases: int) -> "Lexicon":
        rng = random.Random(f"lexicon-{seed}")
        fixed = fixed_words()
        taken = set(fixed)
        lex = cls(entities=invent_names(rng, n_entities, taken), cities=invent_names(rng, n_entities, taken),
                  languages=invent_names(rng, n_languages, taken), aliases=invent_names(rng, n_aliases, taken))
        lex.vocab = SPECIAL_TOKENS + fixed + lex.entities + lex.cities + lex.languages + lex.aliases
        return lex

    def relation_values(self, relation: str) -> list[str]:
        """Every value a relation can take."""
        return {"capital": self.cities, "flag": COLORS, "emblem": EMBLEM_ANIMALS,
                "language": self.languages, "neighbor": self.entities}[relation]


def fixed_words() -> list[str]:
    """Every word that does not depend on the seed, in a fixed order, without repeats."""
    words: list[str] = []
    seen: set[str] = set()

    def add(ws) -> None:
        for w in ws:
            if w not in seen:
                seen.add(w)
                words.append(w)

    add(PUNCTUATION)
    add(FUNCTION_WORDS)
    for topic in TOPICS.values():
        for slot in ("agents", "objects", "places", "verbs", "adjectives"):
            add(topic[slot])
    add(HIERARCHY_PARENT)
    for ms in HIERARCHY_MEMBERS.values():
        add(ms)
    for vs in CATEGORY_VERBS.values():
        add(vs)
    for table in (SENTIMENT_ADJECTIVES, SENTIMENT_VERBS, EVALUATIONS):
        for ws in table.values():
            add(ws)
    add(RELATIONS)
    add(COLORS)
    add(INSTRUCTIONS)
    for phrase in INSTRUCTION_PHRASES.values():
        add(phrase)
    add(["context"])
    add(SOURCES)
    add(ANSWER_SOURCES)
    add([UNKNOWN])
    return words
