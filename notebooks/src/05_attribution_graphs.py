# %% [markdown]
# # 05 · Attribution graphs: from a graph to an intervention
#
# An attribution graph explains one prompt (Ameisen et al. 2025, "Circuit Tracing"): each MLP
# is replaced by a transcoder, attention patterns and norm denominators are frozen at their
# values on the prompt, and the direct effect of every active feature, error node and token
# on every later feature and on the answer's logit is computed exactly.
#
# The prompt is a composed fact of the world: `the flag of the land whose capital is CITY is`.
# The land is never written; the model looks it up from the city (the *bridge*), then looks
# up its flag. The world says where the first look-up happens (block 0, at the final `is`),
# so the graph's story can be checked, and then tested by intervening on the features it
# names. `CI=1` shrinks every size.

# %%
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm loads: text bars without ipywidgets

import plotly.graph_objects as go
import plotly.io as pio
import torch
from IPython.display import HTML, display

import interp
import saes
from interp.activations.live import LiveConfig, train_live
from interp.circuits import ReplacementModel, attribute, intervene, patch_features
from interp.circuits.export import write_graph_files
from interp.circuits.html import save_html
from interp.circuits.planted import bridge_check, bridge_corpus, capital_prompt
from interp.world import World

# Each figure is stored twice: as plotly JSON (interactive in Jupyter) and as HTML with plotly.js
# inlined once per notebook, so static viewers (nbviewer, exported HTML) show it too, offline.
pio.renderers.default = "plotly_mimetype+notebook"

CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
ONLINE = os.environ.get("INTERP_ONLINE", "") == "1"  # the cells that download a real model run only then
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "notebooks" / "build.py").is_file()), Path.cwd())
OUT = Path(os.environ.get("INTERP_NOTEBOOK_OUT") or ROOT / "runs" / "notebooks") / "05_attribution_graphs"
torch.manual_seed(0)
# The layer-0 transcoder needs its million tokens even at CI size: at 300,000 the bridge
# patch moved 17% of answers (it moves 65-85% after a million).
SIZES = (dict(repeats=16, tokens0=1_000_000, d_sae0=4096, tokens=30_000, d_sae=512, pairs=12)
         if CI else dict(repeats=16, tokens0=1_000_000, d_sae0=4096, tokens=200_000, d_sae=1024, pairs=40))
SIZES

# %% [markdown]
# ## 1. Transcoders
#
# One transcoder per MLP, reading the MLP's input (`hook_resid_mid`) and writing its output
# (`hook_mlp_out`). The layer-0 one must know the 200 city-to-land look-ups, which ordinary
# world text holds too rarely for a short run, so it trains on the world's fact sentences
# (`bridge_corpus`); the others train on world documents. BatchTopK codes are a JumpReLU at
# inference, the kind circuit-tracer runs too.

# %%
model = interp.load("world")
facts = World().facts


def transcoder_pair(layer, d_sae):
    hooks = (f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_mlp_out")
    return hooks, saes.BatchTopKSAE(model.d_model, d_sae, k=32, d_out=model.d_model)


config = dict(batch_size=1024, init_rows=4096)
live = LiveConfig(buffer_tokens=1 << 15)
first = dict([transcoder_pair(0, SIZES["d_sae0"])])
trained = train_live(model, bridge_corpus(SIZES["repeats"]), first,
                     saes.TrainConfig(total_tokens=SIZES["tokens0"], **config), live=live, progress=False)
docs = [" ".join(doc.tokens[1:-1]) for doc in World().iter_docs(2_000, seed=1)]
rest = dict(transcoder_pair(layer, SIZES["d_sae"]) for layer in range(1, model.n_layers))
trained.update(train_live(model, docs, rest, saes.TrainConfig(total_tokens=SIZES["tokens"], **config), live=live,
                          progress=False))
transcoders = {layer: result.sae for layer, result in enumerate(trained.values())}
{layer: round(result.metrics["fvu"], 3) for layer, result in enumerate(trained.values())}

# %% [markdown]
# ## 2. The graph of one prompt
#
# `attribute` runs the frozen system once on a batch of copies of the prompt and gets 64 rows
# of the adjacency matrix per backward pass. With every error node in the graph, the edges
# into each node add up to its input (`input_residual`, float error). Pruning keeps the nodes
# that carry 80% of the influence on the answer, then 98% of the edge influence; the
# replacement score is the share of the tokens' influence that does not end in an error node.

# %%
land, other = facts.entities[3], facts.entities[10]
prompt = capital_prompt(facts, land)
rm = ReplacementModel(model, transcoders, prompt)
graph = attribute(model, rm)
pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
scores = graph.scores()
print(prompt, "->", graph.logit_strings, f"(the flag of {land}: {facts.value(land, 'flag')})")
print(f"{graph.n_features} active features, {int(pruned.node_mask.sum())} nodes kept; replacement score "
      f"{scores.replacement:.3f}, completeness {scores.completeness:.3f}; residual {graph.input_residual():.1e}; "
      f"{graph.seconds:.2f} s")
json_path = write_graph_files(graph, OUT, "capital-graph", pruned=pruned)     # circuit-tracer / Neuronpedia JSON
html_path = save_html(graph, OUT / "capital-graph.html", pruned=pruned)       # the offline view
display(HTML(f'<a href="{html_path.as_uri()}">open the graph view</a> · JSON: {json_path}'))

# %% [markdown]
# Where does the answer's influence go? Summed over the feature nodes of each layer and
# position: the graph puts the largest share on layer-0 features at the final `is`, the place
# the world's own probes and patching name for the bridge look-up.

# %%
influence = graph.node_influence()
grid = torch.zeros(graph.n_layers, graph.n_pos)
for (layer, pos, _), value in zip(graph.active_features.tolist(), influence[:graph.n_features].tolist()):
    grid[layer, pos] += value
grid /= float(influence.sum())
fig = go.Figure(go.Heatmap(z=grid.numpy(), x=[f"{i}:{t}" for i, t in enumerate(graph.token_strings)],
                           y=[f"layer {i}" for i in range(graph.n_layers)], colorscale="Blues"))
fig.update_layout(title="share of the answer's influence through each layer's features, by position",
                  height=320, margin=dict(l=60, r=20, t=50, b=40))
fig.show()
top_layer, top_pos = divmod(int(grid.argmax()), graph.n_pos)
print(f"largest: layer {top_layer}, position {top_pos} ({graph.token_strings[top_pos]!r}), share {float(grid.max()):.3f}")

# %% [markdown]
# ## 3. Test the story: give those features another land's values
#
# If layer-0 features at the final position are where the bridge land sits, then setting them
# to their values on another land's prompt must make the model answer that land's flag. The
# intervention runs in the real model (attention patterns frozen at this prompt's): the
# transcoder encodes the MLP input of that run and the MLP output moves by the change. As a
# control, the same patch at the city's own position.

# %%
source = ReplacementModel(model, transcoders, capital_prompt(facts, other))
patched = intervene(model, rm, edits=patch_features(rm, source, [0], [-1]))
control = intervene(model, rm, edits=patch_features(rm, source, [0], [-2]))
print(f"{land} -> {other}: flags {facts.value(land, 'flag')} -> {facts.value(other, 'flag')}")
print("clean:          ", patched.top(3, clean=True))
print("patched (final):", patched.top(3))
print("patched (city): ", control.top(3))

# %% [markdown]
# Over many pairs of lands with different flags (`bridge_check`):

# %%
check = bridge_check(model, transcoders, n_pairs=SIZES["pairs"])
display(HTML(f"<pre>{check.table()}</pre>"))

# %%
summary = {
    "prompt": prompt, "answer": graph.logit_strings[0], "flag": facts.value(land, "flag"),
    "replacement": scores.replacement, "completeness": scores.completeness,
    "input_residual": graph.input_residual(), "top_place": [top_layer, top_pos], "n_pos": graph.n_pos,
    "patched_answer": patched.top(1)[0][0], "other_flag": facts.value(other, "flag"),
    "control_answer": control.top(1)[0][0], "moved": check.moved, "moved_at_city": check.moved_at_city,
    "route_top": check.route_top, "json": str(json_path), "html": str(html_path),
}
summary

# %% [markdown]
# ## On a real model
#
# The same walk on GPT-2 small: transcoders trained here on web text (a short run; published
# per-layer transcoders in circuit-tracer's layout load the same way through
# `--transcoders DIR`), then the graph of a fact. It downloads the model and the data, so it
# runs only with `INTERP_ONLINE=1`.

# %%
if ONLINE:
    from datasets import load_dataset  # pip install datasets

    gpt2 = interp.load("gpt2")
    web = [row["text"] for row in load_dataset("NeelNanda/pile-10k", split="train").select(range(3000))]
    pairs = {(f"blocks.{i}.hook_resid_mid", f"blocks.{i}.hook_mlp_out"): saes.BatchTopKSAE(768, 6144, k=32, d_out=768)
             for i in range(gpt2.n_layers)}
    gpt2_tcs = {i: r.sae for i, r in enumerate(train_live(gpt2, web, pairs, saes.TrainConfig(
        total_tokens=2_000_000, batch_size=4096), context_length=128).values())}
    gpt2_graph = attribute(gpt2, gpt2_tcs, "The capital of France is")
    print(gpt2_graph.logit_strings, gpt2_graph.scores())
    save_html(gpt2_graph, OUT / "gpt2-graph.html")
