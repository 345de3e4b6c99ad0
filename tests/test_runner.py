"""The one training driver: several Trainers over several streams end as each would alone."""
from __future__ import annotations

import pytest
import torch

import saes
from saes.errors import ConfigError
from saes.training.data import make_source
from saes.training.runner import Lane, Stream, record_origin, run


def _data(seed: int) -> torch.Tensor:
    return saes.synthetic.superposition(n_features=16, d=8, n_samples=1024, seed=seed).x


def test_two_streams_in_lockstep_give_the_weights_each_gets_alone():
    cfg = saes.TrainConfig(batch_size=128, total_tokens=128 * 6, lr=3e-3, log_every=2)
    alone = [saes.TopKSAE(8, 16, k=2), saes.TopKSAE(8, 16, k=2)]
    for sae, seed in zip(alone, (0, 1)):
        saes.train(sae, _data(seed), cfg, progress=False)
    together = [saes.TopKSAE(8, 16, k=2), saes.TopKSAE(8, 16, k=2)]
    streams = []
    for i, (sae, seed) in enumerate(zip(together, (0, 1))):
        source = make_source(_data(seed), 8, cfg.batch_size)
        lane = Lane(f"s{i}", sae, cfg, source.fingerprint(), origin={"hook_name": f"h{i}"})
        streams.append(Stream([lane], lambda start, source=source: source.iterate(cfg.batch_size, cfg.seed, skip=start),
                              sample_rows=cfg.init_rows))
    results = run(streams, progress=False)
    assert set(results) == {"s0", "s1"} and results["s1"].tokens == cfg.total_tokens
    for a, b in zip(alone, together):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert together[1].metadata["hook_name"] == "h1"


def test_keyed_stream_feeds_each_lane_its_part_and_a_short_stream_stops_early():
    cfg = saes.TrainConfig(batch_size=64, total_tokens=64 * 100, lr=3e-3)
    x = {"a": _data(0)[:64 * 5], "b": _data(1)[:64 * 5]}
    items = [{k: v[i : i + 64] for k, v in x.items()} for i in range(0, 64 * 5, 64)]
    lanes = [Lane(k, [saes.TopKSAE(8, 16, k=2)], cfg, {"kind": "test"}) for k in x]
    results = run([Stream(lanes, lambda start: iter(items[start:]), keyed=True, sample_rows=128)], progress=False)
    assert all(isinstance(r, list) and r[0].stopped_early and r[0].tokens == 64 * 5 for r in results.values())


def test_a_stream_without_keys_has_one_lane():
    cfg = saes.TrainConfig()
    lanes = [Lane(k, saes.TopKSAE(8, 16, k=2), cfg, {}) for k in "ab"]
    with pytest.raises(ConfigError, match="keyed"):
        Stream(lanes, lambda start: iter(()))


def test_record_origin_keeps_what_the_user_set_only_when_asked():
    sae = saes.TopKSAE(8, 16, k=2, metadata={"hook_name": "mine"})
    record_origin([sae], {"hook_name": "store", "model_name": "m"}, keep_set=True)
    assert sae.metadata["hook_name"] == "mine" and sae.metadata["model_name"] == "m"
    record_origin([sae], {"hook_name": "store"})
    assert sae.metadata["hook_name"] == "store"
