# %% [markdown]
# # 03 · Steer generations
#
# Steer the shipped world model towards a planted topic with three kinds of vector:
#
# * an **SAE latent**: the decoder row of the latent that best detects the topic;
# * an **SNMF feature**: a sparse pattern of MLP neurons whose coefficients best detect it;
# * a **difference in means**: mean residual state on the topic's tokens minus the other topics'.
#
# Raw scales mean nothing across methods (different hooks, different norms), so each vector
# is calibrated by bisection to the same KL divergence of the next-token distribution from
# the unsteered model. Then: generations before and after, and a success-vs-fluency chart
# where success is read from the world's own lexicon (the share of generated topic words that
# belong to the target topic). `CI=1` shrinks every size.

# %%
import os
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm loads: text bars without ipywidgets

import plotly.io as pio
import torch

import interp
import saes
from interp import Steering, calibrate_scale
from interp.interventions.steering_lexical import (evaluate_steering, steering_chart, topic_prompts, topic_specs,
                                  topic_success)
from interp.world import World
from interp.world.labels import lexical_tables
from interp.world.lexicon import TOPICS

# Each figure is stored twice: as plotly JSON (interactive in Jupyter) and as HTML with plotly.js
# inlined once per notebook, so static viewers (nbviewer, exported HTML) show it too, offline.
pio.renderers.default = "plotly_mimetype+notebook"

CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
ONLINE = os.environ.get("INTERP_ONLINE", "") == "1"  # the cells that download a real model run only then
# Outputs go to runs/notebooks/ at the top of the checkout, whether the kernel starts in
# notebooks/ (Jupyter does) or at the root; outside a checkout, under the working directory.
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "notebooks" / "build.py").is_file()), Path.cwd())
OUT = Path(os.environ.get("INTERP_NOTEBOOK_OUT") or ROOT / "runs" / "notebooks") / "03_steer_generations"
torch.manual_seed(0)

SIZES = (dict(tokens=10_000, epochs=4, d_sae=256, k=8, snmf_rank=24, snmf_tokens=3_000, snmf_iter=60,
              label_docs=80, prompts=8, new_tokens=12, kl_targets=(0.25, 0.5, 1.0))
         if CI else
         dict(tokens=40_000, epochs=6, d_sae=512, k=16, snmf_rank=64, snmf_tokens=10_000, snmf_iter=200,
              label_docs=300, prompts=16, new_tokens=16, kl_targets=(0.1, 0.25, 0.5, 1.0)))
TOPIC = "nature"
SIZES

# %% [markdown]
# ## 1. The model, and a dictionary of each kind
#
# A TopK SAE on the middle layer's residual stream and an SNMF of the same layer's MLP
# neurons, trained from one harvest (notebook 02 compares these dictionaries in depth).

# %%
model = interp.load("world")
LAYER = model.n_layers // 2
RESID, MLP = f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.mlp.hook_post"
world = World()
texts = [" ".join(doc.tokens[1:-1]) for doc in world.iter_docs(SIZES["tokens"] // 15, seed=1)]
store = interp.harvest(model, texts, hooks=[RESID, MLP], out=OUT / "store", max_tokens=SIZES["tokens"],
                       context_length=128, batch_size=32, progress=False)

started = time.perf_counter()
sae = saes.TopKSAE(store.d, SIZES["d_sae"], k=SIZES["k"])
saes.train(sae, store, saes.TrainConfig(batch_size=256, total_tokens=SIZES["epochs"] * len(store), lr=2e-3,
                                        dead_tokens=len(store)), progress=not CI)
sae.metadata.update(hook_name=RESID, model_name=model.name)
snmf = saes.SNMF(rank=SIZES["snmf_rank"], sparsity=0.01, max_iter=SIZES["snmf_iter"], seed=0).fit(
    store.select(MLP)[: SIZES["snmf_tokens"]].float())
print(f"{len(store):,} tokens harvested; SAE and SNMF trained in {time.perf_counter() - started:.1f}s")

# %% [markdown]
# ## 2. One vector per method for the topic
#
# `topic_specs` reads labelled topical documents and picks, for the target topic, the SAE
# latent and the SNMF feature with the best AUROC, and the difference-in-means direction.

# %%
topic_index = list(TOPICS).index(TOPIC)
specs, chosen = topic_specs(model, topic_index, LAYER, sae=sae, snmf=snmf, n_docs=SIZES["label_docs"])
for method, spec in specs.items():
    print(f"{method:<14} {spec.hook:<26} {chosen.get(method, 'mean over the topic minus the other topics')}")

# %% [markdown]
# ## 3. Calibrate by KL, then look at the generations
#
# Prompts open documents about *other* topics, so a successful steer changes the subject.
# Each vector is scaled until the mean next-token KL from the unsteered model reaches the
# same target; greedy decoding, so the differences come from the steer alone.

# %%
prompts = topic_prompts(TOPIC, n=SIZES["prompts"])
word_topics = lexical_tables(world)["word_topics"]  # [vocab, 8]: which topics' lexicon holds each word
TARGET_KL = 0.5
plain = model.generate(prompts, max_new_tokens=SIZES["new_tokens"])
steered = {}
for method, spec in specs.items():
    tuned, kl = calibrate_scale(model, spec, prompts, target_kl=TARGET_KL)
    steered[method] = (tuned, kl, model.generate(prompts, max_new_tokens=SIZES["new_tokens"], steering=[tuned]))
    print(f"{method:<14} scale {tuned.scale:8.2f} -> KL {kl:.3f}")

for i, prompt in enumerate(prompts[:3]):
    print(f"\nprompt: {prompt!r}")
    print(f"  {'unsteered':<14} {plain.texts[i]}")
    for method, (_, _, out) in steered.items():
        print(f"  {method:<14} {out.texts[i]}")

# %% [markdown]
# ## 4. Success against fluency at matched KL
#
# `evaluate_steering` repeats the calibration for several KL targets and scores each
# generation: **success** is the share of generated topic words that belong to the target
# topic; **fluency** is the unsteered model's loss on the generated tokens (lower reads more
# like the world's language). A good vector buys success without losing fluency.

# %%
rows = evaluate_steering(model, specs, topic_index, prompts, word_topics, kl_targets=SIZES["kl_targets"],
                         new_tokens=SIZES["new_tokens"])
print(f"{'method':<14}{'target KL':>10}{'scale':>10}{'KL':>8}{'success':>9}{'fluency':>9}")
for r in rows:
    print(f"{r.method:<14}{r.target_kl:>10.3g}{r.scale:>10.2f}{r.kl:>8.3f}{r.success:>9.2f}{r.fluency:>9.2f}")
steering_chart(rows, TOPIC).show()

# %% [markdown]
# The same vectors can also be saved (safetensors with the spec in its header) and used
# from the command line: `interp steer --model world --vector topic.safetensors --prompt "..."`.

# %%
best = max((r for r in rows if r.method != "unsteered"), key=lambda r: r.success)
specs[best.method].with_scale(best.scale).save(OUT / "topic")
print(f"saved {best.method} at scale {best.scale:.2f} -> {OUT / 'topic.safetensors'};"
      f" reloads as {Steering.load(OUT / 'topic.safetensors').name!r}")

summary = {
    "topic": TOPIC,
    "chosen": chosen,
    "rows": [r.__dict__ for r in rows],
    "at_target_kl": {"unsteered": {"kl": 0.0, "success": topic_success(plain.new_tokens, topic_index, word_topics)}}
    | {method: {"kl": kl, "scale": tuned.scale, "success": topic_success(out.new_tokens, topic_index, word_topics)}
       for method, (tuned, kl, out) in steered.items()},
}
{method: round(v["success"], 2) for method, v in summary["at_target_kl"].items()}

# %% [markdown]
# ## On a real model
#
# Steering works the same on any supported HF model. Without planted labels, a
# difference-in-means vector comes from two sets of prompts (here a contrast of sentiment);
# the KL calibration is unchanged. Runs only with `INTERP_ONLINE=1` (it downloads GPT-2).

# %%
if ONLINE:
    import probes

    hf_model = interp.load("gpt2")
    hook = "blocks.6.hook_resid_post"
    positive = ["I love this, it is wonderful", "What a great and happy day", "This is the best news ever"]
    negative = ["I hate this, it is awful", "What a terrible and sad day", "This is the worst news ever"]

    def last_states(texts):  # one text at a time: the last position is a real token, never padding
        return torch.stack([hf_model.run_with_cache(t, names=[hook])[1][hook][0, -1] for t in texts])

    v = probes.diff_in_means(last_states(positive), last_states(negative))
    spec = Steering.from_direction(v, hook, positions="all", name="positive sentiment")
    hf_prompts = ["The movie was", "My neighbour is"]
    spec, kl = calibrate_scale(hf_model, spec, hf_prompts, target_kl=0.5)
    before = hf_model.generate(hf_prompts, max_new_tokens=20).texts
    after = hf_model.generate(hf_prompts, max_new_tokens=20, steering=[spec]).texts
    for prompt, b, a in zip(hf_prompts, before, after):
        print(f"{prompt!r} at KL {kl:.2f}\n  before: {b}\n  after:  {a}")
