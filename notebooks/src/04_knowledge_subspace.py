# %% [markdown]
# # 04 · Parametric vs context knowledge: the rank-2 subspace
#
# Where does a model's answer come from: what it memorised (parametric knowledge, PK) or
# what the prompt says (context knowledge, CK)? Following Islam, Atanasova & Augenstein
# (2025), each question is rendered three ways,
#
# * "ignore the given context ." — a PK-only source,
# * "use only the context ." — a CK-only source,
# * "consider the given context ." — the base,
#
# and a rank-2 subspace `U` is trained by interchange intervention at one layer's last prompt
# token: replacing the base's projection on `U` by a source's, `h ← (I − UUᵀ) h_base + UUᵀ
# h_source` (the reference code's interchange), must make the model give the source's answer.
# The coordinates `Uᵀh` then say, token by token, how much the state draws on each source.
# A rank-1 direction has one coordinate: a single number between the PK and CK anchors,
# which cannot say "both", the state supportive items (memory and context agree) need.
#
# The world model has a memorised fact base and QA items whose type is known, so the read-out
# can be checked. `CI=1` shrinks every size.

# %%
import os
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # before tqdm loads: text bars without ipywidgets

import plotly.graph_objects as go
import plotly.io as pio
import torch

import interp
from interp.world import World, pkck_batch, pkck_items
from probes.pkck import (CONSIDER, IGNORE, USE, answer_all, interchange_accuracy, read_generation,
                         separation_auroc, shares_by_type, shares_figure, train_pkck, usable_items)

# Each figure is stored twice: as plotly JSON (interactive in Jupyter) and as HTML with plotly.js
# inlined once per notebook, so static viewers (nbviewer, exported HTML) show it too, offline.
pio.renderers.default = "plotly_mimetype+notebook"

CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
ONLINE = os.environ.get("INTERP_ONLINE", "") == "1"  # the cells that download a real model run only then
torch.manual_seed(0)
SIZES = dict(items=80, steps=40, new_tokens=3) if CI else dict(items=400, steps=300, new_tokens=6)
SIZES

# %% [markdown]
# ## 1. Items in three renderings, and what the model answers
#
# The renderings differ only in the instruction words (positions 1–4), so positions line up
# and a state can be moved from one rendering into another. `answer_all` records the model's
# greedy answer at the last prompt token (the `:` after `answer`) under each rendering.

# %%
model = interp.load("world")
world = World()
items = pkck_items(SIZES["items"], seed=5)
batch = pkck_batch(items)
data = answer_all(model, batch["tokens"], batch["last_pos"], batch["answers"], [it.item_type for it in items])
print(" ".join(world.vocab[t] for t in batch["tokens"][0, CONSIDER, : int(batch["last_pos"][0]) + 1]))
print(f"expected: {world.vocab[int(batch['answers'][0, CONSIDER])]!r}, "
      f"model: {world.vocab[int(data.answers[0, CONSIDER])]!r}\n")

accuracy = {name: float((data.answers[:, r] == data.expected[:, r]).float().mean())
            for name, r in (("ignore (PK)", IGNORE), ("use (CK)", USE), ("consider", CONSIDER))}
for name, value in accuracy.items():
    print(f"answers as expected when told to {name:<12} {value:.2f}")
types = data.interaction()
print(f"\ncorrect in all three renderings: {int(data.correct.sum())} of {len(items)} items")
print("interaction types from the model's own answers:", {t: types.count(t) for t in sorted(set(types))})

# %% [markdown]
# ## 2. Train the subspace (rank 2) and a rank-1 baseline
#
# The layer is explicit: trained at the output of block n_layers // 2, read at the same
# hook (`interp pkck --layers all` compares layers). Only items answered right (and
# confidently) in all three renderings are used, and 30% of them are held out: accuracy is
# measured on held-out rows where the source's answer differs from the base's (on the others
# a patch that does nothing already "succeeds"), beside a random subspace of the same rank.
# Afterwards the axes are named and signed: the PK axis is the one the mean PK-only state
# projects on most, and each anchor projects positively.

# %%
HOOK = f"blocks.{model.n_layers // 2}.hook_resid_post"
usable = usable_items(data)
order = usable[torch.randperm(len(usable), generator=torch.Generator().manual_seed(0))]
held_out, train_items = order[: len(order) * 3 // 10], order[len(order) * 3 // 10:]
rank2 = train_pkck(model, data, HOOK, rank=2, steps=SIZES["steps"], lr=2e-2, items=train_items)
rank1 = train_pkck(model, data, HOOK, rank=1, steps=SIZES["steps"], lr=2e-2, items=train_items)
random2 = torch.linalg.qr(torch.randn(model.d_model, 2, generator=torch.Generator().manual_seed(1))).Q
orthonormality = float((rank2.U.T @ rank2.U - torch.eye(2)).abs().max())
held = {name: interchange_accuracy(model, data, HOOK, U, held_out)
        for name, U in (("rank 2", rank2.U), ("rank 1", rank1.U), ("random rank 2", random2))}
for name, r in held.items():
    print(f"{name:<14} held-out interchange accuracy {r['informative']:.2f} on {r['n_informative']} informative rows "
          f"(all rows {r['all_rows']:.2f}; no patch, all rows {r['no_intervention']:.2f})")
for space in (rank2, rank1):
    print(f"rank {space.rank} at {space.hook}: {space.n_train} training items, loss {space.fit.losses[0]:.2f} -> "
          f"{space.fit.losses[-1]:.2f}")
print(f"|UᵀU − I| max {orthonormality:.1e}; orientation {rank2.orientation}")

fig = go.Figure([go.Scatter(y=rank2.fit.losses, name="rank 2"), go.Scatter(y=rank1.fit.losses, name="rank 1")])
fig.update_layout(title="Interchange training loss", xaxis_title="step", yaxis_title="cross-entropy", height=320)
fig.show()

# %% [markdown]
# ## 3. Read the base rendering's states
#
# Every base ("consider") prompt is read at the answer position (step 0) and over a few
# greedily generated tokens after it. PK share = |c_pk| / (|c_pk| + |c_ck|).
#
# Items are typed from the model's own answers: **supportive** when memory and context agree
# and the base gives that answer, **conflicting** when they differ and the base follows one.

# %%
prompts, last = data.tokens[:, CONSIDER], data.last_pos
read2 = read_generation(model, rank2, prompts, last, max_new_tokens=SIZES["new_tokens"])
read1 = read_generation(model, rank1, prompts, last, max_new_tokens=SIZES["new_tokens"])
by_type = shares_by_type(read2, types)
for t, values in by_type.items():
    print(f"{t:<12} PK share by step: " + " ".join(f"{v:.2f}" for v in values))
shares_figure(by_type, HOOK, title="Rank-2 PK share by generated step").show()

# %% [markdown]
# At the answer position, where do the two kinds of item sit in the plane of `U`?

# %%
coords = read2["coords"][:, 0]  # [n, 2] at the answer position
fig = go.Figure()
for t in ("supportive", "conflicting", "other"):
    rows = [i for i, x in enumerate(types) if x == t]
    fig.add_trace(go.Scatter(x=coords[rows, 0].tolist(), y=coords[rows, 1].tolist(), mode="markers", name=t))
fig.update_layout(title=f"Coordinates in the rank-2 subspace at the answer position ({HOOK})",
                  xaxis_title="PK coordinate", yaxis_title="CK coordinate", height=450)
fig.show()

# %% [markdown]
# ## 4. Rank 2 against rank 1
#
# Supportive items draw on both sources, so both coordinates are large and the PK share sits
# near the middle; conflicting items lean on one. "Balance" = 1 − 2·|PK share − ½| measures
# that. Rank 1 reads where its one coordinate sits between the PK-only and CK-only anchors
# (0 at the CK anchor, 1 at the PK anchor), so a state halfway between reads 0.5: the
# read-out does not decide the answer in advance, and the comparison below can go either
# way. Either rank can only separate the items where its subspace carries the sources:
# check first that its held-out accuracy in section 2 is well above the random subspace's
# (at the `CI=1` sizes, a few dozen steps, it cannot be).

# %%
chosen = [i for i, t in enumerate(types) if t in ("supportive", "conflicting")]
supportive = torch.tensor([types[i] == "supportive" for i in chosen])


# Step by step: at the answer position and over the explanation that follows
# (", from memory|context|both"), where the model states its source.
steps = read2["pk_share"].shape[1]
by_step = {name: [separation_auroc(r["pk_share"][chosen, s], supportive) for s in range(steps)]
           for name, r in (("rank 2", read2), ("rank 1", read1))}
separation = {name: max(2 * abs(a - 0.5) for a in values) for name, values in by_step.items()}
print(f"{len(chosen)} items ({int(supportive.sum())} supportive, {int((~supportive).sum())} conflicting)")
for name, values in by_step.items():
    print(f"{name}: AUROC of balance by step " + " ".join(f"{a:.2f}" for a in values)
          + f"; separation 2·max|AUROC − ½| = {separation[name]:.2f}")

summary = {
    "accuracy": accuracy,
    "n_train": rank2.n_train,
    "orthonormality": orthonormality,
    "interchange_accuracy": {name: r["informative"] for name, r in held.items()},
    "no_patch_all_rows": held["rank 2"]["no_intervention"],
    "interchange_loss": {"first": rank2.fit.losses[0], "last10": sum(rank2.fit.losses[-10:]) / 10},
    "hook": rank2.hook,
    "separation_auroc_by_step": by_step,
    "separation": separation,
    "pk_share_by_type": by_type,
}

# %% [markdown]
# ## On a real model
#
# The analysis runs on any supported HF model given the three renderings of each question.
# Pick instruction phrases of equal token length so the renderings stay aligned (the code
# checks), and single-token answers. Runs only with `INTERP_ONLINE=1` (it downloads a model);
# a real study needs hundreds of items, not three.

# %%
if ONLINE:
    hf_model = interp.load("EleutherAI/pythia-410m")
    instructions = {"ignore": "Ignore the context.", "use": "Use only the context.", "consider": "Use the context."}
    questions = [  # (context, question, answer from memory, answer from the context)
        ("The capital of France is Rome.", "The capital of France is", " Paris", " Rome"),
        ("The Eiffel Tower is in Berlin.", "The Eiffel Tower is in", " Paris", " Berlin"),
        ("Water boils at 50 degrees.", "Water boils at", " 100", " 50"),
    ]
    rendered, expected = [], []
    for context, question, memory, given in questions:
        ids = [hf_model.to_tokens(f"{instructions[r]} Context: {context} Question: {question}")[0]
               for r in ("ignore", "use", "consider")]
        assert len({len(x) for x in ids}) == 1, "choose instruction phrases of equal token length"
        rendered.append(torch.stack(ids))
        answer_ids = [hf_model.to_tokens(a, prepend_bos=False)[0, 0] for a in (memory, given, given)]
        expected.append(torch.stack(answer_ids))
    tokens = torch.nn.utils.rnn.pad_sequence([t.T for t in rendered], batch_first=True,
                                             padding_value=hf_model.pad_token_id).transpose(1, 2)
    last_pos = torch.tensor([t.shape[1] - 1 for t in rendered])
    hf_data = answer_all(hf_model, tokens, last_pos, torch.stack(expected))
    hf_space = train_pkck(hf_model, hf_data, f"blocks.{hf_model.n_layers // 2}.hook_resid_post", rank=2, steps=200)
    print(shares_by_type(read_generation(hf_model, hf_space, tokens[:, CONSIDER], last_pos), hf_data.interaction()))
