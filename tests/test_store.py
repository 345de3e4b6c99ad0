"""ActivationStore reading: indexing, shuffled batches, integrity checks, clear errors.

Most tests build a synthetic store whose row ``i`` is filled with the value ``i`` so every
claim (which row, how many times) can be checked exactly, independently of any model.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interp.errors import StoreError
from interp.activations.store import (
    MANIFEST,
    ActivationStore,
    HookInfo,
    Manifest,
    ShardInfo,
    act_key,
    atomic_write_text,
    write_shard,
)

CTX = 4
D = 3


def make_store(directory: Path, shard_rows: list[int], hooks=("h.a", "h.b"), complete=True, model="m") -> Path:
    """A store whose hook ``h.a`` row i is ``[i, i, i]`` and ``h.b`` row i is ``-i``.

    Each window contributes CTX rows except that a shard's row count need not be a multiple
    of CTX: the last window of a shard is cut short (like a max_tokens cut).
    """
    directory.mkdir(parents=True, exist_ok=True)
    infos = [HookInfo(h, (D,)) for h in hooks]
    m = Manifest(model=model, hooks=infos, dtype="float32", context_length=CTX, prepend_bos=False,
                 exclude_bos=False, source={"kind": "test"}, max_tokens=None, shard_tokens=max(shard_rows),
                 complete=complete)
    row, seq = 0, 0
    for k, rows in enumerate(shard_rows):
        n_seq = -(-rows // CTX)
        idx = torch.arange(row, row + rows)
        local = torch.arange(rows)
        tensors = {
            act_key(hooks[0]): idx.float()[:, None].expand(rows, D).contiguous(),
            "tokens": (torch.arange(seq, seq + n_seq)[:, None] * 10 + torch.arange(CTX)).to(torch.int32),
            "seq": seq + local // CTX,
            "pos": (local % CTX).to(torch.int32),
        }
        for h in hooks[1:]:
            tensors[act_key(h)] = -tensors[act_key(hooks[0])]
        name, size, digest = write_shard(directory, k, tensors)
        m.shards.append(ShardInfo(name, rows, seq, seq + n_seq, size, digest))
        row += rows
        seq += n_seq
    m.n_tokens, m.n_sequences = row, seq
    atomic_write_text(directory / MANIFEST, m.to_json())
    return directory


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return make_store(tmp_path / "store", [8, 12, 5, 8, 7])


def all_rows_from_files(directory: Path, hook: str) -> torch.Tensor:
    """Reference reading that bypasses ActivationStore entirely."""
    m = json.loads((directory / MANIFEST).read_text())
    return torch.cat([load_file(str(directory / s["file"]))[act_key(hook)] for s in m["shards"]])


# ----------------------------------------------------------------------------- access


def test_len_shape_and_hook_selection(store_dir: Path) -> None:
    s = ActivationStore.open(store_dir, hook="h.a")
    assert len(s) == 40 and s.d == D and s.shape == (D,) and s.hook == "h.a"
    assert s.hooks == ["h.a", "h.b"] and s.n_shards == 5 and s.dtype == torch.float32
    b = s.select("h.b")
    assert b.hook == "h.b" and torch.equal(b[7], -s[7])


def test_indexing_matches_files(store_dir: Path) -> None:
    s = ActivationStore.open(store_dir, hook="h.a")
    ref = all_rows_from_files(store_dir, "h.a")
    assert torch.equal(ref[:, 0], torch.arange(40).float())  # the fixture is what we think
    assert torch.equal(s[0], ref[0]) and torch.equal(s[39], ref[39]) and torch.equal(s[-1], ref[39])
    assert torch.equal(s[6:27], ref[6:27])  # spans four shards
    assert torch.equal(s[:], ref) and s[30:30].shape == (0, D)
    assert torch.equal(s[3:30:4], ref[3:30:4])
    idx = torch.tensor([33, 0, 19, 19, 8, -2, 27])
    assert torch.equal(s[idx], ref[idx])
    assert torch.equal(s[[5, 1]], ref[[5, 1]])
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[2, 20, 38]] = True
    assert torch.equal(s[mask], ref[mask])
    with pytest.raises(IndexError):
        s[40]
    with pytest.raises(IndexError):
        s[torch.tensor([1, 40])]


def test_tokens_for_and_locate(store_dir: Path) -> None:
    s = ActivationStore.open(store_dir, hook="h.a")
    # Shard 1 (rows 8..19) starts at window 2: row 13 is window 3, position 1.
    ctx = s.tokens_for(13)
    assert (ctx.sequence, ctx.position) == (3, 1)
    assert ctx.tokens.tolist() == [30, 31, 32, 33] and ctx.prefix.tolist() == [30, 31] and ctx.token == 31
    seq, pos = s.locate([13, 0, 39])
    assert seq.tolist() == [3, 0, s.tokens_for(39).sequence] and pos.tolist() == [1, 0, s.tokens_for(39).position]


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("shuffle,buffer_shards,batch", [(True, 1, 3), (True, 2, 7), (True, 10, 4), (False, 2, 6)])
def test_batches_cover_every_row_exactly_once(store_dir: Path, shuffle: bool, buffer_shards: int, batch: int) -> None:
    s = ActivationStore.open(store_dir, hook="h.a")
    got = list(s.batches(batch, shuffle=shuffle, seed=3, buffer_shards=buffer_shards))
    assert all(b.shape == (batch, D) for b in got[:-1]) and 1 <= got[-1].shape[0] <= batch
    ids = torch.cat(got)[:, 0].long()
    assert sorted(ids.tolist()) == list(range(40))  # every row, exactly once
    if shuffle:
        assert ids.tolist() != list(range(40))
    else:
        assert ids.tolist() == list(range(40))


def test_batches_seeded_and_mixed_across_shards(store_dir: Path) -> None:
    s = ActivationStore.open(store_dir, hook="h.a")
    a = torch.cat(list(s.batches(8, seed=1, buffer_shards=2)))
    b = torch.cat(list(s.batches(8, seed=1, buffer_shards=2)))
    c = torch.cat(list(s.batches(8, seed=2, buffer_shards=2)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    first = next(iter(s.batches(8, seed=1, buffer_shards=2)))[:, 0].long()
    shard_of = torch.bucketize(first, torch.tensor([8, 20, 25, 33, 40]), right=True)
    assert shard_of.unique().numel() >= 2  # one batch mixes rows of several shards


def test_batches_drop_last_device_dtype(store_dir: Path) -> None:
    s = ActivationStore.open(store_dir, hook="h.a")
    got = list(s.batches(16, seed=0, drop_last=True, dtype="bfloat16", device="cpu"))
    assert len(got) == 2 and all(b.shape == (16, D) and b.dtype == torch.bfloat16 for b in got)


# ----------------------------------------------------------------------------- integrity


def test_truncated_shard_detected_at_open(store_dir: Path) -> None:
    path = store_dir / "shard_00002.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(StoreError, match="shard_00002.safetensors.*truncated"):
        ActivationStore.open(store_dir, hook="h.a")


def test_missing_shard_detected_at_open(store_dir: Path) -> None:
    (store_dir / "shard_00001.safetensors").unlink()
    with pytest.raises(StoreError, match="shard_00001.safetensors.*missing"):
        ActivationStore.open(store_dir, hook="h.a")


def test_corrupted_shard_detected_when_read(store_dir: Path) -> None:
    path = store_dir / "shard_00003.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # same size, one activation value changed
    path.write_bytes(bytes(data))
    s = ActivationStore.open(store_dir, hook="h.a")  # sizes match: opening succeeds
    assert s[0][0] == 0 and s[35][0] == 35  # shards 0 and 4 are intact and readable
    with pytest.raises(StoreError, match="shard_00003.safetensors.*corrupted"):
        s[26]
    with pytest.raises(StoreError, match="shard_00003.safetensors"):
        list(s.batches(4, shuffle=False))
    with pytest.raises(StoreError, match="shard_00003.safetensors"):
        ActivationStore.open(store_dir, hook="h.a").verify()


# ----------------------------------------------------------------------------- errors


class FakeModel:
    def __init__(self, name: str, shapes: dict[str, tuple[int, ...]]):
        self.name, self._shapes = name, shapes

    def hook_names(self) -> list[str]:
        return list(self._shapes)

    def hook_shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]


def test_model_and_hook_mismatch(store_dir: Path) -> None:
    ok = FakeModel("m", {"h.a": (D,), "h.b": (D,)})
    assert ActivationStore.open(store_dir, hook="h.a", model=ok).hook == "h.a"
    with pytest.raises(StoreError, match="harvested from model 'm', not 'other'"):
        ActivationStore.open(store_dir, hook="h.a", model=FakeModel("other", {"h.a": (D,)}))
    with pytest.raises(StoreError, match="per-token shape"):
        ActivationStore.open(store_dir, hook="h.a", model=FakeModel("m", {"h.a": (D + 1,)}))
    with pytest.raises(StoreError, match="no hook 'h.a'"):
        ActivationStore.open(store_dir, hook="h.a", model=FakeModel("m", {"h.b": (D,)}))


def test_hook_ambiguous_or_unknown(store_dir: Path) -> None:
    with pytest.raises(StoreError, match=r"several hooks.*\['h.a', 'h.b'\]"):
        ActivationStore.open(store_dir)
    with pytest.raises(StoreError, match=r"no hook 'h.c'.*\['h.a', 'h.b'\]"):
        ActivationStore.open(store_dir, hook="h.c")
    single = make_store(store_dir.parent / "single", [4], hooks=("only",))
    assert ActivationStore.open(single).hook == "only"


def test_missing_empty_and_foreign_directories(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="no manifest.json"):
        ActivationStore.open(tmp_path / "plain")
    empty = make_store(tmp_path / "empty", [4])
    m = Manifest.read(empty)
    m.shards, m.n_tokens = [], 0
    atomic_write_text(empty / MANIFEST, m.to_json())
    with pytest.raises(StoreError, match="empty"):
        ActivationStore.open(empty)
    (empty / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is not valid JSON"):
        ActivationStore.open(empty)
    (empty / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(StoreError, match="not an activation-store manifest"):
        ActivationStore.open(empty)


def test_unfinished_store_opens_with_warning(tmp_path: Path) -> None:
    d = make_store(tmp_path / "s", [4, 4], hooks=("x",), complete=False)
    with pytest.warns(UserWarning, match="unfinished harvest"):
        s = ActivationStore.open(d)
    assert len(s) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ActivationStore.open(make_store(tmp_path / "t", [4], hooks=("x",)))


def test_no_pickle_anywhere(store_dir: Path) -> None:
    # Every file of a store is JSON or safetensors (whose 8-byte header size precedes JSON).
    for p in store_dir.iterdir():
        raw = p.read_bytes()
        if p.suffix == ".json":
            json.loads(raw)
        else:
            assert p.suffix == ".safetensors"
            n = int.from_bytes(raw[:8], "little")
            json.loads(raw[8 : 8 + n])


def test_an_sae_trained_on_a_store_records_its_hook_and_model(store_dir: Path) -> None:
    import saes

    store = ActivationStore.open(store_dir, hook="h.b")
    cfg = saes.TrainConfig(batch_size=8, total_tokens=16, init_rows=8)
    sae = saes.TopKSAE(D, 6, k=2)
    saes.train(sae, store, cfg, progress=False)
    assert sae.metadata["hook_name"] == "h.b" and sae.metadata["model_name"] == "m"
    # What the user set is kept.
    mine = saes.TopKSAE(D, 6, k=2, metadata={"hook_name": "blocks.0.hook_resid_post"})
    saes.train(mine, store, cfg, progress=False)
    assert mine.metadata["hook_name"] == "blocks.0.hook_resid_post" and mine.metadata["model_name"] == "m"
