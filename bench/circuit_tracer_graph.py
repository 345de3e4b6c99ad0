"""circuit-tracer's attribution graph of one prompt on a local HF GPT-2-style model, offline.

Runs under a Python that has circuit-tracer 0.5.0 and its pins (transformers <= 4.57.3,
TransformerLens 2.x, huggingface-hub < 1.0), not this project's environment: bench/circuits.py
calls it in a subprocess. circuit-tracer builds its replacement model from a hub name; here
the HookedTransformer is built from the local model's config and weights instead
(``convert_gpt2_weights``, no LayerNorm folding, as circuit-tracer loads models), so nothing
is downloaded.

    python bench/circuit_tracer_graph.py --model DIR --transcoders CT_SET_DIR --tokens 1,10,... --out OUT_DIR

Writes OUT_DIR/graph.safetensors (adjacency_matrix, active_features, selected_features,
activation_values, logit_tokens, logit_probabilities) and OUT_DIR/graph.json (seconds, sizes).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def _tokenizer_dir(model_dir: Path) -> Path:
    """A copy of the tokenizer files whose config names a class transformers 4 knows
    (transformers 5 writes ``TokenizersBackend``); TransformerLens reloads the tokenizer from
    this path, so it must be a directory, not an object."""
    import shutil
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="tokenizer-"))
    shutil.copy(model_dir / "tokenizer.json", where / "tokenizer.json")
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (where / "tokenizer_config.json").write_text(json.dumps(config))
    return where


def build(model_dir: Path, set_dir: Path):
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    hf = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn=c.activation_function,
        normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", model_name=model_dir.name, device="cpu", dtype=torch.float32,
        default_prepend_bos=False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(_tokenizer_dir(model_dir))
    model = TransformerLensReplacementModel(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    config = {k.strip(): v.strip().strip('"') for k, v in
              (line.split(":", 1) for line in (set_dir / "config.yaml").read_text().splitlines() if ":" in line)}
    paths = {i: str(set_dir / f"layer_{i}.safetensors") for i in range(c.n_layer)}
    transcoders = load_transcoder_set(paths, config.get("scan", set_dir.name), config["feature_input_hook"],
                                      config["feature_output_hook"], device=torch.device("cpu"),
                                      dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    model._configure_replacement_model(transcoders)
    return model


def main() -> None:
    from circuit_tracer import attribute
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--transcoders", required=True, type=Path)
    p.add_argument("--tokens", required=True, help="comma-separated token ids, BOS first")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--max-feature-nodes", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = build(args.model, args.transcoders)
    built = time.perf_counter()
    tokens = torch.tensor([int(t) for t in args.tokens.split(",")])
    graph = attribute(tokens, model, max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                      batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes)
    done = time.perf_counter()
    graph = attribute(tokens, model, max_n_logits=args.max_n_logits, desired_logit_prob=args.desired_logit_prob,
                      batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes)
    again = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"adjacency_matrix": graph.adjacency_matrix.contiguous(),
               "active_features": graph.active_features.contiguous(),
               "selected_features": graph.selected_features.contiguous(),
               "activation_values": graph.activation_values.contiguous(),
               "logit_tokens": graph.logit_token_ids.contiguous(),
               "logit_probabilities": graph.logit_probabilities.contiguous()}, str(args.out / "graph.safetensors"))
    (args.out / "graph.json").write_text(json.dumps({
        "build_seconds": built - started, "attribute_seconds_first": done - built, "attribute_seconds": again - done,
        "n_nodes": int(graph.adjacency_matrix.shape[0]), "n_features": int(graph.active_features.shape[0]),
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
