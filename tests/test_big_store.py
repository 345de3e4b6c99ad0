"""A store several times larger than the memory a process may use streams through training
and a dashboard-like pass (per-latent max / mean / frequency over every row).

The child process caps its address space with ``RLIMIT_AS`` at what the interpreter, torch
and a two-step warm-up of the same run already hold, plus ``CAP`` bytes: any attempt to hold
more fails with MemoryError.
The store on disk is ``RATIO`` times ``CAP``. ``BIG_STORE_MB`` makes it larger (the slow
variant uses 1 GiB).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import saes
from interp.activations.store import MANIFEST, act_key
from reliability import record, run
from store_util import HOOK, write_store_chunks

D = 64
SHARD_ROWS = 8192  # 2 MiB shards of float32
MiB = 1 << 20

CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
import saes
from interp.activations.store import ActivationStore

store_dir, out, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

def rss_peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

# Warm-up: two steps of the same run and a little of the same pass, so that every module,
# library and one-time buffer the run needs exists before the cap is set (what is measured
# is what grows with the data, not torch's start-up).
warm = ActivationStore.open(store_dir)
saes.train(saes.TopKSAE(warm.d, 128, k=8), warm, saes.TrainConfig(batch_size=4096, total_tokens=2 * 4096, lr=1e-3,
           init_rows=4096), progress=False)
saes.stats.latent_stats(saes.TopKSAE(warm.d, 128, k=8), [warm[:4096], warm[4096:8192]])
del warm
import gc; gc.collect()

base_vm, base_rss = vm_bytes(), rss_peak()
resource.setrlimit(resource.RLIMIT_AS, (base_vm + cap, resource.RLIM_INFINITY))
headroom = base_vm + cap - vm_bytes()
blob = None
try:
    blob = bytearray(headroom + (1 << 20))  # the cap is real: a MiB more than the headroom must fail
    capped = False
except MemoryError:
    capped = True
blob = None

store = ActivationStore.open(store_dir)
sae = saes.TopKSAE(store.d, 128, k=8)
cfg = saes.TrainConfig(batch_size=4096, total_tokens=len(store), lr=2e-3, init_rows=4096, log_every=50)
result = saes.train(sae, store, cfg, progress=False)
after_train = rss_peak()
stats = saes.stats.latent_stats(sae, ActivationStore.open(store_dir).batches(4096, shuffle=False))
sae.save(out)
from safetensors.torch import save_file
save_file({"max": stats.max, "sum": stats.sum, "count": stats.count}, out + "/stats.safetensors")
print(json.dumps({"capped": capped, "headroom": headroom, "base_vm": base_vm, "base_rss": base_rss, "peak_rss": rss_peak(),
                  "peak_rss_after_training": after_train, "trained_tokens": result.tokens,
                  "stats_tokens": stats.tokens, "fvu": result.metrics["fvu"]}))
"""


def _make_store(directory: Path, n_shards: int) -> Path:
    basis = torch.randn(256, D, generator=torch.Generator().manual_seed(999))

    def chunk(k: int) -> torch.Tensor:
        # Each row mixes 5 of 256 directions: structure for the SAE to find, cheap to make.
        g = torch.Generator().manual_seed(k)
        idx = torch.randint(0, 256, (SHARD_ROWS, 5), generator=g)
        coef = torch.rand(SHARD_ROWS, 5, 1, generator=g)
        return (coef * basis[idx]).sum(1)

    return write_store_chunks(directory, (chunk(k) for k in range(n_shards)), D, HOOK)


def _reference_stats(store: Path, sae: saes.SAE) -> saes.stats.LatentStats:
    """Per shard file, read with safetensors directly (no ActivationStore)."""
    files = [s["file"] for s in json.loads((store / MANIFEST).read_text())["shards"]]
    return saes.stats.latent_stats(sae, (load_file(str(store / f))[act_key(HOOK)] for f in files))


def _check(tmp_path: Path, cap_mb: int, ratio: int, name: str) -> None:
    cap = cap_mb * MiB
    n_shards = ratio * cap // (SHARD_ROWS * D * 4)
    store = _make_store(tmp_path / "store", n_shards)
    store_bytes = sum(p.stat().st_size for p in store.iterdir())
    assert store_bytes >= ratio * cap
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # glibc otherwise raises its mmap threshold after large frees and serves later buffers from
    # a heap that keeps freed address space, and gives the store's reader thread an arena with
    # 64 MiB of reserved address space: a fixed threshold and one arena make address space
    # track live memory, which is what the cap is meant to bound.
    proc = run(script, str(store), str(tmp_path / "sae"), str(cap), timeout=900, MALLOC_MMAP_THRESHOLD_="262144",
               MALLOC_ARENA_MAX="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = n_shards * SHARD_ROWS
    assert out["capped"] and out["headroom"] <= cap, ("the address-space cap did not hold", out)
    assert out["trained_tokens"] == rows // 4096 * 4096 and out["stats_tokens"] == rows
    grown = out["peak_rss"] - out["base_rss"]
    print(f"store {store_bytes / MiB:.0f} MiB, cap {cap_mb} MiB above a {out['base_vm'] / MiB:.0f} MiB baseline, "
          f"peak RSS growth {grown / MiB:.1f} MiB, fvu {out['fvu']:.3f}")
    assert grown < cap
    assert out["fvu"] < 0.9  # it learnt something

    sae = saes.load(tmp_path / "sae")
    ref = _reference_stats(store, sae)
    got = load_file(str(tmp_path / "sae" / "stats.safetensors"))
    assert torch.equal(got["count"], ref.count) and torch.equal(got["max"], ref.max)
    assert torch.allclose(got["sum"], ref.sum, rtol=1e-9)
    assert int(ref.count.sum()) == rows * 8  # k codes per row, every row seen once
    record("A store larger than the memory cap streams through training and a per-latent stats pass",
           f"test_big_store.py::{name}", processes=1, tokens=rows,
           store_mib=round(store_bytes / MiB), cap_mib=cap_mb, store_over_cap=round(store_bytes / cap, 2),
           passes_over_the_store=2, rss_high_water_rise_after_warm_up_mib=round(grown / MiB, 1),
           memory_errors=0)


def test_store_four_times_the_memory_cap_streams_through(tmp_path: Path) -> None:
    _check(tmp_path, cap_mb=48, ratio=4, name="test_store_four_times_the_memory_cap_streams_through")


@pytest.mark.slow
def test_store_of_a_gibibyte_under_a_small_cap(tmp_path: Path) -> None:
    mb = int(os.environ.get("BIG_STORE_MB", 1024))
    _check(tmp_path, cap_mb=mb // 8, ratio=8, name="test_store_of_a_gibibyte_under_a_small_cap")
