"""Train SAELens 6 SAEs on the quickstart store's activations (world, blocks.2.hook_resid_post) with
the quickstart's data budget, and save them in SAELens's own layout for `interp eval-saes`.

Run with the peers venv (it has sae-lens 6.54.12):
    .venv-peers/bin/python bench/eval_suite_saelens.py runs/quickstart/store/shard_00000.safetensors runs/eval-peers

It uses SAELens's own training SAE classes, loss and AuxK (its TrainStepInput forward pass) in a
plain Adam loop over the same rows, not SAELens's LanguageModelSAETrainingRunner (that one
harvests its own activations from a hub model).
"""
import json
import sys
import time
from pathlib import Path

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput
from safetensors.torch import load_file

torch.set_num_threads(1)
shard, out = Path(sys.argv[1]), Path(sys.argv[2])
x = load_file(str(shard))["act.blocks.2.hook_resid_post"].float()
HOOK, EPOCHS, BATCH, LR, DEAD_TOKENS = "blocks.2.hook_resid_post", 3, 512, 2e-3, 20_000  # the quickstart's budget
summary = {}
for name, cls, cfg_cls in (("saelens-topk", TopKTrainingSAE, TopKTrainingSAEConfig),
                           ("saelens-batchtopk", BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig)):
    torch.manual_seed(0)
    cfg = cfg_cls(d_in=256, d_sae=512, k=16)
    cfg.metadata.hook_name = HOOK
    cfg.metadata.model_name = "world"
    sae = cls(cfg)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))  # SAELens's "mean" b_dec init
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since = torch.zeros(512)
    t, step = time.time(), 0
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(x), BATCH):
            batch = x[perm[i:i + BATCH]]
            out_ = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients=sae.get_coefficients(),
                                                            dead_neuron_mask=since > DEAD_TOKENS,
                                                            n_training_steps=step, is_logging_step=False))
            opt.zero_grad()
            out_.loss.backward()
            opt.step()
            fired = (out_.feature_acts > 0).any(0)
            since = torch.where(fired, torch.zeros_like(since), since + len(batch))
            step += 1
    with torch.no_grad():
        z = sae.encode(x)
        fvu = float((sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        l0 = float((z > 0).sum(1).float().mean())
    sae.save_inference_model(out / name)
    summary[name] = {"steps": step, "seconds": round(time.time() - t, 1), "fvu_train": fvu, "l0_train": l0}
    print(name, summary[name], flush=True)
(out / "saelens_summary.json").write_text(json.dumps(summary, indent=1))
