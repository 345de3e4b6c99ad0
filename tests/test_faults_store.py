"""Stores and their inputs under faults: two writers, crafted manifests and data, Ctrl-C.

* one writer per store and per world corpus: a second one fails at once, naming the first;
* manifests and ``.jsonl``/``.txt`` data that nest thousands deep, are not UTF-8, are
  sparse gigabytes, list millions of shards, list a shard twice or claim rows the shard
  does not hold: each is the toolkit's own error naming the file (and line, or shard and
  both row counts), before anything is allocated from the claim;
* shard files are world-readable like every other file written;
* SIGINT at random moments of a harvest: one line and exit 1, never an abort or a
  traceback; the store holds complete shards and the same harvest run again finishes it.

The random moments come from ``FAULT_SEED`` (printed; set it to replay a run).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
from reliability import ROOT, child_env, record
from store_util import write_store

from interp.activations import manifest as manifest_mod
from interp.activations.harvest import harvest
from interp.activations.store import (
    MANIFEST,
    MANIFEST_MAX_BYTES,
    MAX_SHARDS,
    ActivationStore,
    Manifest,
    ShardInfo,
)
from interp.activations.tokens import iter_documents
from interp.errors import InterpError, StoreError
from interp.model.tiny import tiny_model
from interp.world.corpus import write_corpus
from saes.locks import DirectoryLockedError

SEED = int(os.environ.get("FAULT_SEED", random.randrange(2**31)))
HOOK = "blocks.0.hook_resid_post"
WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "on", "under", "mat", "tree", "sky", "red", "blue", "big",
         "small", "and", "then", "it", "was"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "s", torch.randn(64, 4), shard_rows=16)


def edit_manifest(store: Path, edit) -> None:
    m = json.loads((store / MANIFEST).read_text())
    edit(m)
    (store / MANIFEST).write_text(json.dumps(m))


def open_quietly(store: Path) -> ActivationStore:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unfinished store warns; that is not the point here
        return ActivationStore.open(store)


# ------------------------------------------------------------------------ one writer

LOCK_HOLDER = """
import sys
from pathlib import Path
from saes.locks import directory_lock
from saes.locks import file_lock

store, corpus = sys.argv[1], Path(sys.argv[2])
with directory_lock(store, what="activation store"), file_lock(corpus):
    print("held", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


def test_a_second_writer_fails_at_once_naming_the_first(model, tmp_path: Path) -> None:
    store, corpus = tmp_path / "store", tmp_path / "corpus.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(store), str(corpus)], cwd=ROOT,
                              env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        t0 = time.perf_counter()
        with pytest.raises(DirectoryLockedError, match=rf"activation store {store} is being written by pid {holder.pid}\b"):
            harvest(model, make_docs(20), HOOK, store, context_length=16, progress=False)
        with pytest.raises(DirectoryLockedError, match=rf"world corpus {corpus} is being written by pid {holder.pid}\b"):
            write_corpus(corpus, 3)
        waited = time.perf_counter() - t0
        assert waited < 10, "a locked directory must fail at once, not wait"
        assert sorted(p.name for p in store.iterdir()) == [".lock"]  # the refused harvest wrote nothing
        assert not corpus.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    # Once the holder has gone (however it exits, the OS drops the lock), both writes succeed,
    # and the lock file left behind is no stranger to the store.
    s = harvest(model, make_docs(20), HOOK, store, context_length=16, progress=False)
    assert len(s) > 0 and sorted(p.name for p in store.iterdir())[:2] == [".lock", MANIFEST]
    assert ActivationStore.open(store).manifest.complete
    assert harvest(model, make_docs(20), HOOK, store, context_length=16, progress=False).manifest.complete
    assert len(write_corpus(corpus, 3).read_text().splitlines()) == 3
    record("A second harvest into a store (or a second writer of a world corpus) fails at once, naming the first",
           "test_faults_store.py::test_a_second_writer_fails_at_once_naming_the_first", processes=2, faults=2,
           lost=0, seconds_to_refuse=round(waited, 2))


# ------------------------------------------------------------------------ crafted JSON


def test_manifest_nested_thousands_deep_or_not_utf8_is_a_store_error(store: Path) -> None:
    m = json.loads((store / MANIFEST).read_text())
    m["source"] = "DEEP"
    (store / MANIFEST).write_text(json.dumps(m).replace('"DEEP"', "[" * 5000 + "]" * 5000))  # a 10 kB file
    with pytest.raises(StoreError, match=r"manifest.json nests deeper than"):
        ActivationStore.open(store)
    with pytest.raises(StoreError, match=r"manifest.json nests deeper than"):  # the harvest reads it too
        harvest(tiny_model("gpt2"), ["the cat sat"], HOOK, store, progress=False)
    m["source"] = {"kind": "synthetic"}
    (store / MANIFEST).write_bytes(json.dumps(m).replace('"synthetic"', '"synth\\u00e9tic"').encode()
                                   .replace(b"\\u00e9", b"\xe9"))  # latin-1, not UTF-8
    with pytest.raises(StoreError, match=r"manifest.json is not valid UTF-8"):
        ActivationStore.open(store)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_data_not_utf8_or_nested_thousands_deep_names_the_file_and_line(model, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    good = '{"text": "the cat sat"}\n' if suffix == ".jsonl" else "the cat sat\n"
    path.write_bytes(good.encode() * 2 + (good.replace("cat", "caf\xe9")).encode("latin-1") + good.encode())
    with pytest.raises(InterpError, match=rf"d{suffix}, line 3: not valid UTF-8"):
        list(iter_documents(path))
    with pytest.raises(InterpError, match=rf"d{suffix}, line 3: not valid UTF-8"):
        harvest(model, path, HOOK, tmp_path / "s", context_length=4, progress=False)
    if suffix == ".jsonl":
        path.write_text(good + '{"text": "x", "n": ' + "[" * 5000 + "]" * 5000 + "}\n")
        with pytest.raises(InterpError, match=r"d.jsonl, line 2 nests deeper than"):
            list(iter_documents(path))
        path.write_text(good + '{"text": "x", "n": NaN}\n' + '{"text": 3}\n')
        with pytest.raises(InterpError, match=r"d.jsonl, line 2 is not valid JSON \(NaN is not a JSON value"):
            list(iter_documents(path))
        path.write_text(good + '{"text": 3}\n')
        with pytest.raises(InterpError, match=r"d.jsonl, line 2: 'text' is int, not text"):
            list(iter_documents(path))
    # Text in other scripts is read as it is: only undecodable bytes are refused.
    path.write_text(good.replace("cat", "猫 café") * 2, encoding="utf-8")
    assert list(iter_documents(path)) == ["the 猫 café sat"] * 2


# ------------------------------------------------------------------------ sizes taken on trust


def test_a_sparse_gigabyte_manifest_is_refused_before_it_is_read(store: Path) -> None:
    os.truncate(store / MANIFEST, 1 << 30)  # sparse: costs no disk, 1 GiB of zeros to read
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"manifest.json is 1,073,741,824 bytes, more than the 67,108,864 a manifest of 200,000 shards takes"):
            ActivationStore.open(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"refusing it cost {peak / 2**20:.0f} MiB"


def _shard_entries(n: int, big: bool = False) -> list[dict]:
    """``n`` shard entries; ``big``: with numbers as long as a 50 TB store's."""
    top = 10**12 if big else 0
    return [{"file": f"shard_{k:06d}.safetensors", "rows": 8 + top, "seq_start": k + top, "seq_end": k + 1 + top,
             "bytes": 1000 + top, "sha256": f"{k:064x}"} for k in range(n)]


def test_shard_count_is_bounded(store: Path, monkeypatch) -> None:
    # The bound itself, scaled down so the test is quick (the 100,000-shard read is below).
    monkeypatch.setattr(manifest_mod, "MAX_SHARDS", 1000)
    m = json.loads((store / MANIFEST).read_text())
    m["shards"] = _shard_entries(1001)
    (store / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"manifest.json lists 1,001 shards, more than the 1,000 a store may hold"):
        ActivationStore.open(store)
    # A manifest of the real bound, as a harvest writes it (indented, the longest numbers),
    # fits under the manifest size cap.
    sample = Manifest.from_json(json.dumps({**m, "shards": []}))
    without = len(sample.to_json())
    sample.shards = [ShardInfo(**e) for e in _shard_entries(1000, big=True)]
    per_shard = (len(sample.to_json()) - without) / 1000
    assert per_shard * MAX_SHARDS < MANIFEST_MAX_BYTES * 0.9, per_shard


@pytest.mark.slow
def test_a_hundred_thousand_shard_manifest_reads(store: Path) -> None:
    m = json.loads((store / MANIFEST).read_text())
    m["shards"] = _shard_entries(100_000)
    (store / MANIFEST).write_text(json.dumps(m, indent=1))  # as the harvest writes it
    t0 = time.process_time()
    assert len(Manifest.read(store).shards) == 100_000
    record("A manifest of 100,000 shards reads; more than 200,000, a sparse gigabyte or a shard listed twice is refused",
           "test_faults_store.py::test_a_hundred_thousand_shard_manifest_reads", processes=1,
           read_cpu_seconds=round(time.process_time() - t0, 1))


def test_a_shard_listed_twice_is_refused(store: Path) -> None:
    edit_manifest(store, lambda m: m["shards"].append(dict(m["shards"][0])))
    with pytest.raises(StoreError, match=r"shards\[4\]\): 'shard_00000.safetensors' has the same file as shards\[0\]"):
        ActivationStore.open(store)
    # The same content under another name is the same shard.
    (store / "copy.safetensors").write_bytes((store / "shard_00000.safetensors").read_bytes())
    edit_manifest(store, lambda m: m["shards"].__setitem__(4, {**m["shards"][4], "file": "copy.safetensors"}))
    with pytest.raises(StoreError, match=r"'copy.safetensors' has the same content \(sha256\) as shards\[0\]"):
        ActivationStore.open(store)
    # Windows stored twice under different files: overlapping ranges.
    edit_manifest(store, lambda m: (m["shards"].pop(), m["shards"][2].update(seq_start=0)))
    with pytest.raises(StoreError, match=r"shards\[2\]\): 'shard_00002.safetensors' covers windows 0-6, overlapping 'shard_00001.safetensors'"):
        ActivationStore.open(store)


def test_claimed_rows_and_shapes_are_checked_against_the_shard_headers(store: Path) -> None:
    edit_manifest(store, lambda m: m["shards"][1].update(rows=10**9))
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"shard .*shard_00001.safetensors holds 16 rows .*manifest records "
                                             r"1,000,000,000"):
            ActivationStore.open(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"refusing it cost {peak / 2**20:.0f} MiB"  # rows of 10^9 x 4 floats: 16 GB
    edit_manifest(store, lambda m: m["shards"][1].update(rows=16))
    assert len(ActivationStore.open(store)) == 64  # the true count opens
    # A wider hook, another dtype, more windows: each named, at open, before any read.
    for edit, message in [
        (lambda m: m["hooks"][0].update(shape=[4096, 4096], d=4096 * 4096),
         r"act.blocks.0.hook_resid_post is \[16, 4\] torch.float32, but the manifest records rows of d=16777216"),
        (lambda m: m.update(dtype="float16"), r"\[16, 4\] torch.float32, but the manifest records rows of d=4 in float16"),
        (lambda m: m["shards"][3].update(seq_end=10**9), r"shard_00003.safetensors: tokens is \[2, 8\] torch.int32"),
    ]:
        before = (store / MANIFEST).read_text()
        edit_manifest(store, edit)
        with pytest.raises(StoreError, match=message):
            ActivationStore.open(store)
        (store / MANIFEST).write_text(before)
    # A header whose length field is damaged is named, not read as gigabytes.
    path = store / "shard_00002.safetensors"
    data = bytearray(path.read_bytes())
    data[5] = 0x7F
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard_00002.safetensors is not a readable safetensors file"):
        ActivationStore.open(store)


def test_shards_are_written_world_readable(model, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        harvest(model, make_docs(40), HOOK, tmp_path / "s", context_length=16, shard_tokens=64, progress=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "s").iterdir()}
    assert sum(name.startswith("shard_") for name in modes) >= 2
    assert set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_in_process_is_a_harvest_interrupted_and_the_handler_is_restored(model, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """SIGINT mid-harvest: HarvestInterrupted (an InterpError and a KeyboardInterrupt), the
    store consistent, SIGINT's handler as before; an ignored SIGINT stays ignored."""
    from interp.activations.harvest import HarvestInterrupted

    real, seen = model.run_with_cache, []
    # Which forward pass to interrupt before: the harvest below makes 20 batch passes, plus one
    # that probes hook shapes if this model has not harvested before (earlier tests in the
    # module may have), so any pass up to 15 leaves batches after it whichever way it goes.
    at = random.Random(SEED).randint(2, 15)

    def interrupting(*a, **k):
        seen.append(signal.getsignal(signal.SIGINT))
        if len(seen) == at:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to this (the main) thread
        return real(*a, **k)

    monkeypatch.setattr(model, "run_with_cache", interrupting)
    kw = {"context_length": 16, "batch_size": 2, "shard_tokens": 40, "max_tokens": 600, "progress": False}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(HarvestInterrupted, match=r"interrupted after \d+ tokens; (the store holds the complete "
                                                      r"shards: \d+ tokens in \d+ shards?|no shard was complete)") as err:
            harvest(model, make_docs(200), HOOK, tmp_path / "s", **kw)
        assert isinstance(err.value, KeyboardInterrupt) and isinstance(err.value, InterpError)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
        assert seen[-1] is not signal.default_int_handler  # replaced while the harvest ran
        m = json.loads((tmp_path / "s" / MANIFEST).read_text())
        assert not m["complete"] and len(seen) == at  # stopped after that batch
        if m["shards"]:
            open_quietly(tmp_path / "s").verify()
        seen.clear()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job: ignored, and left ignored
        store = harvest(model, make_docs(200), HOOK, tmp_path / "s", **kw)
        assert store.manifest.complete and len(store) == 600 and set(seen) == {signal.SIG_IGN}
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# The command line itself (its exit status and messages are what is tested), with each
# forward pass slowed so a harvest lasts long enough to be interrupted anywhere.
CLI_CHILD = """
import signal, sys, time
# A process started in the background by a script inherits SIGINT ignored, and Python then
# leaves it so: give this one the handler Python installs under a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
torch.set_num_threads(1)
import interp.activations.harvest as harvest_mod
real = harvest_mod._forward  # the harvest's forward pass (hook shapes are probed before it)
started = False
def slow(*a, **k):
    global started
    if not started:  # the harvest is underway: the parent may interrupt from here on
        started = True
        print("underway", flush=True)
    time.sleep(0.02)
    return real(*a, **k)
harvest_mod._forward = slow
from interp.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_ctrl_c_at_random_moments_stops_cleanly_and_the_harvest_resumes(tiny_gpt2_dir, tmp_path: Path) -> None:
    print(f"FAULT_SEED={SEED}")
    rng = random.Random(SEED)
    data = tmp_path / "docs.txt"
    data.write_text("\n".join(make_docs(300)) + "\n")
    out = tmp_path / "store"
    script = tmp_path / "cli_child.py"
    script.write_text(CLI_CHILD)
    args = ["harvest", "--model", str(tiny_gpt2_dir), "--hook", HOOK, "--data", str(data), "--out", str(out),
            "--tokens", "1200", "--context-length", "16", "--batch-size", "2", "--shard-tokens", "90", "--no-progress"]
    outcomes = []
    for _ in range(2):  # each run is a process start (seconds); the in-process test above adds moments
        proc = subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "underway", proc.stderr.read()[-3000:]
        # Mid-forward, mid-shard-write, mid-commit, in the tokenizer; never near the end (two
        # runs of at most 0.15 s leave most of the 40 batches of 20 ms), since a SIGINT while
        # Python shuts down ends any process by the signal.
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode >= 0, f"killed by signal {-proc.returncode}:\n{stderr[-3000:]}"
        assert "Traceback" not in stderr and "terminate called" not in stderr, stderr[-3000:]
        m = _manifest(out)
        assert m is not None
        if proc.returncode == 0:  # it had finished before the signal came
            assert m["complete"]
            outcomes.append("finished")
            break
        assert proc.returncode in (1, 130), stderr
        # transformers draws its own bar while loading weights; everything else is one line.
        lines = [x for x in stderr.strip().splitlines() if not x.startswith("Loading weights")]
        assert len(lines) == 1 and lines[0].startswith("interp harvest: error: interrupted after "), stderr
        assert not m["complete"]
        if m["shards"]:
            assert f"the store holds the complete shards: {m['n_tokens']:,} tokens in {len(m['shards'])} shard" in lines[0]
            s = open_quietly(out)
            s.verify()  # every listed shard complete, checksums intact
            assert len(s) == m["n_tokens"]
        else:
            with pytest.raises(StoreError, match="empty"):
                open_quietly(out)
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
        outcomes.append(len(m["shards"]))
    assert outcomes[0] != "finished", "the first signal came too late to test anything"
    # The same harvest again (here in-process) finishes the store like an uninterrupted run:
    # every token once, the same activations.
    resumed = harvest(_load(tiny_gpt2_dir), data, HOOK, out, max_tokens=1200, context_length=16, batch_size=2,
                      shard_tokens=90, progress=False)
    assert resumed.manifest.complete and len(resumed) == 1200
    full = harvest(_load(tiny_gpt2_dir), data, HOOK, tmp_path / "full", max_tokens=1200, context_length=16,
                   batch_size=2, shard_tokens=90, progress=False)
    seq_a, pos_a = full.locate(torch.arange(len(full)))
    seq_b, pos_b = resumed.locate(torch.arange(len(resumed)))
    assert torch.equal(seq_a, seq_b) and torch.equal(pos_a, pos_b)  # nothing lost or duplicated
    torch.testing.assert_close(resumed[:], full[:], rtol=1e-5, atol=1e-5)
    record("Ctrl-C during a harvest: one line and exit 1 (never an abort or a traceback); the store holds complete "
           "shards and a re-run finishes it like an uninterrupted run",
           "test_faults_store.py::test_ctrl_c_at_random_moments_stops_cleanly_and_the_harvest_resumes",
           processes=len(outcomes) + 1, tokens=len(resumed), faults=len(outcomes), lost=0, duplicated=0,
           shards_at_interrupts=outcomes, seed=SEED)


def _load(directory: Path):
    import interp

    return interp.load(str(directory), device="cpu")
