"""Benchmark the streaming harvest against a bare forward pass; print JSON.

Figures:
  * harvest tokens/s divided by the tokens/s of a bare forward pass through the same
    layers (the model truncated after the hooked layer), same windows, same batch size;
    the harvest's time includes tokenisation, packing, copies and fsync'd shard writes;
  * peak RSS of a fresh process harvesting two different totals (memory must not grow
    with the total);
  * TransformerLens: HookedTransformer.run_with_cache (stop_at_layer, names_filter, copied
    to CPU) over a bare TL forward with the same stop_at_layer, as a point of reference;
  * SAELens's ActivationsStore, run in a separate venv given by --saelens-python;
  * with --write-floor, the store's write rate against writing the same bytes to a plain
    file in the same folder (fsync'd), the floor for any store on that disk.

On CUDA (--device cuda) the model is built on the GPU (in --model-dtype) and every timed
block waits for the GPU before the clock stops.

Run:  python bench/harvest.py                      (defaults: small random GPT-2 on CPU)
      python bench/harvest.py --d-model 512 --n-layers 8 --layer 5 --tokens 32768 262144 --threads 1
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB_WORDS = [f"w{i}" for i in range(2000)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--layer", type=int, default=3, help="hooks at blocks.LAYER.hook_resid_post and hook_mlp_out")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--speed-tokens", type=int, default=16384, help="tokens per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each kind (interleaved; min used)")
    p.add_argument("--tokens", type=int, nargs=2, default=[32768, 262144], help="two totals for the RSS check")
    p.add_argument("--shard-tokens", type=int, default=8192)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-tl", action="store_true")
    p.add_argument("--saelens-python", default=None, help="python of a venv with sae-lens, for its ActivationsStore")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    p.add_argument("--model-dtype", default="float32", help="the model's weights (the store has --dtype)")
    p.add_argument("--skip-decomposition", action="store_true",
                   help="only the direct timings (the decomposition guards against CPU load from other jobs)")
    p.add_argument("--write-floor", action="store_true", help="also time plain fsync'd file writes of the same bytes")
    p.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)  # internal: one RSS run
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ setup


def make_docs(n_tokens: int, seed: int = 0) -> list[str]:
    """Documents of random words whose total is a little above ``n_tokens``."""
    rng = random.Random(seed)
    docs, total = [], 0
    while total < n_tokens * 1.05:
        k = rng.randint(20, 400)
        docs.append(" ".join(rng.choice(VOCAB_WORDS) for _ in range(k)))
        total += k + 1
    return docs


def build_model(args: argparse.Namespace):
    from transformers import GPT2Config, GPT2LMHeadModel

    from interp.model.hooked import wrap_hf
    from interp.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer(VOCAB_WORDS)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=args.d_model, n_layer=args.n_layers, n_head=args.n_heads,
                     n_positions=max(1024, args.context_length), bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    # Built where it runs: initialising a GPT-2-medium-sized model on the CPU takes longer
    # than the whole GPU measurement.
    with torch.device(getattr(args, "device", "cpu")):
        hf = GPT2LMHeadModel(cfg).eval()
    hf.to(getattr(torch, getattr(args, "model_dtype", "float32")))
    return wrap_hf(hf, tok, name="bench-gpt2")


@contextlib.contextmanager
def truncated(hf_model, n_blocks: int):
    """The model's own GPT2Model body with only its first ``n_blocks`` blocks, for the
    duration of the block: same modules, same weights, no hooks."""
    body = hf_model.transformer
    blocks = body.h
    body.h = torch.nn.ModuleList(list(blocks)[:n_blocks])
    try:
        yield body
    finally:
        body.h = blocks


def hooks_for(args: argparse.Namespace) -> list[str]:
    return [f"blocks.{args.layer}.hook_resid_post", f"blocks.{args.layer}.hook_mlp_out"]


def windows(model, docs: list[str], args: argparse.Namespace) -> torch.Tensor:
    """The exact windows the harvest packs, for the bare-forward baseline."""
    from interp.activations.tokens import PackingConfig, iter_windows

    cfg = PackingConfig(args.context_length, True, model.bos_token_id, model.eos_token_id, model.pad_token_id or 0)
    rows = [ids for ids, n, _ in iter_windows(docs, model.tokenizer, cfg) if n == args.context_length]
    return torch.tensor(rows, device=getattr(args, "device", "cpu"))


# ------------------------------------------------------------------------------ timing


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    """Wall and CPU time of a block (GPU work included: the clock stops when it is done).
    CPU time (this process, all threads) is much less disturbed than wall time when other
    jobs share the machine."""

    def __enter__(self) -> Timer:
        _sync()
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        _sync()
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def time_bare(base, tokens: torch.Tensor, batch: int) -> Timer:
    with Timer() as t, torch.inference_mode():
        for i in range(0, tokens.shape[0], batch):
            base(input_ids=tokens[i : i + batch], use_cache=False)
    return t


def time_harvest(model, docs, args, max_tokens: int) -> tuple[Timer, int, int]:
    from interp.activations.harvest import harvest

    with tempfile.TemporaryDirectory() as d:
        with Timer() as t:
            store = harvest(model, docs, hooks_for(args), Path(d) / "store", max_tokens=max_tokens,
                            context_length=args.context_length, batch_size=args.batch_size, dtype=args.dtype,
                            shard_tokens=args.shard_tokens, progress=False)
        return t, len(store), store.manifest.n_sequences


def _summary(times: list[float]) -> dict:
    return {"min": round(min(times), 3), "median": round(statistics.median(times), 3)}


def _forward_cost_ratio(model, tokens: torch.Tensor, args: argparse.Namespace) -> float:
    """bare / run_with_cache time, alternating batch by batch so machine load cancels out."""
    hooks = hooks_for(args)
    bare = cached = 0.0
    with torch.inference_mode():
        for _ in range(args.repeats):
            for i in range(0, tokens.shape[0], args.batch_size):
                batch = tokens[i : i + args.batch_size]
                with truncated(model.model, args.layer + 1) as base, Timer() as t:
                    base(input_ids=batch, use_cache=False)
                bare += t.wall
                with Timer() as t:
                    model.run_with_cache(batch, hooks, return_logits=False)
                cached += t.wall
    return bare / cached


def _forward_share_in_harvest(model, docs, args, max_tokens: int) -> list[float]:
    """Per harvest run: the fraction of its wall time spent inside the forward pass.

    Measured within one run, so load from other processes scales both parts alike.
    """
    shares = []
    real = model.run_with_cache
    spent = {"s": 0.0}

    def timed(*a, **k):
        with Timer() as t:
            out = real(*a, **k)
        spent["s"] += t.wall
        return out

    model.run_with_cache = timed  # instance attribute: instrumentation for this bench only
    try:
        for _ in range(args.repeats):
            spent["s"] = 0.0
            t, _, _ = time_harvest(model, docs, args, max_tokens)
            shares.append(spent["s"] / t.wall)
    finally:
        del model.run_with_cache
    return shares


def bench_speed(args: argparse.Namespace) -> dict:
    model = build_model(args)
    docs = make_docs(args.speed_tokens + 4 * args.context_length)
    # Stored rows per window = context_length - 1 (BOS excluded); ask for whole windows.
    n_windows = args.speed_tokens // args.context_length
    max_tokens = n_windows * (args.context_length - 1)
    tokens = windows(model, docs, args)[:n_windows]
    # Warm up both paths (allocator, first-call overheads).
    with truncated(model.model, args.layer + 1) as base:
        time_bare(base, tokens[: args.batch_size], args.batch_size)
    time_harvest(model, docs[:50], args, 4 * (args.context_length - 1))
    bare, harv = [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        with truncated(model.model, args.layer + 1) as base:
            bare.append(time_bare(base, tokens, args.batch_size))
        t, rows, seqs = time_harvest(model, docs, args, max_tokens)
        assert seqs == n_windows and rows == max_tokens, (seqs, rows)
        harv.append(t)
    n_tok = n_windows * args.context_length
    # The least disturbed run of each kind is the best estimate of its cost on a shared machine.
    bare_wall, harv_wall = min(t.wall for t in bare), min(t.wall for t in harv)
    bare_cpu, harv_cpu = min(t.cpu for t in bare), min(t.cpu for t in harv)
    stored_mib = max_tokens * len(hooks_for(args)) * args.d_model * _itemsize(args.dtype) / 2**20
    out = {
        "tokens_per_run": n_tok,
        "rows_stored_per_run": max_tokens,
        "direct": {
            "bare_forward_tokens_per_s": round(n_tok / bare_wall, 1),
            "harvest_tokens_per_s": round(n_tok / harv_wall, 1),
            "harvest_over_bare_wall": round(bare_wall / harv_wall, 3),
            "harvest_over_bare_cpu": round(bare_cpu / harv_cpu, 3),
            "bare_wall_s": _summary([t.wall for t in bare]),
            "harvest_wall_s": _summary([t.wall for t in harv]),
            "bare_cpu_s": _summary([t.cpu for t in bare]),
            "harvest_cpu_s": _summary([t.cpu for t in harv]),
        },
        "store": {"mib_per_run": round(stored_mib, 2), "write_mib_per_s": round(stored_mib / harv_wall, 1)},
    }
    if getattr(args, "write_floor", False):
        floor = write_floor(tempfile.gettempdir(), int(stored_mib * 2**20))
        out["store"].update(floor)
        out["store"]["of_write_floor"] = round(out["store"]["write_mib_per_s"] / floor["write_floor_mib_per_s"], 3)
    if getattr(args, "skip_decomposition", False):
        return out
    # A load-robust decomposition: (bare / hooked forward, alternated per batch) times the
    # share of the harvest's own wall time that is forward pass.
    fwd_ratio = _forward_cost_ratio(model, tokens, args)
    shares = _forward_share_in_harvest(model, docs, args, max_tokens)
    return {
        **out,
        "decomposed": {
            "bare_over_hooked_forward": round(fwd_ratio, 3),
            "forward_share_of_harvest_wall": [round(x, 3) for x in shares],
            "harvest_over_bare_estimate": round(fwd_ratio * statistics.median(shares), 3),
        },
    }


def filesystem(path: str) -> str:
    """The type of the filesystem ``path`` is on (``/proc/mounts``), e.g. ext4 or tmpfs."""
    real, best, kind = os.path.realpath(path), "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1] if len(parts) > 2 else ""
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if mount and inside and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def write_floor(folder: str, n_bytes: int, chunk: int = 16 << 20) -> dict:
    """Plain writes of ``n_bytes`` to one new file in ``folder`` in 16 MiB chunks, fsync'd:
    what that disk gives any writer (the store writes its shards the same way)."""
    buf = os.urandom(min(chunk, max(n_bytes, 1)))
    fd, path = tempfile.mkstemp(dir=folder)
    try:
        t0 = time.perf_counter()
        done = 0
        while done < n_bytes:
            done += os.write(fd, buf[: min(len(buf), n_bytes - done)])
        os.fsync(fd)
        wall = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return {"write_floor_mib_per_s": round(n_bytes / 2**20 / wall, 1), "filesystem": filesystem(folder)}


def bench_tl(args: argparse.Namespace) -> dict:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        return {"available": False}
    cfg = HookedTransformerConfig(n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads,
                                  d_head=args.d_model // args.n_heads, d_mlp=4 * args.d_model,
                                  d_vocab=len(VOCAB_WORDS) + 4, n_ctx=max(1024, args.context_length),
                                  act_fn="gelu_new", normalization_type="LN", seed=0)
    tl = HookedTransformer(cfg).eval()
    n_windows = args.speed_tokens // args.context_length
    tokens = torch.randint(0, cfg.d_vocab, (n_windows, args.context_length), generator=torch.Generator().manual_seed(0))
    hooks = set(hooks_for(args))
    stop = args.layer + 1

    def bare() -> Timer:
        with Timer() as t, torch.inference_mode():
            for i in range(0, n_windows, args.batch_size):
                tl(tokens[i : i + args.batch_size], stop_at_layer=stop)
        return t

    def cached() -> Timer:
        with Timer() as t, torch.inference_mode():
            for i in range(0, n_windows, args.batch_size):
                _, cache = tl.run_with_cache(tokens[i : i + args.batch_size], names_filter=lambda n: n in hooks,
                                             stop_at_layer=stop)
                [cache[h].cpu() for h in hooks]
        return t

    bare(), cached()  # warm up
    b, c = [], []
    for _ in range(args.repeats):
        b.append(bare())
        c.append(cached())
    n_tok = n_windows * args.context_length
    b_wall, c_wall = min(t.wall for t in b), min(t.wall for t in c)
    return {
        "available": True,
        "bare_forward_tokens_per_s": round(n_tok / b_wall, 1),
        "run_with_cache_tokens_per_s": round(n_tok / c_wall, 1),
        "run_with_cache_over_bare_wall": round(b_wall / c_wall, 3),
        "run_with_cache_over_bare_cpu": round(min(t.cpu for t in b) / min(t.cpu for t in c), 3),
        "note": "TL run_with_cache with names_filter and stop_at_layer, activations copied to CPU; "
                "it keeps them in memory and writes nothing to disk",
    }


def _current_rss_bytes() -> int | None:
    try:  # Linux: resident pages of this process, without the high-water mark's history
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class RssSampler:
    """Peak RSS of this process while a block runs, sampled every 5 ms in a thread."""

    def __enter__(self) -> RssSampler:
        self.peak = _current_rss_bytes() or 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _current_rss_bytes() or 0
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            self._stop.wait(0.005)

    def quarter_peaks(self) -> tuple[int, int]:
        """Peak RSS in the first and in the last quarter of the run: a trend would show."""
        q = max(1, len(self.samples) // 4)
        return max(self.samples[:q]), max(self.samples[-q:])

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child_rss(args: argparse.Namespace, total: int) -> dict:
    """Runs in a fresh process: harvest ``total`` rows while sampling this process's RSS.

    The process's high-water mark (ru_maxrss) also counts model construction, so RSS is
    sampled during the runs and reported as growth over the RSS before them. A bare forward
    pass over 64 windows runs first, as the baseline for the memory a forward pass itself
    needs (its freed memory stays in the heap and is reused by the harvest).
    """
    model = build_model(args)
    docs = make_docs(total * args.context_length // (args.context_length - 1) + 4 * args.context_length)
    before = _current_rss_bytes()
    if before is None:
        return {"available": False, "note": "no /proc/self/statm on this platform"}
    with RssSampler() as bare_rss, truncated(model.model, args.layer + 1) as base:
        time_bare(base, windows(model, docs[:400], args)[:64], args.batch_size)
    with RssSampler() as harvest_rss:
        t, rows, _ = time_harvest(model, docs, args, total)
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    first, last = harvest_rss.quarter_peaks()
    return {
        "rows": rows,
        "seconds": round(t.wall, 2),
        "activation_mib_written": mib(rows * 2 * args.d_model * _itemsize(args.dtype)),
        "rss_before_mib": mib(before),
        "growth_during_bare_forward_mib": mib(bare_rss.peak - before),
        "growth_during_harvest_mib": mib(harvest_rss.peak - before),
        "peak_rss_during_harvest_mib": mib(harvest_rss.peak),
        "peak_rss_first_quarter_mib": mib(first),
        "peak_rss_last_quarter_mib": mib(last),
    }


def _itemsize(dtype: str) -> int:
    return torch.finfo(getattr(torch, dtype)).bits // 8


def bench_rss(args: argparse.Namespace) -> list[dict]:
    out = []
    for total in args.tokens:
        cmd = [sys.executable, __file__, "--child-rss", str(total)] + _forward_args(args)
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def _forward_args(args: argparse.Namespace,
                  keys: tuple[str, ...] = ("d_model", "n_layers", "n_heads", "layer", "context_length", "batch_size",
                                           "shard_tokens", "dtype")) -> list[str]:
    """``args``' sizes as command-line flags, for a child process measuring the same setup."""
    argv = []
    for k in keys:
        argv += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def bench_saelens(args: argparse.Namespace) -> dict:
    """SAELens's ActivationsStore, run by ``bench/saelens_store.py`` in the interpreter given
    by ``--saelens-python`` (a separate environment: SAELens is never installed with this project)."""
    if not args.saelens_python:
        return {"available": False, "note": "pass --saelens-python VENV/bin/python (a venv with sae-lens)"}
    keys = ("d_model", "n_layers", "n_heads", "layer", "context_length", "batch_size", "speed_tokens", "repeats")
    argv = [args.saelens_python, str(ROOT / "bench" / "saelens_store.py"), *_forward_args(args, keys)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"available": False, "note": f"bench/saelens_store.py failed: {proc.stderr.strip()[-400:]}"}
    return {"available": True, **json.loads(proc.stdout.strip().splitlines()[-1])["saelens_activations_store"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_rss is not None:
        print(json.dumps(child_rss(args, args.child_rss)))
        return
    sae_lens_status = bench_saelens(args)
    row_bytes = 2 * args.d_model * _itemsize(args.dtype)
    result = {
        "setup": {
            "model": f"random GPT-2 config, d_model={args.d_model}, n_layers={args.n_layers}, n_heads={args.n_heads}",
            "hooks": hooks_for(args),
            "bare_forward": f"the same model's GPT2Model body with blocks 0..{args.layer} only, no hooks",
            "context_length": args.context_length,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "shard_tokens": args.shard_tokens,
            "shard_mib": round(args.shard_tokens * row_bytes / 2**20, 1),
            "device": args.device,
            "model_dtype": args.model_dtype,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "speed": bench_speed(args),
        "peak_rss": [] if args.skip_rss else bench_rss(args),
        "transformer_lens": {"available": False, "note": "skipped"} if args.skip_tl else bench_tl(args),
        "sae_lens": sae_lens_status,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
