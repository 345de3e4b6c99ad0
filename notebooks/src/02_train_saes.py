# %% [markdown]
# # 02 · Train sparse dictionaries and compare them
#
# Harvest activations of the shipped world model, train three sparse autoencoders (TopK,
# Matryoshka, matching pursuit) on its residual stream and an SNMF on its MLP neurons, and
# compare them on
#
# | metric | what it says |
# |---|---|
# | FVU | fraction of the activations' variance the reconstruction misses (lower is better) |
# | L0 | active latents per token (the sparsity bought) |
# | dead | fraction of latents that never fire on held-out text |
# | CE recovered | the reconstruction spliced into the model: 1 = nothing lost, 0 = as bad as deleting the activation |
# | coverage | fraction of the 8 planted topics that one latent detects with AUROC > 0.9 |
# | absorption | how often a hierarchy parent's latent (*bird*) stays silent on a child (*sparrow*); lower is better |
#
# The world planted topics and a category hierarchy, so coverage and absorption are measured
# against the truth. With `CI=1` every size shrinks so the notebook runs in seconds; unset it
# for the full sizes (a few minutes on a laptop CPU).

# %%
import os
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm loads: text bars without ipywidgets

import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.subplots import make_subplots

import interp
import probes
import saes
from interp.activations.tokens import TokenSource
from interp.world import World, labelled_batch
from interp.world.labels import topic_words
from interp.world.lexicon import HIERARCHY_MEMBERS, HIERARCHY_NODES, TOPICS

# Each figure is stored twice: as plotly JSON (interactive in Jupyter) and as HTML with plotly.js
# inlined once per notebook, so static viewers (nbviewer, exported HTML) show it too, offline.
pio.renderers.default = "plotly_mimetype+notebook"

CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
ONLINE = os.environ.get("INTERP_ONLINE", "") == "1"  # the cells that download a real model run only then
# Outputs go to runs/notebooks/ at the top of the checkout, whether the kernel starts in
# notebooks/ (Jupyter does) or at the root; outside a checkout, under the working directory.
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "notebooks" / "build.py").is_file()), Path.cwd())
OUT = Path(os.environ.get("INTERP_NOTEBOOK_OUT") or ROOT / "runs" / "notebooks") / "02_train_saes"
torch.manual_seed(0)

SIZES = (dict(tokens=12_000, epochs=5, d_sae=256, k=8, snmf_rank=64, snmf_tokens=4_000, snmf_iter=80,
              eval_docs=40, label_docs=300)
         if CI else
         dict(tokens=40_000, epochs=6, d_sae=512, k=16, snmf_rank=100, snmf_tokens=10_000, snmf_iter=200,
              eval_docs=200, label_docs=600))
SIZES

# %% [markdown]
# ## 1. Load the model and harvest activations
#
# One forward pass stores two hooks of the middle layer: the residual stream (for the SAEs)
# and the MLP's hidden neurons (for the SNMF). Documents come fresh from the world's
# generator. Running this cell again reuses the finished store.

# %%
model = interp.load("world")
LAYER = model.n_layers // 2
RESID, MLP = f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.mlp.hook_post"

world = World()
texts = [" ".join(doc.tokens[1:-1]) for doc in world.iter_docs(SIZES["tokens"] // 15, seed=1)]
store = interp.harvest(model, texts, hooks=[RESID, MLP], out=OUT / "store", max_tokens=SIZES["tokens"],
                       context_length=128, batch_size=32, progress=False)
print(store)
print(f"{len(store):,} tokens; {RESID}: d={store.d}; {MLP}: d={store.select(MLP).d}")

# %% [markdown]
# ## 2. Train three SAEs in one pass over the data, and an SNMF
#
# `saes.train` with a list trains a sweep: every batch is read once and fed to each SAE.
# Same width and sparsity for all three; the Matryoshka groups double in width
# (d/16, d/16, d/8, d/4, d/2). `dead_tokens` is shortened to the store size so that AuxK
# revives latents within a short run.

# %%
d_sae, k = SIZES["d_sae"], SIZES["k"]
dictionaries = {
    "TopK": saes.TopKSAE(store.d, d_sae, k=k),
    "Matryoshka": saes.MatryoshkaSAE(store.d, d_sae=d_sae, k=k),
    "MP": saes.MPSAE(store.d, d_sae, k=k),
}
config = saes.TrainConfig(batch_size=256, total_tokens=SIZES["epochs"] * len(store), lr=2e-3, seed=0,
                          dead_tokens=len(store))
started = time.perf_counter()
train_results = dict(zip(dictionaries, saes.train(list(dictionaries.values()), store, config, progress=not CI)))
print(f"trained {len(dictionaries)} SAEs on {config.total_tokens:,} tokens in {time.perf_counter() - started:.1f}s")
for name, sae in dictionaries.items():
    sae.metadata.update(hook_name=RESID, model_name=model.name)
    sae.save(OUT / name.lower())

# %%
started = time.perf_counter()
snmf_acts = store.select(MLP)[: SIZES["snmf_tokens"]].float()  # SNMF holds its matrix in memory
snmf = saes.SNMF(rank=SIZES["snmf_rank"], sparsity=0.01, max_iter=SIZES["snmf_iter"], seed=0).fit(snmf_acts)
snmf.save(OUT / "snmf")
print(f"SNMF rank {SIZES['snmf_rank']} on {len(snmf_acts):,} tokens x {snmf_acts.shape[1]} neurons in "
      f"{time.perf_counter() - started:.1f}s; {int((snmf.features[0] != 0).sum())} neurons per feature")

# %% [markdown]
# Training curves: FVU by step, from each run's logged history.

# %%
fig = go.Figure()
for name, result in train_results.items():
    fig.add_trace(go.Scatter(x=[r["tokens"] for r in result.history], y=[r["fvu"] for r in result.history],
                             mode="lines", name=name))
fig.update_layout(title="Training FVU", xaxis_title="training tokens", yaxis_title="FVU", yaxis_type="log",
                  height=350)
fig.show()

# %% [markdown]
# ## 3. Reconstruction in the model: FVU, L0, dead, CE recovered
#
# Held-out text is packed into full windows of 128 tokens. `interp.evaluate_sae` splices each
# SAE's reconstruction in at its hook and compares the next-token loss with the clean and the
# zero-ablated model.
#
# The SNMF lives at another hook and is not an SAE, so the same measurement is written out
# here: held-out tokens get their coefficients from `SNMFResult.encode` (the fit's own
# non-negative update with the features fixed), and the reconstruction is spliced in at
# `mlp.hook_post`. Checked against `evaluate_sae` on the TopK SAE first.

# %%
eval_texts = [" ".join(doc.tokens[1:-1]) for doc in world.iter_docs(SIZES["eval_docs"], seed=2)]
eval_tokens = torch.cat([b.tokens[b.attention_mask.bool().all(1)]
                         for b in TokenSource(eval_texts, context_length=128).batches(model, 16)])
print(f"held-out: {eval_tokens.shape[0]} windows x {eval_tokens.shape[1]} tokens")

evaluations = {name: interp.evaluate_sae(model, sae, RESID, eval_tokens) for name, sae in dictionaries.items()}


@torch.no_grad()
def ce_recovered(hook, reconstruct, tokens):
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean) with ``reconstruct`` spliced in at ``hook``.

    Position 0 (BOS) is left alone, as the harvest and ``evaluate_sae`` do.
    """
    def loss(fn=None):
        with model.hooks([] if fn is None else [(hook, fn)]):
            logits = model(tokens)
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten()))

    def splice(x, hook):
        x = x.clone()
        x[:, 1:] = reconstruct(x[:, 1:].flatten(0, 1)).reshape(x[:, 1:].shape).to(x.dtype)
        return x

    def zero(x, hook):
        x = x.clone()
        x[:, 1:] = 0
        return x

    clean, spliced, zeroed = loss(), loss(splice), loss(zero)
    return (zeroed - spliced) / (zeroed - clean)


topk = dictionaries["TopK"]
check = ce_recovered(RESID, lambda x: topk(x), eval_tokens)
print(f"CE recovered of TopK: evaluate_sae {evaluations['TopK'].ce_loss_recovered:.4f}, written out {check:.4f}")

_, cache = model.run_with_cache(eval_tokens, names=[MLP], return_logits=False)
mlp_acts = cache[MLP][:, 1:].flatten(0, 1).float()
snmf_codes = snmf.encode(mlp_acts)
snmf_eval = {
    "fvu": saes.metrics.fvu(mlp_acts, snmf.decode(snmf_codes)),
    "l0": saes.metrics.l0(snmf_codes),
    "dead_fraction": saes.metrics.dead_fraction(snmf_codes),
    "ce_loss_recovered": ce_recovered(MLP, lambda a: snmf.decode(snmf.encode(a)), eval_tokens),
}
snmf_eval

# %% [markdown]
# ## 4. Planted concepts: topic coverage and hierarchy absorption
#
# Labelled topical documents give every token its document's topic, its word class, and on
# hierarchy words the word's node and all its ancestors (`sparrow` → sparrow, bird, animal,
# living).
#
# * **Coverage**: for each of the 8 topics, the best single latent's AUROC as a detector of
#   "this content word (agent, object, place, verb, adjective) is in a document of that
#   topic" (`probes.coverage`). Function words and punctuation are left out: they carry the
#   topic only through context, and no single latent follows it there.
# * **Absorption**: for each category with members (bird → sparrow, robin, ...), the
#   category's direction is the difference in means between its members' activations and
#   other members'; the parent latent is the dictionary element closest to that direction,
#   and absorption is the fraction of member tokens on which it stays silent
#   (`saes.metrics.absorption_rate`). The expectation (Bussmann et al. 2025) is that a TopK
#   SAE lets child latents take over the parent's direction, while Matryoshka's small
#   prefixes, which must reconstruct alone, keep parent latents that fire with every child;
#   the table shows whether that holds for this model at these sizes.

# %%
batch = labelled_batch(SIZES["label_docs"], seed=3, kind="topical", model=model, names=[RESID, MLP])
keep = batch.labels["topic"] >= 0
keep[:, 0] = False  # BOS: not modelled by any dictionary
topic = batch.labels["topic"][keep]
content = topic_words(batch.labels["word_class"][keep])  # agents, objects, places, verbs, adjectives
topic_onehot = torch.stack([topic == t for t in range(len(TOPICS))], dim=1)[content]  # [n_content, 8]

hierarchy = batch.labels["hierarchy"][keep].bool()  # [n, 71] multi-hot
node = {name: i for i, name in enumerate(HIERARCHY_NODES)}
tree = {node[cat]: [node[m] for m in members] for cat, members in HIERARCHY_MEMBERS.items()}
member = hierarchy[:, [c for children in tree.values() for c in children]].any(1)  # a member word
tree = {p: c for p, c in tree.items() if 0 < int(hierarchy[member, p].sum()) < int(member.sum())}
print(f"{int(keep.sum()):,} labelled tokens, {int(content.sum()):,} content words; "
      f"{int(member.sum())} member tokens under {len(tree)} categories")

acts = {RESID: batch.cache[RESID][keep].float(), MLP: batch.cache[MLP][keep].float()}
with torch.no_grad():
    codes = {name: sae.encode(acts[RESID]) for name, sae in dictionaries.items()}
codes["SNMF"] = snmf.encode(acts[MLP])


def concept_scores(z, x, W_dec):
    """Topic coverage on content words; absorption against the category directions in x's space."""
    cover = probes.coverage(z[content], topic_onehot)
    directions = torch.zeros(len(HIERARCHY_NODES), x.shape[1])
    for p in tree:  # members of the category minus members of other categories
        directions[p] = probes.diff_in_means(x[member & hierarchy[:, p]], x[member & ~hierarchy[:, p]])
    absorption = saes.metrics.absorption_rate(z, hierarchy, tree, W_dec=W_dec, directions=directions)
    return cover, absorption


concepts = {name: concept_scores(codes[name], acts[RESID], sae.W_dec) for name, sae in dictionaries.items()}
concepts["SNMF"] = concept_scores(codes["SNMF"], acts[MLP], snmf.features)

# %% [markdown]
# ## 5. The comparison

# %%
table = {}
for name in [*dictionaries, "SNMF"]:
    numbers = evaluations[name].to_dict() if name in evaluations else snmf_eval
    cover, absorption = concepts[name]
    table[name] = {
        "hook": RESID if name in dictionaries else MLP,
        "fvu": numbers["fvu"],
        "l0": numbers["l0"],
        "dead": numbers["dead_fraction"],
        "ce_recovered": numbers["ce_loss_recovered"],
        "coverage": cover.coverage,
        "topic_auroc": float(cover.best_auroc.mean()),
        "absorption": absorption.rate,
    }

columns = ["fvu", "l0", "dead", "ce_recovered", "coverage", "topic_auroc", "absorption"]
print(f"{'':<11}{'hook':<27}" + "".join(f"{c:>13}" for c in columns))
for name, row in table.items():
    print(f"{name:<11}{row['hook']:<27}" + "".join(f"{row[c]:>13.3f}" for c in columns))
print("\ntopic_auroc: mean over the 8 topics of the best single latent's AUROC on content words.")
print("SNMF constrains its features (a few neurons each), not its codes, which are only non-negative.")

# %%
titles = ["FVU (↓)", "L0", "dead fraction (↓)", "CE recovered (↑)", "topic coverage (↑)", "absorption (↓)"]
keys = ["fvu", "l0", "dead", "ce_recovered", "coverage", "absorption"]
fig = make_subplots(rows=1, cols=len(keys), subplot_titles=titles)
for i, key in enumerate(keys, start=1):
    fig.add_trace(go.Bar(x=list(table), y=[table[n][key] for n in table], marker_color=
                         ["#636efa", "#ef553b", "#00cc96", "#ab63fa"], showlegend=False), row=1, col=i)
fig.update_layout(title=f"Four dictionaries on the world model, layer {LAYER}", height=380, width=1300)
fig.show()

# %% [markdown]
# Per topic: the best single latent's AUROC for each dictionary.

# %%
fig = go.Figure()
for name, (cover, _) in concepts.items():
    fig.add_trace(go.Bar(x=list(TOPICS), y=cover.best_auroc.tolist(), name=name))
fig.add_hline(y=0.9, line_dash="dot", annotation_text="coverage bar")
fig.update_layout(barmode="group", title="Best single-latent AUROC per planted topic", yaxis_range=[0.5, 1.0],
                  height=380)
fig.show()

summary = {name: {k: v for k, v in row.items() if k != "hook"} for name, row in table.items()}
summary["ce_check"] = {"evaluate_sae": evaluations["TopK"].ce_loss_recovered, "written_out": check}

# %% [markdown]
# ## On a real model
#
# The same pipeline on GPT-2 small and web text. It downloads weights and data, so it runs
# only with `INTERP_ONLINE=1` (and never in the tests). Any supported family works
# (`"EleutherAI/pythia-160m"`, Llama, Qwen, Gemma...); only the hook names change with the
# layer count. Coverage and absorption need labels, which real text does not carry.

# %%
if ONLINE:
    from datasets import load_dataset  # pip install datasets

    hf_model = interp.load("gpt2")
    hf_hook = "blocks.6.hook_resid_post"
    web = load_dataset("NeelNanda/pile-10k", split="train")
    hf_store = interp.harvest(hf_model, web.select(range(4000)), hooks=[hf_hook], out=OUT / "gpt2_store",
                              max_tokens=500_000, context_length=128, batch_size=16)
    hf_saes = [saes.TopKSAE(hf_store.d, 16 * hf_store.d, k=32),
               saes.MatryoshkaSAE(hf_store.d, d_sae=16 * hf_store.d, k=32),
               saes.MPSAE(hf_store.d, 16 * hf_store.d, k=32)]
    saes.train(hf_saes, hf_store, saes.TrainConfig(batch_size=4096, total_tokens=2 * len(hf_store)))
    held_out = [row["text"] for row in web.select(range(4000, 4064))]
    for sae in hf_saes:
        print(type(sae).__name__, interp.evaluate_sae(hf_model, sae, hf_hook, held_out, context_length=128).table())
