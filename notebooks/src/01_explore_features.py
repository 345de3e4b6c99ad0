# %% [markdown]
# # 01 · Explore the features of a sparse autoencoder
#
# Load the shipped world model and a sparse autoencoder on its residual stream, look at
# latents in the feature dashboard, find the latent that tracks a planted concept (a topic
# of the world), and compare it with a supervised probe for the same concept.
#
# The world planted its topics, so "does this latent mean *cooking*?" has a checkable
# answer: every token carries its document's topic. `CI=1` shrinks every size.

# %%
import os
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm loads: text bars without ipywidgets

import plotly.graph_objects as go
import plotly.io as pio
import torch
from IPython.display import HTML, display

import interp
import probes
import saes
from interp.dashboards import build_dashboard
from interp.world import labelled_batch
from interp.world.labels import topic_words
from interp.world.lexicon import TOPICS

# Each figure is stored twice: as plotly JSON (interactive in Jupyter) and as HTML with plotly.js
# inlined once per notebook, so static viewers (nbviewer, exported HTML) show it too, offline.
pio.renderers.default = "plotly_mimetype+notebook"

CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
ONLINE = os.environ.get("INTERP_ONLINE", "") == "1"  # the cells that download a real model run only then
# Outputs go to runs/notebooks/ at the top of the checkout, whether the kernel starts in
# notebooks/ (Jupyter does) or at the root; outside a checkout, under the working directory.
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "notebooks" / "build.py").is_file()), Path.cwd())
OUT = Path(os.environ.get("INTERP_NOTEBOOK_OUT") or ROOT / "runs" / "notebooks") / "01_explore_features"
SAE_DIR = os.environ.get("INTERP_SAE")  # a saved SAE for this model's hook; None trains a small one here
torch.manual_seed(0)
SIZES = (dict(docs=500, epochs=6, d_sae=256, k=8, dashboard_latents=4)
         if CI else dict(docs=1500, epochs=6, d_sae=512, k=16, dashboard_latents=8))
SIZES

# %% [markdown]
# ## 1. Labelled activations in a store
#
# Topical documents from the world's generator are packed into windows of 128 tokens, as the
# harvest packs text, with every token's topic and word class carried alongside. The
# activations of the middle layer's residual stream go to an on-disk store; `topic` and
# `word_class` below are aligned with its rows (the store skips the BOS at the start of a
# window, so the labels do too).

# %%
model = interp.load("world")
LAYER = model.n_layers // 2
HOOK = f"blocks.{LAYER}.hook_resid_post"
CTX = 128

batch = labelled_batch(SIZES["docs"], seed=1, kind="topical")
real = batch.mask  # [docs, pos]: real tokens, not padding
n_windows = int(real.sum()) // CTX


def as_windows(per_token):
    """Documents back to back (<bos> ... <eos> <bos> ...), cut into windows [n_windows, CTX]."""
    return per_token[real][: n_windows * CTX].reshape(n_windows, CTX)


windows = as_windows(batch.tokens)

store = interp.harvest(model, windows, hooks=[HOOK], out=OUT / "store", progress=False)
stored = torch.ones_like(windows, dtype=torch.bool)
stored[:, 0] = windows[:, 0] != model.bos_token_id  # the harvest leaves out a window-opening BOS
topic = as_windows(batch.labels["topic"])[stored]  # [rows]: the topic of each row's document
word_class = as_windows(batch.labels["word_class"])[stored]  # [rows]
assert len(topic) == len(store)
print(f"{len(store):,} rows x {store.d} at {HOOK}; rows per topic:",
      {name: int((topic == i).sum()) for i, name in enumerate(TOPICS)})

# %% [markdown]
# ## 2. A sparse autoencoder
#
# Point `INTERP_SAE` at a saved SAE (for example one written by notebook 02, or
# `interp train --store ... --out DIR`) to load it; otherwise a small TopK SAE is trained here
# on the store, which takes seconds.

# %%
if SAE_DIR:
    sae = saes.load(SAE_DIR)
else:
    started = time.perf_counter()
    sae = saes.TopKSAE(store.d, SIZES["d_sae"], k=SIZES["k"])
    saes.train(sae, store, saes.TrainConfig(batch_size=256, total_tokens=SIZES["epochs"] * len(store), lr=2e-3,
                                            dead_tokens=len(store)), progress=not CI)
    sae.metadata.update(hook_name=HOOK, model_name=model.name)
    sae.save(OUT / "sae")
    print(f"trained in {time.perf_counter() - started:.1f}s")
print(saes.metrics.evaluate(sae, store[:]))

# %% [markdown]
# ## 3. Which latent is the planted concept?
#
# Each latent's activation is scored as a detector of each topic: AUROC over the content
# words (agents, objects, places, verbs, adjectives) of the store, where 1 means it ranks
# every on-topic word above every off-topic one and ½ is chance. Function words and
# punctuation are left out: they carry the topic only through context, which no single
# latent follows. `probes.coverage` returns the best single latent per topic; the topic
# whose latent is clearest is the one studied below.

# %%
with torch.no_grad():
    codes = sae.encode(store[:].float())  # [rows, d_sae]
content = topic_words(word_class)  # [rows]: agents, objects, places, verbs, adjectives
onehot = torch.stack([topic == t for t in range(len(TOPICS))], dim=1)  # [rows, 8]
report = probes.coverage(codes[content], onehot[content])
for i, name in enumerate(TOPICS):
    print(f"{name:<8} latent {int(report.best_latent[i]):>4}  AUROC {float(report.best_auroc[i]):.3f}")
print(f"coverage (topics with a latent at AUROC > 0.9): {report.coverage:.0%} of {len(TOPICS)}")

topic_index = int(report.best_auroc.argmax())
TOPIC = list(TOPICS)[topic_index]
latent = int(report.best_latent[topic_index])
latent_auroc = float(report.best_auroc[topic_index])
print(f"\nthe {TOPIC!r} latent: {latent} (AUROC {latent_auroc:.3f} on {int(content.sum()):,} content words)")

# %% [markdown]
# ## 4. The feature dashboard
#
# For a handful of latents (the topic latents first): top-activating examples with their
# context, examples from across the activation range, the activation histogram, the tokens
# its decoder row promotes and suppresses, and the planted concept it detects best. On a
# store of the world model the dashboard reads the world's labels by itself (each token's
# word class, hierarchy nodes, topics of its lexicon, and the document topic its window
# shows); elsewhere pass `labels={concept: [n_rows] 0/1 tensor}`. The dashboard is one
# self-contained HTML file.

# %%
shown = list(dict.fromkeys([latent, *report.best_latent.tolist()]))[: SIZES["dashboard_latents"]]
dashboard = build_dashboard(model, sae, store, latents=shown, n_examples=10, n_quantile_examples=5,
                            progress=not CI)
dashboard.save_html(OUT / "dashboard.html")
print(f"dashboard of latents {shown} -> {OUT / 'dashboard.html'}")
card = dashboard.card(latent)
print(f"latent {latent} fires on {card.density:.1%} of tokens; planted labels it matches best:",
      ", ".join(f"{m.label} (AUROC {m.auroc:.2f})" for m in card.label_matches[:3]))
print("promotes:", ", ".join(token for token, _ in card.promoted[:8]))
dashboard

# %% [markdown]
# Read the planted labels the latent matches best: a latent that detects a topic may really
# be a narrower concept (a category of the hierarchy, a kind of word) that occurs only in
# documents of that topic. One latent's pieces can be shown on their own: its figures, and
# its examples as HTML.

# %%
figures = dashboard.figures(latent)
print("figures:", list(figures))
for figure in figures.values():
    figure.show()
display(HTML(dashboard.examples_html(latent)))

# %% [markdown]
# ## 5. The latent against a probe
#
# A supervised probe sees the labels; the SAE never did. Two probes for "this content word is
# in a document of the topic", fitted on the same activations:
#
# * a logistic-regression probe (`probes.LinearProbe`), scored on windows it was not fitted on;
# * the difference-in-means direction (on-topic mean − off-topic mean), scored by projection.
#
# If the latent is the concept, its AUROC comes close to the probes' and its decoder row
# points the same way as their directions.

# %%
x = store[:].float()[content]
on = (topic == topic_index)[content]
groups = torch.arange(n_windows)[:, None].expand_as(windows)[stored][content]  # the window of each row
probe = probes.LinearProbe(l2=1e-3)
probe_result = probe.fit(x, on.long(), groups=groups)
dim = probes.diff_in_means(x[on], x[~on])
comparison = {
    "sae latent": latent_auroc,
    "linear probe (held out)": probe_result.auroc,
    "difference in means": probes.binary_auroc(x @ dim, on),
}
decoder_row = sae.W_dec[latent].detach()
cosines = {
    "linear probe": float(torch.cosine_similarity(decoder_row, probe.direction, dim=0)),
    "difference in means": float(torch.cosine_similarity(decoder_row, dim, dim=0)),
}
for name, value in comparison.items():
    print(f"AUROC for {TOPIC!r}: {name:<24} {value:.3f}")
for name, value in cosines.items():
    print(f"cosine of the latent's decoder row with the {name} direction: {value:+.2f}")

# %%
fig = go.Figure()
for mask, name in ((on, TOPIC), (~on, "other topics")):
    fig.add_trace(go.Histogram(x=codes[content][mask, latent].tolist(), name=name, histnorm="probability", nbinsx=40,
                               opacity=0.7))
fig.update_layout(barmode="overlay", title=f"Latent {latent} on {TOPIC!r} content words vs the rest",
                  xaxis_title="activation", yaxis_title="share of tokens", yaxis_type="log", height=350)
fig.show()

summary = {
    "topic": TOPIC,
    "latent": latent,
    "latent_auroc": latent_auroc,
    "coverage": report.coverage,
    "best_auroc": report.best_auroc.tolist(),
    "probe_auroc": comparison["linear probe (held out)"],
    "diff_in_means_auroc": comparison["difference in means"],
    "cosines": cosines,
    "dashboard_latents": shown,
    "dashboard_html": str(OUT / "dashboard.html"),
}

# %% [markdown]
# ## On a real model
#
# The same exploration on GPT-2 small with a published SAE in the SAELens layout (which
# `saes.load` reads), over web text. It downloads the model, the SAE and the data, so it runs
# only with `INTERP_ONLINE=1`. Real text has no planted labels: read the examples instead.

# %%
if ONLINE:
    from datasets import load_dataset  # pip install datasets
    from huggingface_hub import snapshot_download

    hf_model = interp.load("gpt2")
    hf_hook = "blocks.8.hook_resid_pre"
    sae_repo = snapshot_download("jbloom/GPT2-Small-SAEs-Reformatted", allow_patterns=[f"{hf_hook}/*"])
    hf_sae = saes.load(Path(sae_repo) / hf_hook)
    web = load_dataset("NeelNanda/pile-10k", split="train").select(range(2000))
    hf_store = interp.harvest(hf_model, web, hooks=[hf_hook], out=OUT / "gpt2_store", max_tokens=200_000,
                              context_length=128, batch_size=16)
    hf_dashboard = build_dashboard(hf_model, hf_sae, hf_store, latents=list(range(8)))
    hf_dashboard.save_html(OUT / "gpt2_dashboard.html")
    display(hf_dashboard)
