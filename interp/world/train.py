"""The deterministic recipe that trains the default model on its world.

``interp world train`` runs :func:`train` with :class:`TrainConfig`'s defaults and writes
the model directory (``config.json``, ``model.safetensors``, tokenizer files,
``generation_config.json``, ``world.json``) atomically. Same seed, same thread count, same
torch build: same weights.
"""
from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saes.formats.durable import atomic_write_files

from interp.world.config import WorldConfig
from interp.world.generator import BOS, PAD, World
from interp.world.tokenizer import build_tokenizer


@dataclass(frozen=True)
class ModelConfig:
    """GPT-2 shape of the default model."""

    # Four blocks, not six: at six the neighbour look-up was spread evenly over three middle
    # blocks (removing any one cost at most 0.08 of three-hop recall) and block 1 sat idle.
    # Fewer blocks leave the composed look-ups less room to spread.
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    n_positions: int = 128
    # d_mlp = mlp_ratio * n_embd. Half GPT-2's 4: with 1,024 neurons the neighbour look-up
    # was shared by the two middle MLPs so evenly that removing either cost only 0.16-0.17
    # of three-hop recall. Width does not steer the split monotonically: at 384 neurons
    # block 1's MLP cost 0.38 and block 2's 0.16, at 448 0.19 and 0.15, at 512 0.19 and 0.44.
    mlp_ratio: int = 2

    @property
    def d_mlp(self) -> int:
        return self.mlp_ratio * self.n_embd


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights."""

    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = field(default=0, metadata={"help": "training seed: model initialisation and data order"})
    steps: int = field(default=5000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=32, metadata={
        "help": "rows of model.n_positions tokens per step, documents packed whole"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    min_lr_ratio: float = field(default=0.05, metadata={"help": "the final decay ends at lr * min_lr_ratio"})
    warmup_steps: int = field(default=100, metadata={"help": "steps of linear warm-up"})
    # 1.0 decays from the start: holding 2e-3 for long delayed fact memorisation in trials,
    # and the copy circuit formed as lr fell.
    decay_fraction: float = field(default=1.0, metadata={
        "help": "warm-up, constant lr, then linear decay over this last fraction of the steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm"})
    threads: int = field(default=2, metadata={"help": "torch threads (the recipe was timed with 2)"})
    answer_weight: float = field(default=8.0, metadata={
        "help": "loss weight of QA answer tokens (1 elsewhere); see packed_batches"})
    fact_weight: float = field(default=3.0, metadata={
        "help": "loss weight of fact-sentence values (the memorised answers); see packed_batches"})
    sentiment_weight: float = field(default=3.0, metadata={
        "help": "loss weight of the words that carry a topical sentence's sentiment (adjective, verb, "
                "evaluative tail); see packed_batches"})
    log_every: int = field(default=50, metadata={"help": "steps between log lines"})
    eval_every: int = field(default=300, metadata={
        "help": "steps between quick fact-recall / QA checks in the log (0: never)"})

    def to_dict(self) -> dict:
        return asdict(self)


def set_determinism(seed: int, threads: int) -> None:
    """Seed every RNG torch uses and pin the thread count (reductions depend on it)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def packed_batches(world: World, cfg: TrainConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(input_ids, weights)`` batches, both ``[batch, n_positions]``.

    Whole documents are packed left to right into each row; the rest of a row is padding.
    ``weights[b, t]`` is the loss weight of predicting token ``t``: 0 on padding and on each
    ``<bos>`` (the token after an ``<eos>`` is always ``<bos>``; it says nothing about the
    world), ``cfg.answer_weight`` on QA answers, ``cfg.fact_weight`` on the values of fact
    sentences, 1 elsewhere. Answers are one token in thirty of a QA item but carry the whole
    instruction-following skill, and a fact value is one token in ten of its sentence but
    the whole memorised (or composed) fact. ``cfg.sentiment_weight`` goes on the adjective,
    verb and evaluative tail of topical sentences: they must agree with the sentence's hidden
    sentiment, and sampled text failed the grammar mostly there. Weighting leaves the optimum unchanged
    (each token's cross-entropy is still minimised by the true conditional) and only moves
    the model's effort towards them.
    """
    index = {w: i for i, w in enumerate(world.vocab)}
    width = cfg.model.n_positions
    pad = index[PAD]
    docs = world.iter_docs(None, seed=cfg.seed)
    pending: tuple[list[int], list[float]] | None = None
    while True:
        rows = torch.full((cfg.batch_size, width), pad, dtype=torch.long)
        weights = torch.zeros(cfg.batch_size, width)
        for r in range(cfg.batch_size):
            col = 0
            while True:
                if pending is None:
                    doc = next(docs)
                    ids = [index[w] for w in doc.tokens][:width]
                    ws = [_token_weight(cfg, w, lab) for w, lab in zip(doc.tokens, doc.labels)][:width]
                    pending = (ids, ws)
                ids, ws = pending
                if col + len(ids) > width:
                    break
                rows[r, col: col + len(ids)] = torch.tensor(ids)
                weights[r, col: col + len(ids)] = torch.tensor(ws)
                col += len(ids)
                pending = None
        yield rows, weights


# Roles whose word must agree with a topical sentence's sentiment.
SENTIMENT_ROLES = frozenset({"adjective", "verb", "tail"})


def _token_weight(cfg: TrainConfig, word: str, labels: dict) -> float:
    if word == BOS:
        return 0.0
    if labels.get("is_answer"):
        return cfg.answer_weight
    if labels.get("role") == "value" and labels.get("hops") is not None:
        return cfg.fact_weight
    if labels.get("sentiment") is not None and labels.get("role") in SENTIMENT_ROLES:
        return cfg.sentiment_weight
    return 1.0


def weighted_loss(logits: torch.Tensor, tokens: torch.Tensor,
                  weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy weighted per target token (``weights`` aligned with
    ``tokens``), and the plain mean over the same tokens (detached, for the log)."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(),
                                           reduction="none")
    w = weights[:, 1:].flatten()
    plain = ce.detach()[w > 0].mean()
    return (ce * w).sum() / w.sum(), plain


def build_model(world: World, mcfg: ModelConfig) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(world.vocab), n_positions=mcfg.n_positions, n_embd=mcfg.n_embd, n_layer=mcfg.n_layer,
        n_head=mcfg.n_head, n_inner=mcfg.d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=world.vocab.index(BOS), eos_token_id=world.vocab.index("<eos>"),
        pad_token_id=world.vocab.index(PAD), tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def _lr(cfg: TrainConfig, step: int) -> float:
    """Warmup, then constant, then a linear decay (warmup-stable-decay): circuits that need
    many steps to form (copying from the context) get the full learning rate for longest."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * progress)


def train(cfg: TrainConfig = TrainConfig(), out: str | Path | None = None, log=print) -> tuple[Any, dict]:
    """Train the default model; save it to ``out`` if given. Returns (model, summary)."""
    set_determinism(cfg.seed, cfg.threads)
    world = World(cfg.world)
    model = build_model(world, cfg.model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "wpe" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    batches = packed_batches(world, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"training {n_params / 1e6:.2f}M parameters for {cfg.steps} steps of {cfg.batch_size}x"
        f"{cfg.model.n_positions} tokens on {cfg.threads} threads")
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    history: list[dict] = []
    running, tokens_seen = 0.0, 0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        inputs, weights = next(batches)
        # Rows are right-padded; the mask changes nothing at real positions (causal attention
        # never reaches the padding after them) but says so to transformers.
        mask = (inputs != model.config.pad_token_id).long()
        loss, plain = weighted_loss(model(input_ids=inputs, attention_mask=mask).logits, inputs, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running += plain.item()
        tokens_seen += int((weights[:, 1:] > 0).sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - start
            mean = running / ((step % cfg.log_every) + 1)
            running = 0.0
            eta = elapsed / (step + 1) * (cfg.steps - step - 1)
            cpu = time.process_time() - cpu_start
            history.append({"step": step + 1, "loss": mean, "elapsed_s": round(elapsed, 1), "cpu_s": round(cpu, 1)})
            log(f"step {step + 1:5d}  loss {mean:.4f}  lr {_lr(cfg, step):.2e}  wall {elapsed:6.0f}s  "
                f"cpu {cpu:6.0f}s  eta {eta:5.0f}s")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            model.eval()
            quick = quick_check(model, world)
            model.train()
            history[-1].update(quick)
            log("  check: " + "  ".join(f"{k} {v:.3f}" for k, v in quick.items()))
    model.eval()
    summary = {"train_seconds": round(time.perf_counter() - start, 1),
               "cpu_seconds": round(time.process_time() - cpu_start, 1), "steps": cfg.steps,
               "loss_tokens": tokens_seen, "parameters": n_params, "history": history,
               "torch": torch.__version__, "threads": cfg.threads}
    if out is not None:
        save_model(model, world, cfg, summary, out)
        log(f"saved to {out}")
    return model, summary


def quick_check(model: Any, world: World) -> dict:
    """Fact recall and PK/CK accuracy on a small fixed sample (for the training log)."""
    from interp.world.evaluate import fact_recall, qa_accuracy

    with torch.no_grad():
        qa = qa_accuracy(model, world, n_items=90, seed=4242)
        return {"one_hop": fact_recall(model, world, 1)["weighted"], "two_hop": fact_recall(model, world, 2)["weighted"],
                "three_hop": fact_recall(model, world, 3)["weighted"], "ck": qa["ck_follow_conflicting"],
                "ck_novel": qa["ck_follow_novel"], "pk": qa["pk_follow_conflicting"], "base": qa["base_accuracy"]}


def save_model(model: Any, world: World, cfg: TrainConfig, summary: dict, out: str | Path) -> None:
    """Write the model directory atomically: each file lands complete or not at all.

    Everything is first saved into a temporary directory next to ``out`` (same file
    system); only when every file is written are they moved over the old ones
    (:func:`saes.formats.durable.atomic_write_files`).
    """
    from transformers import GenerationConfig

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer(world.vocab, cfg.model.n_positions).save_pretrained(tmp)
        GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=model.config.eos_token_id,
                         pad_token_id=model.config.pad_token_id, max_length=cfg.model.n_positions).save_pretrained(tmp)
        meta = {"world": cfg.world.to_dict(), "train": cfg.to_dict(), "summary": summary,
                "regenerate": "interp world train --out DIR"}
        (tmp / "world.json").write_text(json.dumps(meta, indent=2) + "\n")

    atomic_write_files(out, write)
