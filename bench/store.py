"""Activation-store read throughput against reading the same files raw; print JSON.

Writes a synthetic store (float32, one hook), then alternates two readers over it:

  * raw:   every shard file read start to end into one reused buffer (``readinto``): the
           floor any reader of these bytes pays;
  * store: one epoch of ``ActivationStore.batches`` (a fresh store object each time, so
           every shard's sha256 is verified on first read as in real use), shuffled
           (seeded shard order, mixing buffer) and in order; and a later epoch of a run,
           through a store object whose shards are already verified.

Figures are activation bytes per second and the ratio store / raw. ``cold`` runs evict
the files from the page cache first (``posix_fadvise(DONTNEED)``, which an unprivileged
process may do for clean pages) so both read from the device; ``warm`` runs read from the
page cache, which isolates the store's own CPU cost (checksum, deserialising, shuffling).

Run:  python bench/store.py                       (256 MiB store, 8 MiB shards)
      python bench/store.py --mb 2048 --shard-mb 64 --batch 4096 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interp.activations.store import (  # noqa: E402
    MANIFEST,
    ActivationStore,
    HookInfo,
    Manifest,
    ShardInfo,
    act_key,
    atomic_write_text,
    write_shard,
)

HOOK = "blocks.0.hook_resid_post"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=256, help="store size in MiB of activations")
    p.add_argument("--shard-mb", type=int, default=8, help="shard size in MiB")
    p.add_argument("--d", type=int, default=512, help="activation width")
    p.add_argument("--batch", type=int, default=4096, help="rows per batch")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs of each reader (fastest kept)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dir", default=None, help="where to write the store (default: a temporary directory)")
    return p.parse_args(argv)


def write(directory: Path, mb: int, shard_mb: int, d: int) -> int:
    rows_per_shard = shard_mb * (1 << 20) // (4 * d)
    n_shards = max(1, mb // shard_mb)
    m = Manifest(model="synthetic", hooks=[HookInfo(HOOK, (d,))], dtype="float32", context_length=rows_per_shard,
                 prepend_bos=False, exclude_bos=False, source={"kind": "bench"}, max_tokens=None,
                 shard_tokens=rows_per_shard, complete=True)
    g = torch.Generator().manual_seed(0)
    for k in range(n_shards):
        x = torch.randn(rows_per_shard, d, generator=g)
        tensors = {act_key(HOOK): x, "tokens": torch.zeros(1, rows_per_shard, dtype=torch.int32),
                   "seq": torch.full((rows_per_shard,), k, dtype=torch.int64),
                   "pos": torch.arange(rows_per_shard, dtype=torch.int32)}
        name, size, digest = write_shard(directory, k, tensors)
        m.shards.append(ShardInfo(name, rows_per_shard, k, k + 1, size, digest))
    m.n_tokens, m.n_sequences = n_shards * rows_per_shard, n_shards
    atomic_write_text(directory / MANIFEST, m.to_json())
    return n_shards * rows_per_shard * d * 4


def evict(files: list[Path]) -> bool:
    ok = hasattr(os, "posix_fadvise")
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if ok:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return ok


def read_raw(files: list[Path]) -> int:
    buf = bytearray(1 << 22)
    n = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while k := fh.readinto(buf):
                n += k
    return n


def read_store(directory: Path | ActivationStore, batch: int, shuffle: bool) -> int:
    store = directory if isinstance(directory, ActivationStore) else ActivationStore.open(directory)
    n = 0
    for x in store.batches(batch, shuffle=shuffle, seed=0):
        n += x.numel() * x.element_size()
    return n


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    directory = Path(tmp.name) / "store"
    directory.mkdir()
    t0 = time.perf_counter()
    act_bytes = write(directory, args.mb, args.shard_mb, args.d)
    write_s = time.perf_counter() - t0
    files = sorted(directory.glob("shard_*.safetensors"))
    file_bytes = sum(f.stat().st_size for f in files)

    # A store object checksums each shard on its first read only: later epochs of a training
    # run read through one object, as "later_epoch" does here.
    verified = ActivationStore.open(directory)
    verified.verify()
    readers = {
        "raw": lambda: read_raw(files),
        "store_shuffled": lambda: read_store(directory, args.batch, True),
        "store_in_order": lambda: read_store(directory, args.batch, False),
        "store_shuffled_later_epoch": lambda: read_store(verified, args.batch, True),
    }
    best: dict[str, float] = {}
    can_evict = True
    for mode in ("cold", "warm"):
        for _ in range(args.repeats):
            for name, fn in readers.items():
                if mode == "cold":
                    can_evict = evict(files)
                else:
                    read_raw(files)  # into the page cache
                start = time.perf_counter()
                got = fn()
                dt = time.perf_counter() - start
                assert got in (act_bytes, file_bytes), (name, got)
                key = f"{mode}_{name}"
                best[key] = min(best.get(key, float("inf")), dt)

    def mib_s(key: str, nbytes: int) -> float:
        return nbytes / (1 << 20) / best[key]

    out: dict[str, object] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                    "torch": torch.__version__, "threads": args.threads},
        "store": {"activation_mib": act_bytes / (1 << 20), "file_mib": file_bytes / (1 << 20), "shards": len(files),
                  "d": args.d, "batch": args.batch, "write_s": write_s},
        "page_cache_evicted_for_cold_runs": can_evict,
    }
    for mode in ("cold", "warm"):
        raw = mib_s(f"{mode}_raw", file_bytes)
        res: dict[str, float] = {"raw_file_mib_s": raw}
        for name in ("store_shuffled", "store_in_order", "store_shuffled_later_epoch"):
            rate = mib_s(f"{mode}_{name}", act_bytes)
            res[f"{name}_mib_s"] = rate
            res[f"{name}_ratio"] = rate / raw
        out[mode] = res
    print(json.dumps(out, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
