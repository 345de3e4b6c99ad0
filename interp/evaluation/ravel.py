"""RAVEL-style disentanglement (Huang et al., "RAVEL"; SAEBench's ``ravel`` family) on the world's facts.

Every land (entity) has five attributes (capital, flag, emblem, language, neighbor), and the
model answers ``<bos> the REL of LAND is`` with the value. An SAE disentangles the attributes
when, for an attribute A, some set of its latents carries A and nothing else:

* **cause**: base ``the A of e is``, source ``the A of e' is`` (another value); swapping the
  chosen latents' codes from the source into the base makes the model answer ``e'``'s value;
* **isolation**: base ``the B of e is``, source ``the B of e' is`` for another attribute B;
  swapping A's latents must leave the base's B answer unchanged.

The latents of A are chosen as SAEBench does, by a *differentiable binary mask* (MDBM): a
mask ``m`` over latents, the base activation at the intervention position replaced by
``decode((1 - s) z_base + s z_source)`` with ``s = sigmoid(m / T)`` while training (``T``
annealed from 1 to 1e-4) and ``s = 1[m > 0]`` when scoring, trained with cross-entropy
towards the source's value on cause pairs and the base's value on isolation pairs. Pairs are
split in two: the mask is trained on one half and scored on the other. Per attribute
``disentangle = (cause + isolation) / 2``; the reported scores average the attributes.

Only pairs the model gets right without intervention are used (both prompts answered with
the world's true value). The intervention position is the prompt's last token by default:
on the world model the land's identity moves to the final ``is`` in block 0, and from layer
1 on nothing downstream reads the name's own position (WORLD.md), so SAEBench's "last
entity token" would have no effect past the first block (``position="entity"`` keeps it).

:func:`ravel` takes any :class:`RavelTask` (activations, answers and a differentiable
``downstream``), so a hand-built dictionary on synthetic activations can be scored too.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from interp.errors import InterpError
from probes.pkck import frozen_weights

EVAL_TYPE_ID_RAVEL = "ravel"
Downstream = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RavelConfig:
    """Settings of the RAVEL family (SAEBench's names where it has them; sizes for the world)."""

    num_pairs_per_attribute: int = 256
    train_test_split: float = 0.5
    num_epochs: int = 3
    learning_rate: float = 1e-2
    batch_size: int = 64
    add_error: bool = False     # SAEBench's default: the intervened activation is the SAE's reconstruction
    n_boot: int = 500
    random_seed: int = 42

    def check(self) -> None:
        if self.num_pairs_per_attribute < 4:
            raise InterpError(f"num_pairs_per_attribute={self.num_pairs_per_attribute}: use at least 4")
        if not 0 < self.train_test_split < 1:
            raise InterpError(f"train_test_split={self.train_test_split}: use a share strictly between 0 and 1")
        if self.num_epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise InterpError("num_epochs and batch_size must be at least 1 and learning_rate above 0")


@dataclass
class RavelTask:
    """What RAVEL needs of a model, for entities ``e`` and attributes ``a``.

    Attributes:
        attributes: the attribute names.
        acts: ``[n_entities, n_attributes, d]`` the activation at the intervention position of
            the prompt asking attribute ``a`` of entity ``e``.
        answers: ``[n_entities, n_attributes]`` the model's own answer token (no intervention).
        truth: the true value tokens, same shape, or None (then every answer counts as known).
        downstream: ``(entity [n], attribute [n], h [n, d]) -> logits [n, vocab]``: the model's
            next-token logits with ``h`` written at the intervention position of those
            prompts; differentiable in ``h``.
    """

    attributes: list[str]
    acts: torch.Tensor
    answers: torch.Tensor
    truth: torch.Tensor | None
    downstream: Downstream

    @property
    def known(self) -> torch.Tensor:
        """``[n_entities, n_attributes]`` bool: the model answers this prompt right."""
        return torch.ones_like(self.answers, dtype=torch.bool) if self.truth is None else self.answers == self.truth


@dataclass
class Pairs:
    """Intervention pairs: base and source entity, the prompts' attribute, the target answer."""

    base: torch.Tensor
    source: torch.Tensor
    attribute: torch.Tensor
    label: torch.Tensor
    is_cause: torch.Tensor

    def take(self, idx: torch.Tensor) -> Pairs:
        return Pairs(self.base[idx], self.source[idx], self.attribute[idx], self.label[idx], self.is_cause[idx])

    def __len__(self) -> int:
        return len(self.base)


def _pairs_for(task: RavelTask, a: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` (base, source) entity pairs whose answers to attribute ``a`` are known and differ."""
    ok = task.known[:, a].nonzero()[:, 0]
    if len(ok) < 2:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    base = ok[torch.randint(len(ok), (4 * n,), generator=gen)]
    source = ok[torch.randint(len(ok), (4 * n,), generator=gen)]
    differ = task.answers[base, a] != task.answers[source, a]
    return base[differ][:n], source[differ][:n]


def make_pairs(task: RavelTask, a: int, n: int, gen: torch.Generator) -> Pairs:
    """SAEBench's pairs for attribute ``a``: ``n`` cause pairs (prompts asking ``a``, the label is the
    source's answer) and as many isolation pairs spread over the other attributes (prompts asking
    them, the label is the base's answer)."""
    base, source = _pairs_for(task, a, n, gen)
    parts = [Pairs(base, source, torch.full_like(base, a), task.answers[source, a], torch.ones_like(base, dtype=torch.bool))]
    others = [b for b in range(len(task.attributes)) if b != a]
    for j, b in enumerate(others):
        share = len(base) // len(others) + (1 if j < len(base) % len(others) else 0)
        ib, is_ = _pairs_for(task, b, share, gen)
        parts.append(Pairs(ib, is_, torch.full_like(ib, b), task.answers[ib, b], torch.zeros_like(ib, dtype=torch.bool)))
    cat = Pairs(*(torch.cat([getattr(p, f) for p in parts]) for f in ("base", "source", "attribute", "label", "is_cause")))
    return cat.take(torch.randperm(len(cat), generator=gen))


class Intervention:
    """The MDBM intervention for one SAE: codes of every prompt, computed once."""

    def __init__(self, sae: Any, task: RavelTask, add_error: bool) -> None:
        n_e, n_a, d = task.acts.shape
        flat = task.acts.reshape(-1, d).float()
        with torch.no_grad():
            z = torch.cat([sae.encode(flat[i:i + 4096].to(sae.device, sae.dtype)).float().cpu()
                           for i in range(0, len(flat), 4096)])
            self.W_dec = sae.W_dec.detach().float().cpu()
            self.b_dec = sae.b_dec.detach().float().cpu()
            self.error = (flat - (z @ self.W_dec + self.b_dec)).reshape(n_e, n_a, d) if add_error else None
        self.z = z.reshape(n_e, n_a, -1)
        self.task = task

    def logits(self, pairs: Pairs, share: torch.Tensor) -> torch.Tensor:
        z_base = self.z[pairs.base, pairs.attribute]
        z_src = self.z[pairs.source, pairs.attribute]
        h = ((1 - share) * z_base + share * z_src) @ self.W_dec + self.b_dec
        if self.error is not None:
            h = h + self.error[pairs.base, pairs.attribute]
        return self.task.downstream(pairs.base, pairs.attribute, h)


def train_mask(inter: Intervention, pairs: Pairs, config: RavelConfig, gen: torch.Generator) -> torch.Tensor:
    """SAEBench's MDBM: mask logits ``[d_sae]`` trained with Adam on cross-entropy, temperature
    annealed log-linearly from 1 to 1e-4 over all steps."""
    mask = torch.zeros(inter.z.shape[-1], requires_grad=True)
    opt = torch.optim.Adam([mask], lr=config.learning_rate)
    steps_per_epoch = max(1, math.ceil(len(pairs) / config.batch_size))
    temps = torch.logspace(0, -4, config.num_epochs * steps_per_epoch)
    step = 0
    with torch.enable_grad():
        for _ in range(config.num_epochs):
            order = torch.randperm(len(pairs), generator=gen)
            for start in range(0, len(pairs), config.batch_size):
                batch = pairs.take(order[start:start + config.batch_size])
                opt.zero_grad()
                logits = inter.logits(batch, torch.sigmoid(mask / float(temps[step])))
                F.cross_entropy(logits.float(), batch.label).backward()
                opt.step()
                step += 1
    return mask.detach()


@torch.no_grad()
def score_pairs(inter: Intervention, pairs: Pairs, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``[n]`` bool: the intervened model gives each pair's label (the hard mask ``latents``)."""
    share = torch.zeros(inter.z.shape[-1])
    share[latents] = 1.0
    out = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs.take(torch.arange(start, min(start + batch_size, len(pairs))))
        out.append(inter.logits(batch, share).argmax(-1).cpu() == batch.label)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@dataclass
class RavelResult:
    """SAEBench's three scores, per attribute figures and 95% intervals."""

    metrics: dict[str, float]                   # disentanglement_score, cause_score, isolation_score
    per_attribute: dict[str, dict[str, Any]]
    intervals: dict[str, tuple[float, float]]


def _boot_mean(ok: torch.Tensor, n_boot: int, gen: torch.Generator) -> torch.Tensor:
    if len(ok) == 0:
        return torch.full((n_boot,), math.nan, dtype=torch.float64)
    pick = torch.randint(len(ok), (n_boot, len(ok)), generator=gen)
    return ok.double()[pick].mean(1)


def ravel(sae: Any, task: RavelTask, config: RavelConfig | None = None,
          attributes: Sequence[str] | None = None) -> RavelResult:
    """Cause, isolation and disentanglement of ``sae`` on ``task`` (each chosen attribute in turn)."""
    config = config or RavelConfig()
    config.check()
    if task.acts.ndim != 3 or task.acts.shape[:2] != task.answers.shape:
        raise InterpError(f"RavelTask.acts must be [entities, attributes, d] matching answers "
                          f"{list(task.answers.shape)}; got {list(task.acts.shape)}")
    if task.acts.shape[-1] != sae.d_in:
        raise InterpError(f"the RAVEL activations have d={task.acts.shape[-1]} but the SAE has d_in={sae.d_in}")
    names = list(attributes or task.attributes)
    unknown = [a for a in names if a not in task.attributes]
    if unknown:
        raise InterpError(f"no attribute {unknown[0]!r}; this task has {', '.join(task.attributes)}")
    inter = Intervention(sae, task, config.add_error)
    gen = torch.Generator().manual_seed(config.random_seed)
    per: dict[str, dict[str, Any]] = {}
    boots: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name in names:
        a = task.attributes.index(name)
        pairs = make_pairs(task, a, config.num_pairs_per_attribute, gen)
        cut = round(len(pairs) * config.train_test_split)
        train, val = pairs.take(torch.arange(cut)), pairs.take(torch.arange(cut, len(pairs)))
        if len(train) < 2 or not val.is_cause.any() or val.is_cause.all():
            per[name] = {"skipped": f"too few known pairs ({len(pairs)})"}
            continue
        mask = train_mask(inter, train, config, gen)
        latents = (mask > 0).nonzero()[:, 0]
        ok = score_pairs(inter, val, latents)
        cause, iso = ok[val.is_cause], ok[~val.is_cause]
        c, i = float(cause.float().mean()), float(iso.float().mean())
        per[name] = {"cause_score": c, "isolation_score": i, "disentangle_score": (c + i) / 2,
                     "n_latents": len(latents), "n_cause_pairs": len(cause), "n_isolation_pairs": len(iso),
                     "latents": latents[:64].tolist()}
        boots[name] = (_boot_mean(cause, config.n_boot, gen), _boot_mean(iso, config.n_boot, gen))
    done = [n for n in names if "cause_score" in per[n]]
    if not done:
        raise InterpError("RAVEL: no attribute had enough prompts the model answers right; check the model and hook")
    cause = sum(per[n]["cause_score"] for n in done) / len(done)
    iso = sum(per[n]["isolation_score"] for n in done) / len(done)
    cb = torch.stack([boots[n][0] for n in done]).mean(0)
    ib = torch.stack([boots[n][1] for n in done]).mean(0)
    metrics = {"disentanglement_score": (cause + iso) / 2, "cause_score": cause, "isolation_score": iso}
    intervals = {"disentanglement_score": _q(0.5 * (cb + ib)), "cause_score": _q(cb), "isolation_score": _q(ib)}
    return RavelResult(metrics, per, intervals)


def _q(boot: torch.Tensor) -> tuple[float, float]:
    boot = boot[~boot.isnan()]
    if len(boot) == 0:
        return math.nan, math.nan
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


# ------------------------------------------------------------------------- the world


def world_ravel_task(model: Any, hook: str, *, position: str = "last", entities: int | None = None,
                     world: Any = None, batch_size: int = 256) -> RavelTask:
    """The world's fact prompts ``<bos> the REL of LAND is`` for every land and relation, read at
    ``hook`` at the last token (``position="last"``) or at the land's name (``"entity"``)."""
    from interp.world import World
    from interp.world.generator import BOS
    from interp.world.recall import vocab_index

    if position not in ("last", "entity"):
        raise InterpError(f"position={position!r}: use 'last' (the final 'is') or 'entity' (the land's name)")
    world = world or World()
    model.check_hooks(hook)
    if len(model.tokenizer) != len(world.vocab):
        raise InterpError(f"RAVEL runs on a world model; {model.name} has a vocabulary of {len(model.tokenizer)} "
                          f"words, the world {len(world.vocab)}")
    index = vocab_index(world)
    lands = world.facts.entities[:entities] if entities else world.facts.entities
    relations = list(world.facts.relations)
    prompts = torch.tensor([[[index[w] for w in [BOS, "the", r, "of", e, "is"]] for r in relations] for e in lands])
    truth = torch.tensor([[index[world.facts.value(e, r)] for r in relations] for e in lands])
    pos = 5 if position == "last" else 4
    flat = prompts.reshape(-1, prompts.shape[-1])
    acts, answers = [], []
    with torch.no_grad():
        for start in range(0, len(flat), batch_size):
            logits, cache = model.run_with_cache(flat[start:start + batch_size].to(model.device), names=[hook])
            acts.append(cache[hook][:, pos].reshape(logits.shape[0], -1).float().cpu())
            answers.append(logits[:, -1].argmax(-1).cpu())
    acts_t = torch.cat(acts).reshape(len(lands), len(relations), -1)
    answers_t = torch.cat(answers).reshape(len(lands), len(relations))
    frozen = frozen_weights(model)

    def downstream(entity: torch.Tensor, attribute: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        tokens = prompts[entity, attribute].to(model.device)
        value = h.to(model.device)

        def write(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            x = x.clone()
            x[:, pos] = value.reshape(x.shape[0], *x.shape[2:]).to(x.dtype)
            return x

        with frozen, model.hooks([(hook, write)]):
            return model(tokens)[:, -1].float().cpu()

    return RavelTask(relations, acts_t, answers_t, truth, downstream)
