"""Streaming harvest: content, data sources, resume, settings mismatch, bounded memory, CLI.

Expected values are computed independently of interp.activations.tokens / interp.activations.harvest: the packing
rule is re-implemented here in a few lines and activations come from run_with_cache.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from interp.errors import HookNameError, InterpError, StoreError
from interp.activations.harvest import harvest
from interp.activations.store import MANIFEST, ActivationStore
from interp.model.tiny import tiny_model

WORDS = ("the a cat dog bird sat ran flew on under over mat tree sky red blue big small happy sad "
         "and then it was is saw ate sang loud quiet").split()
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
CTX = 16
# The module itself: `interp.activations.harvest` may also name the function once the package exports it.
harvest_mod = importlib.import_module("interp.activations.harvest")


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20))) for _ in range(n)]


DOCS = make_docs(30)


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


def reference_windows(model, docs: list[str], ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [seq, ctx], attention mask [seq, ctx]): BOS + ctx-1 stream tokens, EOS after each doc."""
    stream: list[int] = []
    for doc in docs:
        stream += model.tokenizer(doc, add_special_tokens=False)["input_ids"] + [model.eos_token_id]
    rows, masks = [], []
    for i in range(0, len(stream), ctx - 1):
        w = [model.bos_token_id] + stream[i : i + ctx - 1]
        masks.append([1] * len(w) + [0] * (ctx - len(w)))
        rows.append(w + [model.pad_token_id] * (ctx - len(w)))
    return torch.tensor(rows), torch.tensor(masks)


def reference_rows(model, tokens: torch.Tensor, mask: torch.Tensor, hook: str) -> torch.Tensor:
    """``[rows, d]`` activations at kept positions (not BOS, not padding), row-major."""
    _, cache = model.run_with_cache(tokens, names=[hook], attention_mask=mask)
    keep = mask.bool().clone()
    keep[:, 0] = False
    act = cache[hook]
    return act.reshape(*act.shape[:2], -1)[keep]


def file_digests(d: Path) -> dict[str, str]:
    # .lock records the last writer's pid and start time, not content.
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.name != ".lock"}


# ----------------------------------------------------------------------------- content


def test_round_trip_equals_run_with_cache(model, tmp_path: Path) -> None:
    store = harvest(model, DOCS, HOOKS, tmp_path / "s", context_length=CTX, batch_size=3, shard_tokens=40,
                    progress=False)
    tokens, mask = reference_windows(model, DOCS, CTX)
    n_expected = int(mask.sum()) - tokens.shape[0]  # every real token but the BOS of each window
    assert len(store) == n_expected and store.manifest.n_sequences == tokens.shape[0]
    assert int(mask[-1].sum()) < CTX  # the data ends in a padded window, which is covered too
    assert store.n_shards > 3 and all(s.rows <= 40 for s in store.manifest.shards)
    for hook in HOOKS:
        s = store.select(hook)
        expected = reference_rows(model, tokens, mask, hook)
        assert s.shape == tuple(model.hook_shape(hook)) and s.d == expected.shape[1]
        torch.testing.assert_close(s[:], expected, rtol=1e-5, atol=1e-6)
    # Any row's context is recoverable, and it is the window the model saw.
    for i in (0, 17, len(store) - 1):
        ctx = store.tokens_for(i)
        assert torch.equal(ctx.tokens, tokens[ctx.sequence])
        assert 1 <= ctx.position < int(mask[ctx.sequence].sum())
    # The manifest records what the issue asks for.
    m = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert m["model"] == model.name and m["dtype"] == "float32" and m["context_length"] == CTX
    assert [(h["name"], h["shape"], h["d"]) for h in m["hooks"]] == [
        (HOOKS[0], [32], 32), (HOOKS[1], [4, 8], 32)]
    assert m["n_tokens"] == n_expected and m["complete"] and m["source"]["kind"] == "text_list"
    for s in m["shards"]:
        p = tmp_path / "s" / s["file"]
        assert p.stat().st_size == s["bytes"] and hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"]
        assert s["seq_end"] > s["seq_start"]


def test_bfloat16_store_and_max_tokens(model, tmp_path: Path) -> None:
    store = harvest(model, DOCS, HOOKS[0], tmp_path / "s", max_tokens=50, context_length=CTX, batch_size=4,
                    dtype="bfloat16", progress=False)
    assert len(store) == 50 and store.dtype == torch.bfloat16 and store[:].dtype == torch.bfloat16
    tokens, mask = reference_windows(model, DOCS, CTX)
    expected = reference_rows(model, tokens, mask, HOOKS[0])[:50]
    torch.testing.assert_close(store[:].float(), expected, rtol=2e-2, atol=2e-2)


def test_keep_bos_and_no_prepend(model, tmp_path: Path) -> None:
    tokens, mask = reference_windows(model, DOCS, CTX)
    kept = harvest(model, DOCS, HOOKS[0], tmp_path / "a", context_length=CTX, exclude_bos=False, progress=False)
    assert len(kept) == int(mask.sum())
    assert kept.tokens_for(0).position == 0 and kept.tokens_for(0).token == model.bos_token_id
    raw = harvest(model, DOCS, HOOKS[0], tmp_path / "b", context_length=CTX, prepend_bos=False, progress=False)
    assert raw.tokens_for(0).token != model.bos_token_id and raw.manifest.prepend_bos is False
    assert len(raw) == int(mask.sum()) - tokens.shape[0]  # same text, no BOS tokens at all


def test_padding_excluded_by_mask_not_by_id(model, tmp_path: Path, monkeypatch) -> None:
    # GPT-2 pads with its EOS id; EOS separators inside windows are real tokens and must stay.
    monkeypatch.setattr(type(model), "pad_token_id", property(lambda self: self.eos_token_id))
    store = harvest(model, DOCS, HOOKS[0], tmp_path / "s", context_length=CTX, progress=False)
    tokens, mask = reference_windows(model, DOCS, CTX)
    assert len(store) == int(mask.sum()) - tokens.shape[0]
    stored_tokens = torch.tensor([store.tokens_for(i).token for i in range(len(store))])
    assert int((stored_tokens == model.eos_token_id).sum()) == len(DOCS)  # one separator per document
    last = store.tokens_for(len(store) - 1)
    assert last.tokens[last.position + 1 :].eq(model.eos_token_id).all()  # only padding follows


# ----------------------------------------------------------------------------- sources


def test_every_source_kind_gives_the_same_store(model, tmp_path: Path) -> None:
    import datasets

    txt = tmp_path / "docs.txt"
    txt.write_text("\n".join(DOCS) + "\n\n")  # a trailing blank line is not a document
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(DOCS)))
    stream: list[int] = []
    for doc in DOCS:
        stream += model.tokenizer(doc, add_special_tokens=False)["input_ids"] + [model.eos_token_id]
    sources = {
        "txt": (txt, {}),
        "jsonl": (jsonl, {"text_field": "body"}),
        "generator": ((d for d in DOCS), {}),
        "dataset": (datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}), {}),
        "iterable_dataset": (datasets.Dataset.from_dict({"text": DOCS}).to_iterable_dataset(), {}),
        "token_stream_1d": (torch.tensor(stream), {}),
    }
    ref = harvest(model, DOCS, HOOKS[0], tmp_path / "list", context_length=CTX, batch_size=4, progress=False)
    for name, (data, kw) in sources.items():
        s = harvest(model, data, HOOKS[0], tmp_path / name, context_length=CTX, batch_size=4, progress=False, **kw)
        assert len(s) == len(ref), name
        torch.testing.assert_close(s[:], ref[:], rtol=0, atol=0, msg=name)
        for i in (0, len(s) // 2, len(s) - 1):
            a, b = s.tokens_for(i), ref.tokens_for(i)
            assert (a.sequence, a.position) == (b.sequence, b.position) and torch.equal(a.tokens, b.tokens), name
    # 2-D token tensors are windows used as given; BOS at position 0 is recognised by id.
    tokens, mask = reference_windows(model, DOCS, CTX)
    full = tokens[mask.all(1)]
    s2 = harvest(model, full, HOOKS[0], tmp_path / "windows", batch_size=4, progress=False)
    assert s2.context_length == CTX and len(s2) == full.numel() - full.shape[0]
    torch.testing.assert_close(s2[:], ref[: len(s2)], rtol=1e-5, atol=1e-6)


def test_jsonl_missing_field_is_a_clear_error(model, tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"body": "the cat"}\n')
    with pytest.raises(InterpError, match=r"d.jsonl, line 1: no 'text' field.*text_field"):
        harvest(model, p, HOOKS[0], tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # checked before anything is written
    with pytest.raises(InterpError, match=r"no 'text' column"):
        import datasets

        harvest(model, datasets.Dataset.from_dict({"body": ["x"]}), HOOKS[0], tmp_path / "s", progress=False)


def test_empty_data_and_data_running_out(model, tmp_path: Path) -> None:
    with pytest.raises(InterpError, match="produced no tokens"):
        harvest(model, ["", "   "], HOOKS[0], tmp_path / "s", progress=False)
    # Nothing was stored, so the same directory takes a new harvest with other settings.
    with pytest.warns(UserWarning, match="ran out after"):
        store = harvest(model, DOCS[:3], HOOKS[0], tmp_path / "s", max_tokens=10**6, context_length=8,
                        progress=False)
    tokens, mask = reference_windows(model, DOCS[:3], 8)
    assert len(store) == int(mask.sum()) - tokens.shape[0] and store.manifest.complete


def test_unknown_hook_fails_before_writing(model, tmp_path: Path) -> None:
    with pytest.raises(HookNameError, match="blocks.0.hook_resid_post"):
        harvest(model, DOCS, "blocks.0.hook_resid_pots", tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("where", ["forward", "after_shard_rename"])
def test_interrupted_harvest_resumes_to_identical_content(model, tmp_path: Path, monkeypatch, where: str) -> None:
    kw = dict(context_length=CTX, batch_size=3, shard_tokens=35, max_tokens=300, progress=False)
    full = harvest(model, DOCS, HOOKS, tmp_path / "full", **kw)
    assert full.n_shards >= 6 and len(full) == 300

    calls = {"forward": 0, "shards": 0}
    real_forward, real_commit = model.run_with_cache, harvest_mod.commit_shard

    def counting_forward(*a, **k):
        calls["forward"] += 1
        if where == "forward" and calls["forward"] == 7:
            raise Interrupt
        return real_forward(*a, **k)

    def crashing_commit(directory, index, tmp):
        out = real_commit(directory, index, tmp)
        calls["shards"] += 1
        if where == "after_shard_rename" and calls["shards"] == 3:
            # Crash after the shard file is in place but before the manifest lists it, and
            # leave a half-written temporary file as a killed writer would.
            (directory / f".shard_{index + 1:05d}.safetensors.999.tmp").write_bytes(b"partial")
            raise Interrupt
        return out

    monkeypatch.setattr(model, "run_with_cache", counting_forward)
    monkeypatch.setattr(harvest_mod, "commit_shard", crashing_commit)
    with pytest.raises(Interrupt):
        harvest(model, DOCS, HOOKS, tmp_path / "resumed", **kw)
    m = json.loads((tmp_path / "resumed" / MANIFEST).read_text())
    assert not m["complete"] and 0 < len(m["shards"]) < full.n_shards
    interrupted_calls = calls["forward"]

    calls["forward"] = calls["shards"] = -10**6  # no more interruptions
    store = harvest(model, DOCS, HOOKS, tmp_path / "resumed", **kw)
    resumed_calls = calls["forward"] + 10**6
    n_batches = -(-full.manifest.n_sequences // 3)
    assert resumed_calls < n_batches  # complete shards were not recomputed
    assert interrupted_calls + resumed_calls <= n_batches + 2  # at most one batch recomputed
    assert file_digests(tmp_path / "resumed") == file_digests(tmp_path / "full")  # bit-identical store
    assert len(store) == 300 and torch.equal(store[:], full[:])


def test_rerun_of_a_complete_harvest_does_nothing(model, tmp_path: Path, monkeypatch) -> None:
    kw = dict(context_length=CTX, max_tokens=40, progress=False)
    harvest(model, DOCS, HOOKS[0], tmp_path / "s", **kw)
    before = file_digests(tmp_path / "s")
    monkeypatch.setattr(model, "run_with_cache", lambda *a, **k: pytest.fail("recomputed a finished store"))
    assert len(harvest(model, DOCS, HOOKS[0], tmp_path / "s", **kw)) == 40
    assert file_digests(tmp_path / "s") == before


def test_resume_with_different_settings_is_refused(model, tmp_path: Path) -> None:
    out = tmp_path / "s"
    harvest(model, DOCS, HOOKS[0], out, context_length=CTX, max_tokens=40, progress=False)
    with pytest.raises(StoreError, match=r"context_length: stored 16, requested 8(.|\n)*delete"):
        harvest(model, DOCS, HOOKS[0], out, context_length=8, max_tokens=40, progress=False)
    with pytest.raises(StoreError, match=r"source"):
        harvest(model, make_docs(30, seed=1), HOOKS[0], out, context_length=CTX, max_tokens=40, progress=False)
    with pytest.raises(StoreError, match=r"hooks(.|\n)*dtype: stored 'float32', requested 'float16'"):
        harvest(model, DOCS, HOOKS, out, context_length=CTX, max_tokens=40, dtype="float16", progress=False)
    with pytest.raises(StoreError, match=r"model: stored 'tiny-gpt2-seed0', requested 'tiny-gpt2-seed1'"):
        harvest(tiny_model("gpt2", seed=1), DOCS, HOOKS[0], out, context_length=CTX, max_tokens=40, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        harvest(model, DOCS, HOOKS[0], tmp_path / "other", progress=False)


def test_store_refuses_another_model(model, tmp_path: Path) -> None:
    harvest(model, DOCS, HOOKS[0], tmp_path / "s", context_length=CTX, max_tokens=20, progress=False)
    assert len(ActivationStore.open(tmp_path / "s", model=model)) == 20
    with pytest.raises(StoreError, match="harvested from model 'tiny-gpt2-seed0', not 'tiny-llama-seed0'"):
        ActivationStore.open(tmp_path / "s", model=tiny_model("llama"))


# ----------------------------------------------------------------------------- memory


def _objects() -> list:
    with warnings.catch_warnings():  # isinstance() on some lazy torch modules warns
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


def _live_tensor_bytes(ignore: set[int]) -> int:
    """Bytes of every live tensor storage not in ``ignore`` (counted once per storage)."""
    seen, total = set(), 0
    for obj in _objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in ignore and ptr not in seen:
                seen.add(ptr)
                total += storage.nbytes()
    return total


def _peak_during_harvest(model, monkeypatch, out: Path, max_tokens: int, docs) -> tuple[int, int]:
    baseline = {o.untyped_storage().data_ptr() for o in _objects() if isinstance(o, torch.Tensor)}
    peak = {"bytes": 0, "calls": 0}
    real = model.run_with_cache

    def measured(*a, **k):
        result = real(*a, **k)
        # Right after a forward pass: the shard buffer and this batch's cache are both alive.
        peak["bytes"] = max(peak["bytes"], _live_tensor_bytes(baseline))
        peak["calls"] += 1
        return result

    monkeypatch.setattr(model, "run_with_cache", measured)
    harvest(model, docs, HOOKS, out, max_tokens=max_tokens, context_length=CTX, batch_size=4, shard_tokens=60,
            progress=False)
    monkeypatch.undo()
    return peak["bytes"], peak["calls"]


def test_memory_is_one_shard_plus_one_batch_whatever_the_total(model, tmp_path: Path, monkeypatch) -> None:
    docs = make_docs(120, seed=3)
    small, small_calls = _peak_during_harvest(model, monkeypatch, tmp_path / "a", 150, docs)
    large, large_calls = _peak_during_harvest(model, monkeypatch, tmp_path / "b", 1200, docs)
    assert large_calls >= 4 * small_calls  # the larger run really did much more work
    d_total = 32 + 32
    shard = 60 * d_total * 4 + 60 * (8 + 4) + 60 * CTX * 4  # activations, seq/pos, window tokens
    batch = 4 * CTX * d_total * 4 + 4 * CTX * 8 * 4  # cached activations + token/mask tensors
    print(f"peak live tensor bytes: {small} (150 tokens), {large} (1200 tokens); bound {shard + batch}")
    assert large <= shard + batch + 64 * 1024, (large, shard, batch)  # small slack for bookkeeping
    assert large <= small * 1.1 + 4096, (small, large)  # independent of the total


def test_data_is_streamed_not_materialised(model, tmp_path: Path) -> None:
    pulled = {"n": 0}

    def endless() -> Iterator[str]:
        rng = random.Random(0)
        while True:
            pulled["n"] += 1
            yield " ".join(rng.choice(WORDS) for _ in range(10))

    store = harvest(model, endless(), HOOKS[0], tmp_path / "s", max_tokens=200, context_length=CTX, progress=False)
    assert len(store) == 200
    assert pulled["n"] <= 200 // 10 + 2 * 256  # what was needed plus at most a tokenizer chunk or two


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved_model(tiny_gpt2_dir):
    return tiny_gpt2_dir


def cli(argv: list[str]) -> int:
    from interp.cli.harvest import register

    parser = argparse.ArgumentParser(prog="interp")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_help_shows_an_example(capsys) -> None:
    for cmd in ("harvest", "hooks"):
        with pytest.raises(SystemExit):
            cli([cmd, "--help"])
        out = capsys.readouterr().out
        assert "example" in out and f"interp {cmd} --model" in out


def test_cli_hooks_and_harvest(saved_model: Path, tmp_path: Path, capsys) -> None:
    assert cli(["hooks", "--model", str(saved_model), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.hook_resid_post" in out and "(32,)" in out and "blocks.1.attn.hook_z" in out and "(4, 8)" in out
    data = tmp_path / "d.txt"
    data.write_text("\n".join(DOCS))
    argv = ["harvest", "--model", str(saved_model), "--hook", HOOKS[0], "--hook", HOOKS[1], "--data", str(data),
            "--tokens", "64", "--out", str(tmp_path / "s"), "--context-length", "8", "--batch-size", "2",
            "--dtype", "bfloat16", "--device", "cpu", "--no-progress"]
    assert cli(argv) == 0
    assert "stored 64 tokens x 2 hook(s)" in capsys.readouterr().out
    store = ActivationStore.open(tmp_path / "s", hook=HOOKS[1])
    assert len(store) == 64 and store.shape == (4, 8) and store.dtype == torch.bfloat16
    assert store.manifest.model == str(saved_model) and store.manifest.source["kind"] == "text_file"
