"""Does the model know its world? Held-out loss against the generator's exact entropy,
fact recall, instruction-following on PK/CK items, and topic consistency of samples.

Works on a plain HF causal LM (``AutoModelForCausalLM``), so it needs nothing from the rest
of the toolkit. ``interp world eval`` prints :func:`format_report` of :func:`evaluate`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from interp.compat import hf_cache_kwarg
from interp.world.datasets import pkck_items
from interp.world.generator import EOS, World
from interp.world.grammar import ITEM_TYPES
from interp.world.labels import lexical_tables
from interp.world.lexicon import INSTRUCTIONS, TOPICS
from interp.world.recall import fact_recall, last_logits, vocab_ids, vocab_index
from interp.world.scorer import score_doc

# The bars the shipped model must clear (see WORLD.md). Never lowered to make a model pass.
# Each is "value >= bar" except ``heldout_excess``, "value <= bar".
BARS = {
    "one_hop_recall": 0.95,         # the REL of ENT is ...   (weighted by how often the world writes ENT)
    "two_hop_recall": 0.85,         # the REL of the neighbor of ENT / of the land whose capital is C
    "ck_follow": 0.90,              # "use only the context": answer = the context's value
    "ck_follow_conflicting": 0.90,  # ... on items where context and memory disagree
    "pk_follow": 0.90,              # "ignore the context": answer = memory's value
    "pk_follow_conflicting": 0.90,
    "grammatical_samples": 0.70,    # sampled continuations the generator could have written
    "heldout_excess": 0.10,         # held-out loss minus the generator's exact entropy (nats/token)
    "middle_mlps_needed": 1.0,      # every middle MLP's ablation drops some hop accuracy by >= 0.2
    "two_hop_blocks": 2,            # blocks whose ablation drops two-hop accuracy by >= 0.2
}
AT_MOST = {"heldout_excess"}


@dataclass
class EvalConfig:
    """Sample sizes and seeds of one evaluation (seeds differ from training's)."""

    heldout_docs: int = field(default=400, metadata={"help": "held-out documents for the loss"})
    qa_items: int = field(default=600, metadata={"help": "QA items for fact recall and PK/CK following"})
    topic_prompts: int = field(default=6, metadata={"help": "prompts per topic for topic consistency"})
    samples_per_prompt: int = field(default=4, metadata={"help": "sampled continuations per topic prompt"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens generated per continuation"})
    seed: int = field(default=12345, metadata={"help": "sampling seed (differs from training's)"})
    batch_size: int = field(default=64, metadata={"help": "sequences per forward pass"})
    ablation_docs: int = field(default=256, metadata={
        "help": "held-out documents for the mean-ablation table (0: skip it and its bars)"})


def qa_accuracy(model: Any, world: World, n_items: int, seed: int, batch_size: int = 64) -> dict:
    """Greedy answers of QA items in all three renderings, scored against the grammar."""
    items = pkck_items(n_items, seed=seed, world=world)
    prompts, targets, keys = [], [], []
    for it in items:
        for ins in INSTRUCTIONS:
            prompts.append(vocab_ids(world, it.prompts[ins]))
            targets.append(vocab_index(world)[it.answers[ins]])
            keys.append((it, ins))
    pred = last_logits(model, prompts, batch_size).argmax(-1).tolist()
    hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for (it, ins), p, t in zip(keys, pred, targets):
        hits[(it.item_type, ins)].append(p == t)

    def acc(pairs) -> float:
        vals = [h for key in pairs for h in hits.get(key, [])]
        return sum(vals) / len(vals) if vals else float("nan")

    stated = [("supportive", "use"), ("conflicting", "use"), ("novel", "use")]
    known = [(t, "ignore") for t in ("supportive", "conflicting", "irrelevant", "noise")]
    return {
        "ck_follow": acc(stated),
        "ck_follow_conflicting": acc([("conflicting", "use")]),
        "pk_follow": acc(known),
        "pk_follow_conflicting": acc([("conflicting", "ignore")]),
        "ck_follow_novel": acc([("novel", "use")]),
        "base_accuracy": acc([(t, "consider") for t in ITEM_TYPES]),
        "all_accuracy": acc(list(hits)),
        "by_type": {t: {ins: acc([(t, ins)]) for ins in INSTRUCTIONS} for t in ITEM_TYPES},
        "n_items": len(items),
    }


@torch.no_grad()
def heldout_loss(model: Any, world: World, n_docs: int, seed: int, batch_size: int = 64) -> dict:
    """Model cross-entropy on fresh documents next to the generator's exact figures.

    ``true_nll`` is the mean of ``-log p_gen(x_t | x_<t)`` over the same tokens: the loss of
    a perfect model. ``true_entropy`` is the mean entropy of those conditionals (its
    expectation). ``gap = model_loss - true_nll`` estimates the KL from the generator.
    """
    docs = world.sample_docs(n_docs, seed=seed)
    device = next(model.parameters()).device
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for start in range(0, len(docs), batch_size):
        chunk = docs[start:start + batch_size]
        width = max(len(d) for d in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, d in enumerate(chunk):
            tokens[i, : len(d)] = torch.tensor(vocab_ids(world, d.tokens))
            mask[i, : len(d)] = 1
        logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device)).logits
        logp = F.log_softmax(logits.float(), -1).cpu()
        for i, d in enumerate(chunk):
            score = score_doc(world, d.tokens)
            ids = tokens[i, 1: len(d)]
            model_lp = logp[i, : len(d) - 1].gather(-1, ids[:, None])[:, 0].tolist()
            for kind in ("all", d.z[0]):
                s = sums[kind]
                s[0] += -sum(model_lp)
                s[1] += -sum(score.logprob)
                s[2] += sum(score.entropy)
                s[3] += len(model_lp)
    out = {}
    for kind, (m, t, h, n) in sums.items():
        out[kind] = {"model_loss": m / n, "true_nll": t / n, "true_entropy": h / n, "gap": (m - t) / n,
                     "n_tokens": n}
    return out


@torch.no_grad()
def _sample(model: Any, prompt: list[int], k: int, max_new: int, eos: int,
            generator: torch.Generator) -> list[list[int]]:
    """``k`` temperature-1 continuations of one prompt (KV cache, stops at <eos>)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    tokens = torch.tensor([prompt] * k, device=device)
    cache = DynamicCache(config=model.config)  # filled in place by every forward call
    cache_kwarg = hf_cache_kwarg(model)
    logits = model(input_ids=tokens, use_cache=True, **{cache_kwarg: cache}).logits[:, -1]
    seqs = [[] for _ in range(k)]
    done = [False] * k
    for _ in range(max_new):
        probs = torch.softmax(logits.float(), -1).cpu()
        nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                seqs[i].append(t)
                done[i] = t == eos
        if all(done):
            break
        logits = model(input_ids=nxt[:, None].to(device), use_cache=True, **{cache_kwarg: cache}).logits[:, -1]
    return seqs


def topic_consistency(model: Any, world: World, n_prompts: int, k: int, max_new: int, seed: int) -> dict:
    """Sample continuations of one-sentence topical prompts; the fraction of sampled content
    words that belong to the prompt's topic (the generator itself scores 1.0), and the
    fraction of samples the generator could have produced (grammatical rate)."""
    table = lexical_tables(world)["word_topics"]
    index = vocab_index(world)
    eos = index[EOS]
    gen = torch.Generator().manual_seed(seed)
    by_topic, valid, total = {}, 0, 0
    for ti, topic in enumerate(TOPICS):
        on, content = 0, 0
        for doc in world.sample_docs(n_prompts, seed=seed + ti, kind="topical", topic=topic):
            prompt_words = doc.tokens[: doc.segments[0]["end"]]
            for seq in _sample(model, vocab_ids(world, prompt_words), k, max_new, eos, gen):
                words = [world.vocab[t] for t in seq]
                member = table[torch.tensor(seq)] if seq else torch.zeros(0, len(TOPICS), dtype=torch.bool)
                has_topic = member.any(-1)
                content += int(has_topic.sum())
                on += int(member[:, ti].sum())
                total += 1
                try:
                    score_doc(world, prompt_words + words, with_entropy=False)
                    valid += 1
                except ValueError:
                    pass
        by_topic[topic] = on / content if content else float("nan")
    vals = [v for v in by_topic.values() if not math.isnan(v)]
    return {"mean": sum(vals) / len(vals), "by_topic": by_topic, "grammatical_rate": valid / total,
            "n_samples": total}


def load_model(path: str | Path) -> Any:
    """The HF model in ``path`` (float32, eval mode, on CPU)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def evaluate(model: Any, world: World | None = None, config: EvalConfig | None = None) -> dict:
    """Every figure of the world evaluation, plus pass/fail against :data:`BARS`."""
    from interp.world.ablation import ablation_table, depth_checks

    world = world or World()
    cfg = config or EvalConfig()
    report: dict[str, Any] = {"config": asdict(cfg)}
    report["heldout"] = heldout_loss(model, world, cfg.heldout_docs, cfg.seed, cfg.batch_size)
    report["fact_recall"] = {h: fact_recall(model, world, h, cfg.batch_size) for h in (1, 2, 3)}
    report["qa"] = qa_accuracy(model, world, cfg.qa_items, cfg.seed, cfg.batch_size)
    report["topic_consistency"] = topic_consistency(model, world, cfg.topic_prompts, cfg.samples_per_prompt,
                                                    cfg.max_new_tokens, cfg.seed)
    h = report["heldout"]["all"]
    values = {"one_hop_recall": report["fact_recall"][1]["weighted"],
              "two_hop_recall": report["fact_recall"][2]["weighted"],
              **{k: report["qa"][k] for k in BARS if k in report["qa"]},
              "grammatical_samples": report["topic_consistency"]["grammatical_rate"],
              "heldout_excess": h["model_loss"] - h["true_entropy"]}
    if cfg.ablation_docs:
        report["ablation"] = ablation_table(model, world, cfg.ablation_docs, cfg.seed + 1, batch_size=cfg.batch_size)
        checks = depth_checks(report["ablation"], len(model.transformer.h))
        report["depth"] = checks
        values["middle_mlps_needed"] = (sum(v >= checks["drop"] for v in checks["middle_mlps"].values())
                                        / max(len(checks["middle_mlps"]), 1))
        values["two_hop_blocks"] = len(checks["two_hop_blocks"])
    report["bars"] = {k: {"value": values[k], "bar": bar,
                          "pass": values[k] <= bar if k in AT_MOST else values[k] >= bar}
                      for k, bar in BARS.items() if k in values}
    report["pass"] = all(b["pass"] for b in report["bars"].values())
    return report


def format_report(report: dict) -> str:
    """A readable table of :func:`evaluate`'s report."""
    lines = []
    h = report["heldout"]
    lines.append("held-out loss (nats/token)   model   generator-NLL  generator-entropy   gap   tokens")
    for kind in ("all", "topical", "fact", "qa"):
        if kind in h:
            r = h[kind]
            lines.append(f"  {kind:26s} {r['model_loss']:7.4f}  {r['true_nll']:11.4f}  {r['true_entropy']:15.4f}"
                         f"  {r['gap']:7.4f}  {r['n_tokens']:6d}")
    lines.append("")
    lines.append(f"{'figure':30s} {'value':>7s} {'bar':>6s}  pass")
    for name, b in report["bars"].items():
        sign = "<=" if name in AT_MOST else ">="
        lines.append(f"  {name:28s} {b['value']:7.3f} {sign}{b['bar']:5.2f}  {'yes' if b['pass'] else 'NO'}")
    qa = report["qa"]
    lines.append(f"  {'ck_follow_novel':28s} {qa['ck_follow_novel']:7.3f}      -")
    lines.append(f"  {'base_accuracy (consider)':28s} {qa['base_accuracy']:7.3f}      -")
    tc = report["topic_consistency"]
    lines.append(f"  {'topic_consistency':28s} {tc['mean']:7.3f}      -")
    lines.append("")
    lines.append("fact answers by hop count     every question  as written  rarest quarter of lands")
    for hops, r in report["fact_recall"].items():
        lines.append(f"  {hops}-hop ({r['n']:4d} questions)    {r['accuracy']:12.3f}  {r['weighted']:10.3f}"
                     f"  {r['rarest_quarter']:10.3f}")
    if "ablation" in report:
        lines.append("")
        lines.append(format_ablation(report["ablation"]))
    lines.append("")
    lines.append("QA accuracy by item type     " + "  ".join(f"{i:>8s}" for i in INSTRUCTIONS))
    for t, row in qa["by_type"].items():
        lines.append(f"  {t:26s} " + "  ".join(f"{row[i]:8.3f}" for i in INSTRUCTIONS))
    lines.append("")
    lines.append("topic consistency by topic: " + ", ".join(f"{t} {v:.2f}" for t, v in tc["by_topic"].items()))
    lines.append(f"all bars passed: {'yes' if report['pass'] else 'NO'}")
    return "\n".join(lines)


def format_ablation(table: dict) -> str:
    """The mean-ablation table: CE rise (all tokens, fact-answer tokens) and accuracy by hops."""
    hops = list(table["clean"]["accuracy"])
    head = "  ".join(f"{h}-hop acc" for h in hops)
    lines = [f"mean-ablating one block ({table['n_docs']} held-out documents, {table['n_answer_tokens']} fact-answer "
             f"tokens; CE in nats/token)",
             f"  {'block':14s} {'CE rise, all':>13s} {'CE rise, answers':>17s}   {head}"]
    c = table["clean"]
    accs = "  ".join(f"{c['accuracy'][h]:9.3f}" for h in hops)
    lines.append(f"  {'none (clean)':14s} {c['ce_all']:13.3f} {c['ce_fact_answers']:17.3f}   {accs}")
    for name, r in table["blocks"].items():
        accs = "  ".join(f"{r['accuracy'][h]:9.3f}" for h in hops)
        lines.append(f"  {name:14s} {r['ce_rise_all']:+13.3f} {r['ce_rise_fact_answers']:+17.3f}   {accs}")
    return "\n".join(lines)
