"""Every bad input gets a ValueError subclass whose message names the problem and the fix."""
from __future__ import annotations

import pytest
import torch

import saes

torch.set_num_threads(1)
CFG = saes.TrainConfig(batch_size=32, total_tokens=32 * 4, lr=1e-3)


class FakeStore:
    def __init__(self, x: torch.Tensor):
        self.x, self.directory, self.hook = x, "/stores/run1", "blocks.2.hook_resid_post"

    @property
    def d(self) -> int:
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size, shuffle=True, seed=0, drop_last=False, **_):
        for a in range(0, len(self), batch_size):
            yield self.x[a : a + batch_size]


def test_all_errors_are_value_errors():
    for cls in (saes.ConfigError, saes.DataError, saes.ShapeMismatchError, saes.NonFiniteError,
                saes.EmptyDataError, saes.CheckpointError, saes.FormatError):
        assert issubclass(cls, saes.SAEError) and issubclass(cls, ValueError)


@pytest.mark.parametrize(
    "build",
    [
        lambda: saes.TopKSAE(16, 32, k=32),
        lambda: saes.BatchTopKSAE(16, 32, k=40),
        lambda: saes.MatryoshkaSAE(16, [8, 24], k=32),
        lambda: saes.MPSAE(16, 32, k=32),
    ],
)
def test_k_at_least_d_sae(build):
    with pytest.raises(saes.ConfigError) as err:
        build()
    msg = str(err.value)
    assert "must be smaller than d_sae=32" in msg and "lower k or widen the SAE" in msg


def test_group_sizes_not_summing_to_d_sae():
    with pytest.raises(saes.ConfigError) as err:
        saes.MatryoshkaSAE(16, [8, 16, 32], k=4, d_sae=64)
    msg = str(err.value)
    assert "[8, 16, 32] sum to 56 but d_sae=64" in msg and "group_sizes=[4, 4, 8, 16, 32]" in msg
    with pytest.raises(saes.ConfigError, match="positive integers"):
        saes.MatryoshkaSAE(16, [8, 0, 8], k=4)


def test_data_with_the_wrong_width_names_both_shapes():
    sae = saes.TopKSAE(16, 32, k=4)
    with pytest.raises(saes.ShapeMismatchError) as err:
        saes.train(sae, torch.randn(100, 24), CFG, progress=False)
    assert "width 24 (shape [100, 24])" in str(err.value) and "d_in=16" in str(err.value)

    with pytest.raises(saes.ShapeMismatchError) as err:
        saes.train(sae, FakeStore(torch.randn(100, 24)), CFG, progress=False)
    msg = str(err.value)
    assert "/stores/run1 holds hook blocks.2.hook_resid_post with rows of width d=24" in msg
    assert "[batch, 16]" in msg

    with pytest.raises(saes.ShapeMismatchError) as err:
        saes.train(sae, [torch.randn(32, 16), torch.randn(32, 20)], CFG, progress=False)
    assert "batch 1 has shape [32, 20]" in str(err.value) and "expects [batch, 16]" in str(err.value)

    with pytest.raises(saes.ShapeMismatchError, match=r"got shape \[3, 8\]"):
        sae.encode(torch.randn(3, 8))


def test_nan_and_inf_say_where():
    sae = saes.TopKSAE(16, 32, k=4)
    x = torch.randn(200, 16)
    x[137, 5] = float("nan")
    with pytest.raises(saes.NonFiniteError) as err:
        saes.train(sae, x, CFG, progress=False)
    assert "NaN in row 137 (column 5) of the training tensor" in str(err.value)

    batches = [torch.randn(32, 16) for _ in range(6)]
    batches[4][9, 2] = float("inf")
    with pytest.raises(saes.NonFiniteError) as err:
        saes.train(sae, batches, saes.TrainConfig(batch_size=32, total_tokens=32 * 6, init_rows=32), progress=False)
    msg = str(err.value)
    assert "inf in batch 4" in msg and "training step 5" in msg and "row 9 of that batch, column 2" in msg


def test_empty_data():
    sae = saes.TopKSAE(16, 32, k=4)
    with pytest.raises(saes.EmptyDataError, match="empty"):
        saes.train(sae, torch.empty(0, 16), CFG, progress=False)
    with pytest.raises(saes.EmptyDataError, match="/stores/run1 is empty"):
        saes.train(sae, FakeStore(torch.empty(0, 16)), CFG, progress=False)
    with pytest.raises(saes.EmptyDataError, match="yielded no batches"):
        saes.train(sae, iter([]), CFG, progress=False)
    with pytest.raises(saes.EmptyDataError, match="fewer than batch_size=32"):
        saes.train(sae, torch.randn(10, 16), CFG, progress=False)


def test_checkpoint_from_another_configuration(tmp_path):
    x = torch.randn(256, 16)
    saes.train(saes.TopKSAE(16, 32, k=4), x, CFG, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(saes.CheckpointError) as err:
        saes.train(saes.MPSAE(16, 32, k=4), x, CFG, checkpoint_dir=tmp_path, resume=True, progress=False)
    msg = str(err.value)
    assert "another configuration" in msg and "SAE 0 architecture: checkpoint topk, now mp" in msg
    assert "start fresh in an empty directory" in msg


def test_other_bad_settings():
    with pytest.raises(saes.ConfigError, match="inference-only"):
        frozen = type("InferenceOnly", (saes.ReLUSAE,), {"trainable": False})
        saes.train(frozen(16, 32), torch.randn(64, 16), CFG, progress=False)
    with pytest.raises(saes.ConfigError, match="same d_in"):
        saes.train([saes.TopKSAE(16, 32, k=4), saes.TopKSAE(8, 32, k=4)], torch.randn(64, 16), CFG, progress=False)
    with pytest.raises(saes.ConfigError, match="overlap"):
        saes.TrainConfig(warmup_frac=0.6, decay_frac=0.6)
    with pytest.raises(saes.ConfigError, match="b_dec_init"):
        saes.TrainConfig(b_dec_init="median")
    with pytest.raises(saes.DataError, match="cannot train on a int"):
        saes.train(saes.TopKSAE(16, 32, k=4), 42, CFG, progress=False)
