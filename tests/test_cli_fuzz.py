"""Every `interp` command line, generated: it ends in success or one ``error:`` line, never a
traceback; exit status 0 (done), 1 (the toolkit's error), 2 (argparse's usage error) or 130
(interrupted).

The commands and their flags come from the argparse parser itself (a new flag is fuzzed
without a change here). Values are drawn from valid ones (a tiny model, small sizes, files
made for the purpose), edge integers, NaN and infinities, empty and very long strings,
paths to missing files, directories and special files, and junk. Work that would run for
minutes (training the world model, its evaluation, the PK/CK sweep, the steering
comparison, SAE training) is stopped or cut short where it starts: what is fuzzed is how a
command reads its input, up to and including the first real work.

``python tests/test_cli_fuzz.py N`` runs N generated calls (N/commands per command) and
prints how many ended in a traceback, by command and by cause.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import os
import signal
import socket
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __name__ == "__main__":  # before the hub client is imported, which reads it once
    os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # test_cli, also when run as a script
from test_cli import _parsers

TINY_HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post",
              "blocks.0.hook_resid_pre", "hook_embed"]
# Commands with subcommands only print their help; every other parser is a command to fuzz.
COMMANDS = sorted(name for name, p in _parsers().items()
                  if name and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions))
# A call using more CPU seconds than this is cut (recorded as an event, not a failure): a
# valid command doing real work, which is not what this test is about.
CALL_SECONDS = float(os.environ.get("INTERP_FUZZ_CALL_SECONDS", "10"))


class WorkStarted(BaseException):
    """Raised where a long job would begin: every check before it has passed."""


class TooLong(BaseException):
    """The call ran past CALL_SECONDS."""


# ------------------------------------------------------------------------ files to point at


def make_files(root: Path) -> SimpleNamespace:
    """A tiny model, corpus, store, SAE, SNMF and steering files, and the bad files beside them."""
    import saes
    from interp.activations.harvest import harvest
    from interp.interventions.steering import Steering
    from interp.model.loading import load
    from interp.model.tiny import tiny_model

    root.mkdir(parents=True, exist_ok=True)
    f = SimpleNamespace(root=root)
    model = tiny_model("gpt2")
    f.model = root / "tiny-gpt2"
    model.model.save_pretrained(f.model)
    model.tokenizer.save_pretrained(f.model)
    lines = ["the cat sat on the mat", "a dog ran under the tree and the bird flew", "the red bird sang"] * 20
    f.corpus = root / "corpus.txt"
    f.corpus.write_text("\n".join(lines) + "\n")
    f.jsonl = root / "corpus.jsonl"
    f.jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    f.store = root / "store"
    model = load(f.model)  # the store records the model by the name the commands load it by
    harvest(model, str(f.corpus), ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"], f.store, max_tokens=400,
            context_length=16, batch_size=8, progress=False)

    torch.manual_seed(0)
    sae = saes.TopKSAE(32, 64, k=4)
    sae.metadata.update(hook_name="blocks.0.hook_resid_post", model_name=str(f.model))
    f.sae = root / "sae"
    sae.save(f.sae)
    f.sae_nohook = root / "sae-nohook"
    saes.TopKSAE(32, 64, k=4).save(f.sae_nohook)
    f.sae_badctx = root / "sae-badctx"  # a cfg.json edited by hand: a context size that is no integer
    sae.save(f.sae_badctx)
    cfg = json.loads((f.sae_badctx / "cfg.json").read_text())
    cfg.setdefault("metadata", {})["context_size"] = "long"
    (f.sae_badctx / "cfg.json").write_text(json.dumps(cfg))

    acts = torch.relu(torch.randn(200, 128))
    result = saes.SNMF(rank=4, max_iter=5).fit(acts)
    result.config.update(hook_name="blocks.0.mlp.hook_post")
    f.snmf = root / "snmf"
    result.save(f.snmf)

    # A quickstart-like directory for the world model (steer-eval reads FROM/topk and FROM/snmf).
    f.qs = root / "qs"
    world_sae = saes.TopKSAE(256, 64, k=4)
    world_sae.metadata.update(hook_name="blocks.2.hook_resid_post", model_name="world")
    world_sae.save(f.qs / "topk")
    world_snmf = saes.SNMF(rank=4, max_iter=5).fit(torch.relu(torch.randn(100, 448)))
    world_snmf.config.update(hook_name="blocks.2.mlp.hook_post")
    world_snmf.save(f.qs / "snmf")

    f.vector = root / "steer.safetensors"
    Steering.from_sae(sae, 3, scale=4.0).save(f.vector)
    f.vector_nan = root / "steer-nan.safetensors"
    Steering("blocks.0.hook_resid_post", torch.full((32,), float("nan")), 1.0).save(f.vector_nan)
    f.bad_vectors = [f.vector_nan]
    for name, spec in [("notjson", "{"), ("list", "[1, 2]"), ("nohook", '{"scale": 1, "positions": "all"}'),
                       ("badpos", '{"hook": "blocks.0.hook_resid_post", "scale": 1, "positions": {"prompt": 5}}'),
                       ("strscale", '{"hook": "blocks.0.hook_resid_post", "scale": "big", "positions": "all"}')]:
        f.bad_vectors.append(_steering_file(root / f"steer-{name}.safetensors", spec))

    f.empty_dir = root / "empty-dir"
    f.empty_dir.mkdir()
    f.empty_file = root / "empty.txt"
    f.empty_file.write_text("")
    f.binary = root / "binary.bin"
    f.binary.write_bytes(bytes(range(256)) * 4)
    f.sock = root / "s.sock"
    with contextlib.suppress(OSError):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(f.sock))
        s.close()
    f.missing = root / "missing" / "nothing.txt"
    f.long_name = root / ("n" * 300)
    f.under_file = f.corpus / "out"  # a path whose parent is a file
    f.outs = itertools.count()
    return f


def _steering_file(path: Path, spec: str) -> Path:
    """A whole file (its checksum right) whose spec is ``spec``."""
    from saes.formats.durable import atomic_save_tensors

    atomic_save_tensors(path, {"vector": torch.ones(32)}, {"steering": spec})
    return path


# ------------------------------------------------------------------------ values


EDGE_INTS = ["0", "-1", "1", str(2**31), str(2**63), str(10**18), str(10**26), "-" + str(10**26)]
EDGE_FLOATS = ["nan", "inf", "-inf", "-0.5", "1e308", "1e-320", "0"]
JUNK = ["", " ", "x", "{", "}", "%s", "{layer}", "a,b", "1,,2", "é", "🙂", "..", "~", "-", "--", "1e3", "3.5",
        "x" * 5000, "blocks.{layer}", "0-", "-0", "5-2", "=", "\\"]


def bad_paths(f: SimpleNamespace) -> list[str]:
    return [str(p) for p in (f.missing, f.empty_dir, f.empty_file, f.binary, f.sock, f.long_name, f.under_file,
                             Path("/dev/null"), f.corpus, f.store)]


# Commands that only mean something on a world model (a model that speaks its language).
WORLD_COMMANDS = {"pkck", "steer-eval", "world eval"}
# Optional flags that a call usually gives, so that whole valid calls come up: without them
# the command refuses at once ("--sae needs --latent", "live training needs --hook").
USUAL = {"train": {"hooks", "no_progress"}, "harvest": {"no_progress"}, "steer": {"model", "latent", "scale"},
         "patch": {"model", "out"}, "dashboard": {"model", "out"}, "hooks": {"model"},
         "quickstart": {"model", "data", "tokens", "d_sae", "k", "out"}, "steer-eval": {"source", "out"},
         "eval-sae": {"tokens"}, "world eval": {"quick"}, "pkck": {"out"}}


def valid_values(f: SimpleNamespace, command: str, action: argparse.Action) -> list[str] | None:
    """Values this flag of this command accepts (None: any from the generic pools)."""
    dest, flag = action.dest, (action.option_strings or [""])[-1]
    if command in WORLD_COMMANDS and dest == "model":
        return ["world"]
    if command == "steer-eval" and dest in ("sae", "snmf", "source"):
        return [str(f.qs / {"sae": "topk", "snmf": "snmf", "source": ""}[dest])]
    if command in ("quickstart", "train") and dest in ("d_sae", "k"):
        return {"d_sae": ["64", "128"], "k": ["1", "4"]}[dest]  # k below d_sae
    if command == "quickstart" and dest == "tokens":
        return ["64", "300", "2000"]
    hooks = TINY_HOOKS[:3]
    by_dest: dict[str, list[str]] = {
        "model": [str(f.model)] * 5 + ["world"], "data": [str(f.corpus), str(f.jsonl)],
        "store": [str(f.store)], "sae": [str(f.sae)], "saes": [str(f.sae), str(f.sae_nohook)], "snmf": [str(f.snmf)], "vector": [str(f.vector)],
        "hooks": hooks, "hook": hooks, "device": ["cpu"], "hook_devices": [f"{hooks[0]}=cpu"],
        "prompt": ["the cat", "a dog ran"], "clean": ["the cat sat on"], "corrupted": ["the dog sat on"],
        "correct": ["mat"], "wrong": ["tree"], "hook_template": ["blocks.{layer}.hook_resid_pre"],
        "latent": ["0", "3"], "latents": ["0,1", "2-4", "5"], "filter": ["resid", "mlp"],
        "ranks": ["1", "1,2"], "seeds": ["0", "0,1"], "layers": ["0,1", "all"], "kl": ["0.5", "0.25,1"],
        "topics": ["school", "music,school"], "groups": ["16,48"], "text_field": ["text"],
        "source": [str(f.root)], "overwrite_default": [],
        # valid but at an edge: the smallest sizes, shares near 0 and 1, a width equal to k
        "context_length": ["1", "2", "16", "128"], "holdout": ["0.01", "0.99", "0.3"], "d_sae": ["1", "4", "64"],
        "k": ["1", "4", "64"], "snmf_rank": ["1", "4", "500"], "snmf_tokens": ["1", "3", "100"],
        "examples": ["0", "1", "3"], "quantile_examples": ["0", "1", "3"], "shard_tokens": ["1", "7", "100"],
        "tokens": ["1", "2", "10", "300"], "max_tokens": ["1", "10"], "batch_size": ["1", "2", "3", "64"],
        "scale": ["0", "-3", "2", "1e6"], "epochs": ["1", "2"],
    }
    if dest in by_dest:
        return by_dest[dest]
    if dest in ("out", "json") or flag in ("--out", "--json"):
        return [str(f.root / "out" / f"o{next(f.outs)}")]
    if action.choices:
        return [str(c) for c in action.choices]
    kind = getattr(action.type, "__name__", None)
    if kind == "int":
        return ["1", "2", "3", "4", "8"]
    if kind == "float":
        return ["0.5", "0.01", "0.3"]
    return None


PATH_DESTS = {"model", "data", "store", "sae", "snmf", "vector", "out", "json", "source", "saes"}


def bad_values(f: SimpleNamespace, action: argparse.Action) -> list[str]:
    """Values this flag should refuse, of the kinds it is likely to meet: edge numbers for a
    number, odd paths for a path, and junk of the shape the flag parses."""
    hook = TINY_HOOKS[0]
    by_dest: dict[str, list[str]] = {
        "latents": ["-1", "5-2", "0-" + str(10**26), "64", str(10**26), "a", "", ",", "1-", "-"],
        "latent": ["-1", "64", str(10**26), "x"],
        "ranks": ["0", "5", "-1", str(10**26), "1,,", "x", ""], "seeds": ["-1", str(10**26), "0-3", "x", ""],
        "layers": ["-1", "99", str(10**26), "x", "", "all,1"], "kl": ["nan", "inf", "-1", "0", "", "x", "1e308"],
        "topics": ["nowhere", "", ",", "school,,"],
        "prompt": ["", " ", "x" * 5000, "🙂", "<pad>", "<bos>"], "clean": ["", "x" * 5000, "the"],
        "corrupted": ["", "x" * 5000, "the cat"], "correct": ["", "the cat", "🙂", "mat"], "wrong": ["", "the cat", "mat"],
        "hook_template": ["{", "}", "{0}", "{x}", "{layer", "hook_embed", "blocks.{layer}.attn.hook_z",
                          "blocks.{layer}.mlp.hook_post", "{layer.real}"],
        "hook_devices": ["x", "=cpu", f"{hook}=", f"{hook}=cuda", f"{hook}=meta", f"{hook}=garbage", "nohook=cpu"],
        "hooks": ["blocks.9.hook_resid_post", "", "hook_nope", "blocks.0.attn.hook_z", "blocks.-1.hook_resid_post"],
        "hook": ["blocks.9.hook_resid_post", "", "hook_nope", "blocks.0.attn.hook_z", "hook_embed"],
        "device": ["cuda", "mps", "garbage", "meta", "xpu", "", "cuda:99", "cpu:1", "hpu", "CPU"],
        "groups": ["0,64", "-1,65", "a", str(10**26), "64", "", "32,32,0"],
        "filter": JUNK, "text_field": ["", "body", "x" * 5000],
    }
    if action.dest in by_dest:
        return by_dest[action.dest]
    if action.dest in PATH_DESTS or action.option_strings and action.option_strings[-1] in ("--out", "--json"):
        return bad_paths(f) + ["", "~", ".."]
    kind = getattr(action.type, "__name__", None)
    if kind == "int":
        return EDGE_INTS + ["x", "", "3.5", "1e3"]
    if kind == "float":
        return EDGE_FLOATS + EDGE_INTS[:3] + ["x", "", str(10**26)]
    return JUNK + EDGE_INTS[:3] + bad_paths(f)[:2]


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (``st.integers`` would favour its bounds)."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def command_line(draw: Any, f: SimpleNamespace, command: str) -> list[str]:
    """``interp COMMAND ...``: each required flag usually, each optional one now and then, a
    few values bad (often none, so whole valid calls come up too)."""
    parser = _parsers()[command]
    grouped = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    chosen_in_group = {id(g): draw(st.sampled_from(g._group_actions)) for g in parser._mutually_exclusive_groups}
    flags = []
    for action in _actions(parser):
        group = grouped.get(id(action))
        if group is not None and group.required:
            keep = chosen_in_group[id(group)] is action or draw(one_in(15))
            keep = keep and not draw(one_in(15))
        elif action.required:
            keep = not draw(one_in(15))
        elif action.dest in USUAL.get(command, ()):
            keep = not draw(one_in(5))
        else:
            keep = draw(one_in(3))
        if keep:
            flags.append(action)
    n_bad = draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))
    takes_value = [a for a in flags if a.nargs != 0]
    bad = set(draw(st.lists(st.sampled_from(takes_value), max_size=n_bad, unique_by=id))) if takes_value else set()
    argv = command.split()
    for action in flags:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
            continue
        repeat = draw(st.integers(1, 2)) if isinstance(action, argparse._AppendAction) else 1
        for _ in range(repeat):
            good = valid_values(f, command, action)
            pool = bad_values(f, action) if action in bad or not good else good
            value = draw(st.sampled_from(pool))
            argv += [f"{flag}={value}"] if value.startswith("-") or draw(one_in(5)) else [flag, value]
    for action in parser._actions:  # positional arguments (SAE directories, ...)
        if action.option_strings or isinstance(action, argparse._SubParsersAction) or draw(one_in(15)):
            continue
        many = action.nargs in ("+", "*")
        for _ in range(draw(st.integers(1, 3)) if many else 1):
            good = valid_values(f, command, action)
            pool = bad_values(f, action) if not good or draw(one_in(5)) else good
            value = draw(st.sampled_from(pool))
            if value.startswith("-"):
                argv.append("--")  # what follows is positional, even if it looks like a flag
            argv.append(value)
    return argv


# ------------------------------------------------------------------------ running a call


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Cut the call after ``seconds`` of this process's CPU time (not wall time: on a busy
    machine wall time says little about how much work a call does)."""
    def stop(signum: int, frame: Any) -> None:
        raise TooLong

    previous = signal.signal(signal.SIGPROF, stop)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


# Memory a call may take beyond what this process holds already: an allocation past it fails
# in the call (MemoryError) instead of waking the OOM killer on a machine others share.
CALL_MEMORY = int(os.environ.get("INTERP_FUZZ_CALL_GIB", "6")) << 30


@contextlib.contextmanager
def _memory_limit(extra: int) -> Iterator[None]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    limit = mapped + extra if hard == resource.RLIM_INFINITY else min(mapped + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def long_work_stubbed() -> Iterator[None]:
    """Jobs of minutes stop where they start; SAE training is cut to a few hundred tokens."""
    import interp.world.evaluate as world_evaluate
    import interp.world.train as world_train
    import saes
    from interp.activations import harvest, live, store_train
    from interp.interventions import steering_eval
    from probes import pkck

    def started(*args: Any, **kwargs: Any) -> Any:
        raise WorkStarted

    def world_train_started(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        # The world's own training would take 40 minutes; its settings must be sane by now.
        assert cfg.steps >= 1 and cfg.threads >= 1, f"world train reached training with {cfg}"
        raise WorkStarted

    def short(train: Any, config_at: int) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            args = list(args)
            cfg = args[config_at]
            if isinstance(cfg.total_tokens, int) and cfg.total_tokens > 256:
                args[config_at] = dataclasses.replace(cfg, total_tokens=256)
            return train(*args, **kwargs)
        return run

    def capped(fn: Any) -> Any:  # the quickstart harvests 40,000 tokens by default; 2,000 do here
        def run(*args: Any, max_tokens: Any = None, **kwargs: Any) -> Any:
            quickstart = sys._getframe(1).f_code.co_filename.endswith("quickstart.py")
            if quickstart and isinstance(max_tokens, int) and max_tokens > 2000:
                max_tokens = 2000
            return fn(*args, max_tokens=max_tokens, **kwargs)
        return run

    patches = [(harvest, "harvest", capped(harvest.harvest)), (world_train, "train", world_train_started), (world_evaluate, "evaluate", started),
               (pkck, "answer_all", started), (steering_eval, "paper_protocol", started),
               (steering_eval, "compare_methods", started), (saes, "train", short(saes.train, 2)),
               (store_train, "train_store", short(store_train.train_store, 2)),
               (live, "train_live", short(live.train_live, 3))]
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    for module, name, fn in patches:
        setattr(module, name, fn)
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


@dataclasses.dataclass
class Outcome:
    code: Any
    stderr: str
    escaped: BaseException | None = None
    cause: str = ""

    @property
    def traceback(self) -> bool:
        return self.escaped is not None or "Traceback" in self.stderr or self.code not in (0, 1, 2, 130)


def call(argv: list[str], seconds: float = CALL_SECONDS) -> Outcome:
    """``interp.cli.main(argv)`` in this process, stdout and stderr captured."""
    from interp.cli import main

    err = io.StringIO()
    escaped: BaseException | None = None
    code: Any = None
    torch.set_num_threads(1)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with _time_limit(seconds), _memory_limit(CALL_MEMORY), long_work_stubbed():
                code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except WorkStarted:
            code = "work started"
        except TooLong:
            code = "cut"
        except Exception as e:  # noqa: BLE001 - what the test is looking for
            escaped = e
    out = Outcome(code, err.getvalue(), escaped)
    if code in ("work started", "cut"):
        out.code = 0
        out.cause = code
    elif escaped is not None:
        out.cause = _cause(escaped)
    return out


def _cause(err: BaseException) -> str:
    """The exception's type and the deepest frame of this toolkit's code it passed through."""
    ours = [fr for fr in traceback.extract_tb(err.__traceback__)
            if any(f"/{pkg}/" in fr.filename for pkg in ("interp", "saes", "probes"))]
    where = f"{Path(ours[-1].filename).parent.name}/{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(err).__name__} at {where}"


def check(argv: list[str]) -> None:
    out = call(argv)
    event(f"exit status {out.code}" + (f" ({out.cause})" if out.cause else ""))
    assert not out.traceback, (argv, out.code, out.cause, out.stderr[-2000:],
                               "".join(traceback.format_exception(out.escaped)) if out.escaped else "")
    if out.code in (1, 2):
        errors = [line for line in out.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, (argv, out.stderr[-2000:])


# ------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return make_files(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def in_scratch(files: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Relative default outputs (runs/..., patch.html) land in a scratch directory; no hub."""
    scratch = files.root / "cwd"
    scratch.mkdir(exist_ok=True)
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


FUZZ = settings(max_examples=6, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.mark.parametrize("command", COMMANDS)
@FUZZ
@given(data=st.data())
def test_any_command_line_ends_in_success_or_one_error_line(command, data, files, in_scratch) -> None:
    check(data.draw(command_line(files, command), label="argv"))


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_many_command_lines_end_in_success_or_one_error_line(command, data, files, in_scratch) -> None:
    check(data.draw(command_line(files, command), label="argv"))


# ------------------------------------------------------------------------ counting


def count(n: int, root: Path, report: Path | None = None) -> dict:
    """Run about ``n`` generated calls (the same number per command), traceback or not, and
    tally the tracebacks by command and cause."""
    from hypothesis import Phase

    f = make_files(root)
    (root / "cwd").mkdir(exist_ok=True)
    os.chdir(root / "cwd")
    os.environ["HF_HUB_OFFLINE"] = "1"
    per = max(1, n // len(COMMANDS))
    tally: dict = {"calls": 0, "tracebacks": 0, "cut": 0, "work_started": 0, "by_command": {}, "causes": {}}
    def record(command: str, argv: list[str]) -> None:
        out = call(argv)
        tally["calls"] += 1
        tally["cut"] += out.cause == "cut"
        tally["work_started"] += out.cause == "work started"
        ends = tally.setdefault("outcomes", {}).setdefault(command, {})
        end = out.cause or f"exit {out.code}"
        ends[end] = ends.get(end, 0) + 1
        said = [line for line in out.stderr.splitlines() if "error:" in line]
        if said:  # what the refusals say, shortened: shows how deep the calls get
            key = said[0].split("error:", 1)[1].strip()[:70]
            seen = tally.setdefault("errors", {}).setdefault(command, {})
            seen[key] = seen.get(key, 0) + 1
        if out.traceback:
            tally["tracebacks"] += 1
            tally["by_command"][command] = tally["by_command"].get(command, 0) + 1
            tally["causes"].setdefault(f"{command}: {out.cause or f'stderr/exit {out.code}'}", argv)

    def recorder(command: str) -> Any:
        def run(argv: list[str]) -> None:
            record(command, argv)
        return run

    for command in COMMANDS:
        run = settings(max_examples=per, deadline=None, database=None, phases=[Phase.generate],
                       suppress_health_check=list(HealthCheck))(
            given(argv=command_line(f, command))(recorder(command)))
        run()
        tally["distinct_causes"] = len(tally["causes"])
        tally["commands_done"] = tally.get("commands_done", 0) + 1
        if report is not None:  # after each command, so that a long count can be read as it goes
            report.write_text(json.dumps(tally, indent=1, default=str))
        print(command, tally["by_command"].get(command, 0), file=sys.stderr, flush=True)
    return tally


if __name__ == "__main__":
    result = count(int(sys.argv[1]) if len(sys.argv) > 1 else 780, Path(tempfile.mkdtemp(prefix="interp-fuzz-")),
                   Path(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(json.dumps(result, indent=1, default=str))
