"""Bad input: generated configs and command lines get the toolkit's own errors, never a
traceback from inside torch; NaN and inf activations are named, and stop or are skipped.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import math
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import saes
from interp.errors import InterpError
from reliability import record
from saes.training import checkpoint
from store_util import HOOK, write_store
from test_cli import names_python_argument

torch.set_num_threads(1)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Values of every kind a user (or a bad YAML file) might pass for any setting.
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.lists(st.integers(-3, 9), max_size=3),
)

def mostly(valid: st.SearchStrategy, bad: st.SearchStrategy = junk, one_in: int = 5) -> st.SearchStrategy:
    """Bad about once in ``one_in`` draws, so that whole valid combinations come up often too.

    (A plain ``st.integers`` choice would not do: hypothesis favours its bounds.)
    """
    return st.sampled_from([True] * (one_in - 1) + [False]).flatmap(lambda ok: valid if ok else bad)


def chance(p_in: int) -> st.SearchStrategy:
    """True about once in ``p_in`` draws."""
    return st.sampled_from([False] * (p_in - 1) + [True])


CONFIG_FIELDS = {
    "batch_size": st.integers(2, 64), "total_tokens": st.integers(1, 512), "lr": st.floats(1e-4, 1e-2),
    "warmup_frac": st.floats(0, 0.5), "decay_frac": st.floats(0, 0.5), "grad_clip": st.floats(0.1, 5),
    "seed": st.integers(0, 9), "dead_tokens": st.integers(1, 1000), "auxk": st.booleans(),
    "auxk_alpha": st.floats(0, 1), "k_aux": st.integers(1, 40), "init_weights": st.booleans(),
    "b_dec_init": st.sampled_from(["geometric_median", "mean", "zeros", "keep"]), "init_rows": st.integers(1, 300),
    "normalize_input": st.booleans(), "autocast": st.sampled_from(["auto", "none"]), "log_every": st.integers(1, 9),
    "checkpoint_every": st.integers(1, 9), "on_nonfinite": st.sampled_from(["raise", "skip"]),
    "adam_eps": st.floats(1e-10, 1e-6), "adam_betas": st.tuples(st.floats(0, 0.99), st.floats(0, 0.999)),
}


@st.composite
def config_kwargs(draw) -> dict:
    """Some fields set, each to a sensible value or to junk."""
    names = draw(st.lists(st.sampled_from(sorted(CONFIG_FIELDS)), unique=True, max_size=6))
    return {n: draw(mostly(CONFIG_FIELDS[n])) for n in names}


@FUZZ
@given(kw=config_kwargs())
def test_any_config_is_accepted_or_refused_with_a_config_error(kw: dict) -> None:
    try:
        cfg = saes.TrainConfig(**kw)
    except saes.ConfigError as err:
        assert any(name in str(err) for name in kw), (kw, str(err))  # the message names the setting
        return
    assert cfg.batch_size >= 2 and cfg.total_tokens >= 1 and cfg.steps >= 1
    assert cfg.lr_for(64) > 0 and math.isfinite(cfg.lr_factor(0, cfg.batch_size))


ARCHS = {
    "topk": lambda d_in, d_sae, k, g: saes.TopKSAE(d_in, d_sae, k),
    "batchtopk": lambda d_in, d_sae, k, g: saes.BatchTopKSAE(d_in, d_sae, k),
    "matryoshka": lambda d_in, d_sae, k, g: saes.MatryoshkaSAE(d_in, g, k, d_sae=d_sae),
    "mp": lambda d_in, d_sae, k, g: saes.MPSAE(d_in, d_sae, k),
}
# Sizes stay small enough to allocate (a huge d_in x d_sae is its own test below).
small_junk = st.one_of(st.none(), st.booleans(), st.integers(-10, 0), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=6), st.lists(st.integers(-3, 9), max_size=3))
size = mostly(st.integers(9, 40), small_junk)


@settings(FUZZ, max_examples=100)
@given(arch=st.sampled_from(sorted(ARCHS)), d_in=size, d_sae=size, k=mostly(st.integers(1, 8), size),
       groups=mostly(st.one_of(st.none(), st.lists(st.integers(1, 24), min_size=1, max_size=4)),
                     st.one_of(st.lists(st.one_of(st.integers(-1, 24), junk), max_size=4), junk)),
       cfg=config_kwargs(), rows=st.integers(0, 200), width_off=st.sampled_from([0, 0, 0, 1]))
def test_any_sae_and_training_run_succeeds_or_says_what_is_wrong(arch, d_in, d_sae, k, groups, cfg, rows, width_off):
    """Build an SAE, a config and data from generated values, then train a few steps."""
    # Small defaults where a field was not drawn, so that valid combinations train quickly.
    cfg = {"batch_size": 32, "init_rows": 64, **cfg, "log_every": 1}
    total = cfg.get("total_tokens", 64)
    cfg["total_tokens"] = min(total, 96) if isinstance(total, int) and not isinstance(total, bool) else total
    try:
        sae = ARCHS[arch](d_in, d_sae, k, groups)
        config = saes.TrainConfig(**cfg)
        x = torch.randn(rows, sae.d_in + width_off)
        if config.total_tokens > 200 or config.batch_size > 64:
            return  # valid but slow: the point here is the errors
        result = saes.train(sae, x, config, progress=False)
    except saes.SAEError as err:
        assert str(err) and "Traceback" not in str(err)
        event(f"refused: {type(err).__name__}")
        return
    event("trained")
    assert result.tokens >= 1 and all(math.isfinite(v) for v in result.metrics.values())


# ------------------------------------------------------------------------ command line

_tmp = Path(tempfile.mkdtemp(prefix="interp-cli-fuzz-"))
_STORE = write_store(_tmp / "store", torch.randn(4096, 8), shard_rows=1024)  # the default batch fits
_runs = itertools.count()

bad_num = st.one_of(st.integers(-3, 0).map(str), st.sampled_from(["", "x", "1e3", "nan", "inf", "-0", "3.5", "99999999999"]))


def num(lo: int, hi: int) -> st.SearchStrategy:
    return mostly(st.integers(lo, hi).map(str), bad_num, one_in=12)


@st.composite
def train_argv(draw) -> list[str]:
    argv = ["train"]
    argv += draw(mostly(st.just(["--store", str(_STORE)]),
                        st.sampled_from([["--store", str(_tmp / "missing")], ["--store", str(_STORE), "--model", "world"],
                                         []])))
    for flag, values in [
        ("--arch", mostly(st.sampled_from(["topk", "batchtopk", "matryoshka", "mp"]), st.sampled_from(["relu", ""]))),
        ("--d-sae", num(16, 300)), ("--k", num(1, 8)), ("--tokens", num(1, 256)), ("--batch-size", num(2, 300)),
        ("--lr", mostly(st.sampled_from(["1e-3", "3e-4", "0.01"]), bad_num, one_in=12)),
        ("--dead-tokens", num(1, 10**6)), ("--k-aux", num(1, 64)), ("--checkpoint-every", num(1, 50)),
        ("--log-every", num(1, 50)),
        ("--groups", st.sampled_from(["4,12", "8,8", "a,b", "0,16", "", "16"])),
        ("--hook", mostly(st.just(HOOK), st.sampled_from(["blocks.9.hook_resid_post", ""]))),
        ("--data", st.sampled_from(["corpus.txt"])),
        ("--on-nonfinite", mostly(st.sampled_from(["raise", "skip"]), st.just("ignore"))),
        ("--hook-device", st.sampled_from([f"{HOOK}=cpu", "nonsense"])),
        ("--device", mostly(st.just("cpu"), st.sampled_from(["cuda:7", "gpu", "meta", ""]))),
    ]:
        # Required flags are left out now and then, optional ones half the time, and flags
        # that are always wrong with --store (live-only) rarely.
        if flag in ("--d-sae", "--k", "--tokens"):
            keep = not draw(chance(10))
        elif flag in ("--data", "--hook-device"):
            keep = draw(chance(10))
        else:
            keep = draw(st.booleans())
        if not keep:
            continue
        argv += [flag, draw(values)]
    if not draw(chance(10)):
        argv += ["--out", str(_tmp / f"out{next(_runs)}")]
    if draw(chance(5)):
        argv.append("--resume")
    return argv + ["--no-progress"]


def _run_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``interp`` with ``argv``; its exit status and what it wrote to stderr, which must
    never be a traceback: 0 (done), 1 (the toolkit's error) or 2 (argparse's usage error)."""
    from interp.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: usage error, exit status 2
            code = exit_.code
    message = err.getvalue()
    event(f"exit status {code}")
    assert code in (0, 1, 2), (argv, code, message)
    assert "Traceback" not in message, (argv, message)
    return code, message


@settings(FUZZ, max_examples=50)  # 100 took ~42 s of the CI budget; tests/test_cli_fuzz.py fuzzes train too
@given(argv=train_argv())
def test_any_train_command_line_ends_in_a_clear_message(argv: list[str]) -> None:
    # Valid but long runs are cut short: this is about what the command says, not training.
    if "--tokens" in argv:
        i = argv.index("--tokens") + 1
        if argv[i].isdigit() and int(argv[i]) > 256:
            argv[i] = "256"
    code, message = _run_cli(argv)
    if code:
        assert message.strip() and ("error:" in message), (argv, message)
        # The command line's messages name its flags (--batch-size), never Python arguments.
        assert not names_python_argument(message.replace(str(_tmp), "DIR")), (argv, message)


# ------------------------------------------------------------------------ NaN / inf


def _batches(n: int = 8, rows: int = 32, d: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(rows, d, generator=g) for _ in range(n)]


CFG = saes.TrainConfig(batch_size=32, total_tokens=32 * 8, lr=1e-3, init_rows=32, log_every=1)


def test_nonfinite_stops_the_run_naming_step_hook_and_token(tmp_path: Path) -> None:
    batches = _batches()
    batches[5][11, 3] = float("-inf")
    with pytest.raises(saes.NonFiniteError) as err:
        saes.train(saes.TopKSAE(8, 32, k=4), batches, CFG, progress=False)
    msg = str(err.value)
    assert "-inf in batch 5" in msg and "training step 6" in msg and "row 11 of that batch, column 3" in msg
    assert f"token {5 * 32 + 11} of the training stream" in msg and "on_nonfinite='skip'" in msg

    x = torch.cat(_batches())
    x[70, 0] = float("nan")
    store = write_store(tmp_path / "store", x, shard_rows=64)
    from interp.activations.store import ActivationStore

    cfg = saes.TrainConfig(batch_size=32, total_tokens=len(x), lr=1e-3, init_rows=32, on_nonfinite="raise")
    with pytest.raises(saes.NonFiniteError) as err:
        # A store's rows are not all checked up front: the bad row is found when its batch comes.
        saes.train(saes.TopKSAE(8, 32, k=4), ActivationStore.open(store), cfg, progress=False)
    assert f"at hook {HOOK}: NaN in batch" in str(err.value) and "of the training stream" in str(err.value)


def test_nonfinite_rows_are_skipped_when_asked_and_the_run_equals_one_without_them(tmp_path: Path) -> None:
    batches = _batches()
    batches[0][3, 1] = float("nan")  # in the initialisation sample too
    batches[4][[2, 9, 30], 5] = float("inf")
    batches[6][:] = float("nan")  # a whole batch: skipped, no step
    skip = saes.TrainConfig(**{**CFG.to_dict(), "on_nonfinite": "skip", "checkpoint_every": 1})
    torch.manual_seed(0)
    a = saes.TopKSAE(8, 32, k=4)
    with pytest.warns(UserWarning) as caught:
        result = saes.train(a, batches, skip, checkpoint_dir=tmp_path / "ck", progress=False)
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(messages) == 3
    assert "NaN in batch 0" in messages[0] and "step 1 trains on the other 31 rows" in messages[0]
    assert "inf in batch 4" in messages[1] and "row 2 of that batch" in messages[1] and "3 bad rows" in messages[1]
    assert checkpoint.read(tmp_path / "ck")[0]["skipped_rows"] == 1 + 3 + 32

    clean = [b[torch.isfinite(b).all(-1)] for b in batches]
    clean = [b for b in clean if b.shape[0]]
    torch.manual_seed(0)
    b = saes.TopKSAE(8, 32, k=4)
    other = saes.train(b, clean, CFG, progress=False)
    assert result.steps == other.steps == 7 and result.tokens == 8 * 32 - 36
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    record("NaN/inf activations are named (step, hook, token) and stop the run, or are skipped on request",
           "test_bad_input.py::test_nonfinite_*", processes=1, tokens=8 * 32, faults=36, trained_on_bad_rows=0)


def test_nonfinite_in_a_tensor_with_skip(tmp_path: Path) -> None:
    x = torch.randn(256, 8)
    x[[5, 100], 2] = float("nan")
    cfg = saes.TrainConfig(batch_size=64, total_tokens=512, lr=1e-3, on_nonfinite="skip", init_rows=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = saes.train(saes.TopKSAE(8, 16, k=2), x, cfg, progress=False)
    assert any("non-finite" in str(w.message) for w in caught)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert all(bool(torch.isfinite(p).all()) for p in result.sae.parameters())


def test_on_nonfinite_from_the_command_line(tmp_path: Path) -> None:
    from interp.cli import main

    x = torch.randn(512, 8)
    x[300, 4] = float("nan")
    store = write_store(tmp_path / "store", x, shard_rows=128)
    args = ["train", "--store", str(store), "--d-sae", "16", "--k", "2", "--tokens", "512", "--batch-size", "64",
            "--no-progress"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args + ["--out", str(tmp_path / "a")]) == 1
    assert "non-finite" in err.getvalue() and HOOK in err.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args + ["--out", str(tmp_path / "b"), "--on-nonfinite", "skip"]) == 0
    assert saes.load(tmp_path / "b").d_in == 8


def test_an_sae_too_large_to_allocate_is_a_config_error() -> None:
    with pytest.raises(saes.ConfigError, match="cannot create an SAE with d_in=8, d_sae=99999999999"):
        saes.TopKSAE(8, 99_999_999_999, k=4)


def test_a_device_this_machine_lacks_is_a_config_error() -> None:
    x = torch.randn(64, 8)
    for device in ("gpu", "meta", "cuda:99", "xpu"):
        with pytest.raises(saes.ConfigError, match="device="):
            saes.train(saes.TopKSAE(8, 16, k=2), x, saes.TrainConfig(batch_size=32, total_tokens=32, device=device),
                       progress=False)


def test_hook_device_errors() -> None:
    from interp.cli.train import _hook_devices
    from interp.activations.live import check_devices

    assert _hook_devices(["a=cpu"], ["a", "b"]) == {"a": "cpu"}
    with pytest.raises(InterpError, match="HOOK=DEVICE"):
        _hook_devices(["a"], ["a"])
    with pytest.raises(InterpError, match="not one of the --hook"):
        _hook_devices(["c=cpu"], ["a"])
    with pytest.raises(InterpError, match="not a device name"):
        check_devices({"a": "gpu7"}, ["a"])
    if not torch.cuda.is_available():
        with pytest.raises(InterpError, match="CUDA device"):
            check_devices({"a": "cuda:0"}, ["a"])


def test_numpy_and_torch_values_are_taken_as_what_they_mean() -> None:
    import numpy as np

    cfg = saes.TrainConfig(batch_size=np.int64(64), total_tokens=torch.tensor(640), lr=np.float32(1e-3),
                           device=torch.device("cpu"))
    assert (type(cfg.batch_size), type(cfg.total_tokens), type(cfg.lr), cfg.device) == (int, int, float, "cpu")
    import json

    json.dumps(cfg.to_dict())  # what a checkpoint stores
    with pytest.raises(saes.ConfigError, match="batch_size must be an integer"):
        saes.TrainConfig(batch_size=64.0)


@st.composite
def harvest_argv(draw, model_dir: str, corpus: str) -> list[str]:
    argv = ["harvest", "--model", draw(mostly(st.just(model_dir), st.sampled_from([str(_tmp / "nomodel"), "./x"])))]
    for flag, values in [
        ("--hook", mostly(st.sampled_from(["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]),
                          st.sampled_from(["blocks.7.hook_resid_post", "", "hook_nope"]))),
        ("--data", mostly(st.just(corpus), st.sampled_from([str(_tmp / "missing.txt"), str(_STORE)]))),
        ("--tokens", num(1, 200)), ("--context-length", num(2, 64)), ("--batch-size", num(1, 8)),
        ("--shard-tokens", num(1, 300)), ("--dtype", mostly(st.sampled_from(["float32", "bfloat16"]), st.just("int8"))),
        ("--text-field", st.sampled_from(["text", "body"])),
    ]:
        required = flag in ("--hook", "--data")
        if draw(chance(10)) if required else not draw(st.booleans()):
            continue
        argv += [flag, draw(values)]
    if not draw(chance(10)):
        argv += ["--out", str(_tmp / f"h{next(_runs)}")]
    return argv + ["--no-progress"]


@pytest.fixture(scope="module")
def corpus_file() -> str:
    p = _tmp / "corpus.txt"
    p.write_text("\n".join(["the cat sat on the mat", "a dog ran under the tree and the bird flew"] * 20))
    return str(p)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_any_harvest_command_line_ends_in_a_clear_message(data, tiny_gpt2_dir, corpus_file) -> None:
    argv = data.draw(harvest_argv(str(tiny_gpt2_dir), corpus_file))
    code, message = _run_cli(argv)
    if code:
        assert "error:" in message, (argv, message)


# ------------------------------------------------------------------------ known command lines

# Command lines that once ended in a traceback (or, for `world train --steps -1`, in a
# model trained for no steps): each must now end in one error line that names the problem.
# ``{...}`` fields are files made by test_cli_fuzz.make_files; LONG is a 300-character name.
KNOWN_BAD_COMMAND_LINES = [
    # a --device this machine lacks, on every command that takes one
    ("hooks --model {model} --device cuda", 1, "no CUDA device"),
    ("hooks --model {model} --device mps", 1, "MPS is not available"),
    ("hooks --model {model} --device garbage", 1, "not a device name"),
    ("hooks --model {model} --device meta", 1, "runs on cpu, cuda, mps or xpu"),
    ("harvest --model {model} --hook blocks.0.hook_resid_post --data {corpus} --out {out} --device cuda", 1,
     "no CUDA device"),
    ("eval-sae --sae {sae} --model {model} --data {corpus} --device garbage", 1, "not a device name"),
    (("train --store {store} --hook blocks.0.hook_resid_post --hook blocks.0.mlp.hook_post --d-sae 64 --k 4 "
      "--tokens 64 --out {out} --hook-device blocks.0.hook_resid_post=cuda:3"), 1, "--hook-device cuda:3"),
    # integers beyond any sane size or seed
    ("steer --model {model} --sae {sae} --latent 1 --scale 2 --prompt the --seed " + str(10**26), 2, "--seed"),
    ("quickstart --model {model} --out {out} --seed -1", 2, "--seed"),
    ("world corpus --n 10 --out {out} --world-seed " + str(2**63), 2, "--world-seed"),
    ("train --store {store} --d-sae " + str(10**26) + " --k 4 --tokens 64 --out {out}", 2, "--d-sae"),
    ("harvest --model {model} --hook blocks.0.hook_resid_post --data {corpus} --out {out} --context-length "
     + str(10**18), 2, "--context-length"),
    ("harvest --model {model} --hook blocks.0.hook_resid_post --data {corpus} --out {out} --context-length 4096", 1,
     "128 positions"),
    ("quickstart --model {model} --out {out} --tokens " + str(10**26), 2, "--tokens"),
    ("world corpus --n " + str(10**26) + " --out {out}", 2, "--n"),
    ("dashboard --model {model} --sae {sae} --store {store} --latents 0-" + str(10**26), 1, "more than 100,000 latents"),
    # file names too long for the file system
    ("harvest --model {model} --hook blocks.0.hook_resid_post --data {root}/LONG --out {out}", 1,
     "choose a shorter name"),
    ("hooks --model {root}/LONG", 1, "choose a shorter name"),
    # a directory that is not what the flag names
    ("dashboard --model {model} --snmf {empty_dir} --store {store} --latents 0", 1, "snmf.json does not exist"),
    # steer
    ("steer --model {model} --sae {sae} --latent 64 --scale 2 --prompt the", 1, "outside the SAE's 64 latents"),
    ("steer --model {model} --sae {sae} --latent 1 --target-kl -0.5 --prompt the", 2, "--target-kl"),
    ("steer --model {model} --sae {sae} --latent 1 --scale nan --prompt the", 2, "--scale: must be a finite"),
    ("steer --model {model} --sae {sae} --latent 1 --scale 2 --prompt the --positions middle", 2, "--positions"),
    ("steer --model {model} --sae {sae} --latent 1 --scale 2 --prompt the --max-new-tokens 500", 1,
     "128 positions"),
    ("steer --model {model} --vector {missing} --prompt the", 1, "does not exist"),
    ("steer --model {model} --vector {vector_nan} --prompt the", 1, "NaN or infinite"),
    ("steer --model {model} --vector {root}/steer-notjson.safetensors --prompt the", 1, "not valid JSON"),
    ("steer --model {model} --vector {root}/steer-list.safetensors --prompt the", 1, "must be a JSON object"),
    ("steer --model {model} --vector {root}/steer-nohook.safetensors --prompt the", 1, "lacks 'hook'"),
    ("steer --model {model} --vector {root}/steer-badpos.safetensors --prompt the", 1, "positions 'prompt'"),
    ("steer --model {model} --vector {root}/steer-strscale.safetensors --prompt the", 1, "'scale'"),
    # patch
    (("patch --model {model} --clean 'the cat sat' --corrupted 'the dog sat' --correct mat --wrong tree "
      "--hook-template {{ --out {out}"), 1, "--hook-template"),
    ("patch --model {model} --clean 'the cat sat' --corrupted 'the dog sat' --correct mat --wrong mat --out {out}",
     1, "same token"),
    ("patch --model {model} --clean 'the cat sat' --corrupted 'the cat sat' --correct mat --wrong tree --out {out}",
     1, "same metric"),
    # pkck
    ("pkck --model {model} --lr nan --out {out}", 2, "--lr: must be a finite"),
    ("pkck --model {model} --holdout 1.5 --out {out}", 2, "--holdout"),
    ("pkck --model world --hook blocks.0.attn.hook_z --out {out}", 1, "not a residual-stream hook"),
    # world train: refused before any work
    ("world train --threads 0 --out {out}", 2, "--threads"),
    ("world train --steps -1 --out {out}", 2, "--steps"),
    ("world train --steps 10 --out {corpus}", 1, "is a file"),
    ("world eval --model {model} --quick", 1, "vocabulary"),
    # found by the command-line fuzz (test_cli_fuzz.py)
    ("quickstart --model {model} --data {corpus} --out {out} --tokens 300 --snmf-tokens 3", 1, "--snmf-rank 32"),
    ("steer --model {model} --vector {vector} --scale 1e308 --prompt the --sample", 2, "--scale"),
    ("quickstart --model {model} --data {corpus} --out {out} --tokens 64 --d-sae 64 --k 4 --snmf-rank 100",
     1, "more than the 64 token rows"),
    ("steer --sae '' --prompt the", 2, "--sae: an empty path"),
    ("world eval --model {missing}", 1, "no model directory"),
    ("world eval --model {store}", 1, "not a model directory"),
    ("world corpus --n 10 --out {empty_dir}", 1, "it is a directory"),
    ("hooks --model {model} --device xpu", 1, "no XPU device"),
    ("dashboard --model {model} --snmf {corpus} --store {store} --latents 0", 1, "snmf.json"),
    ("dashboard --model {model} --snmf {snmf} --store {store} --latents 5", 1, "outside the SNMF's 4 latents"),
    (("patch --model {model} --clean 'the cat sat on' --corrupted 'the dog sat on' --correct mat --wrong tree "
      "--out {empty_dir}"), 1, "empty-dir"),
    ("quickstart --model {model} --data {corpus} --tokens 64 --d-sae 64 --k 4 --out {binary}", 1, "binary.bin"),
    ("steer --model {model} --sae {sae} --latent 1 --scale 2 --prompt " + "'" + "the " * 130 + "'", 1,
     "128 positions"),
    # a hand-edited cfg.json
    ("eval-sae --sae {sae_badctx} --model {model} --data {corpus}", 1, "context_size"),
    ("steer-eval --sae {sae} --snmf {snmf} --kl nan", 1, "--kl"),
    ("steer-eval --sae {sae} --snmf {snmf} --topics nowhere", 1, "no planted topic"),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    from test_cli_fuzz import make_files

    return make_files(tmp_path_factory.mktemp("known"))


@pytest.mark.parametrize("line, status, names", KNOWN_BAD_COMMAND_LINES, ids=[c[0][:60] for c in KNOWN_BAD_COMMAND_LINES])
def test_known_bad_command_lines_end_in_one_line_naming_the_problem(line, status, names, cli_files, tmp_path,
                                                                    monkeypatch) -> None:
    import shlex

    from test_cli_fuzz import call

    import interp.world.train as world_train

    def no_training(*args, **kwargs):
        raise AssertionError("world train started training")

    monkeypatch.setattr(world_train, "train", no_training)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fields = {k: str(v) for k, v in vars(cli_files).items() if isinstance(v, Path)}
    argv = [a.replace("LONG", "n" * 300) for a in shlex.split(line.format(**fields, out=tmp_path / "out"))]
    out = call(argv, seconds=600)
    assert not out.traceback, (argv, out.stderr, out.escaped)
    errors = [x for x in out.stderr.splitlines() if "error:" in x]
    assert out.code == status and len(errors) == 1, (argv, out.code, out.stderr)
    assert names in errors[0], (names, errors[0])
    assert "Traceback" not in out.stderr


def test_a_full_disk_leaves_no_cut_off_patch_page(cli_files, tmp_path, monkeypatch) -> None:
    """The heat map lands whole or not at all; a full disk is one line, the old page intact."""
    import builtins
    import errno
    import os

    from test_cli_fuzz import call

    from saes.formats import durable

    page = tmp_path / "patch.html"
    page.write_text("the previous page")

    class FillsUp(io.TextIOWrapper):
        """A file on a disk that fills after its first 1000 characters."""

        def write(self, text: str) -> int:
            if len(text) > 1000:
                super().write(text[:1000])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(text)

    def full_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
        return FillsUp(f.detach(), encoding="utf-8") if "w" in mode and "b" not in mode else f

    monkeypatch.setattr(durable, "open", full_open, raising=False)
    out = call(["patch", "--model", str(cli_files.model), "--clean", "the cat sat", "--corrupted", "the dog sat",
                "--correct", "mat", "--wrong", "tree", "--out", str(page)], seconds=600)
    monkeypatch.undo()
    errors = [x for x in out.stderr.splitlines() if "error:" in x]
    assert out.code == 1 and len(errors) == 1 and "No space left on device" in errors[0], out.stderr
    assert page.read_text() == "the previous page"
    assert [p.name for p in tmp_path.iterdir()] == ["patch.html"]  # no temporary file left behind


@pytest.mark.parametrize("text", ["{", "[1]", '{"world": 3}'])
def test_a_damaged_world_json_is_named(text: str, tmp_path: Path) -> None:
    from interp.world import world_of_model

    (tmp_path / "world.json").write_text(text)
    with pytest.raises(InterpError, match="world.json"):
        world_of_model(tmp_path)


def test_a_model_name_too_long_for_the_file_system_is_a_load_error() -> None:
    import interp
    from interp.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"\(300 characters\) cannot be looked up as a model directory .*; choose a shorter name"):
        interp.load("a" * 300)


def test_windows_longer_than_the_learnt_positions_are_refused_before_the_model_runs(tmp_path) -> None:
    from interp.activations.harvest import harvest
    from interp.model.tiny import tiny_model

    gpt2 = tiny_model("gpt2")  # learnt absolute positions: 128
    assert gpt2.max_positions == 128 and tiny_model("llama").max_positions is None  # rotary: no hard limit
    with pytest.raises(InterpError, match=r"context_length=129 is longer than .* can embed \(128 positions\); "
                                          r"use context_length <= 128"):
        harvest(gpt2, ["the cat sat on the mat"] * 40, "blocks.0.hook_resid_post", tmp_path / "s",
                context_length=129, progress=False)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").glob("shard_*"))
    store = harvest(gpt2, ["the cat sat on the mat"] * 40, "blocks.0.hook_resid_post", tmp_path / "t",
                    context_length=128, progress=False)
    assert len(store) > 0


@pytest.mark.parametrize("key, bad", [("hook_name", 7), ("hook_name_out", ["a"]), ("context_size", "16"),
                                      ("context_size", 0), ("prepend_bos", "yes"), ("hook_head_index", True),
                                      ("model_name", {"n": 1})])
def test_a_cfg_json_whose_description_has_the_wrong_type_is_refused_by_name(tmp_path, key, bad) -> None:
    import json

    where = tmp_path / "sae"
    saes.TopKSAE(8, 16, k=2, metadata={"hook_name": "blocks.0.hook_resid_post", "context_size": 16}).save(where)
    cfg = json.loads((where / "cfg.json").read_text())
    assert saes.load(where).metadata["context_size"] == 16  # as saved, it loads
    cfg["metadata"][key] = bad
    (where / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(saes.FormatError, match=f"cfg.json: metadata {key} is .* but must be .* or null"):
        saes.load(where)
