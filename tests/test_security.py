"""Attacks through files: pickles, malformed cfg.json and manifests, escaping paths, remote code.

Each attack is tried for real and must fail with the toolkit's own error, before anything
it smuggled in runs or is read.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

import interp
import saes
from interp.errors import ModelLoadError, StoreError
from interp.activations.store import MANIFEST, ActivationStore
from reliability import ROOT, record
from saes.training import checkpoint
from saes.errors import UnknownKeyWarning
from store_util import write_store

PACKAGES = ("saes", "interp", "probes", "bench")


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickle_bomb(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))


def torch_save_bomb(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"W_dec": torch.zeros(2, 2), "evil": Payload(marker)}, path)


# ------------------------------------------------------------------------ no unpickling


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            out.append((f"{base}.{name}" if base else name, node))
    return out


def test_no_loader_unpickles() -> None:
    """Static check of every module: no pickle loads, torch.load only with weights_only=True."""
    offenders = []
    n_files = 0
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            n_files += 1
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for name, call in _calls(tree):
                kw = {k.arg: k.value for k in call.keywords}
                where = f"{path.relative_to(ROOT)}:{call.lineno} {name}"
                if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "Unpickler"):
                    offenders.append(where)
                elif name == "torch.load":
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        offenders.append(where + " without weights_only=True")
                elif name.endswith(("np.load", "numpy.load")):
                    ap = kw.get("allow_pickle")
                    if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                        offenders.append(where + " with allow_pickle")
    assert n_files > 50
    assert not offenders, offenders


@pytest.mark.parametrize("bomb", [pickle_bomb, torch_save_bomb])
def test_pickled_files_are_refused_without_running_them(tmp_path: Path, bomb) -> None:
    marker = tmp_path / "PWNED"
    attacks = 0
    # An SAE directory whose weights are a pickle.
    sae_dir = tmp_path / "sae"
    saes.TopKSAE(8, 16, k=2).save(sae_dir)
    bomb(sae_dir / "sae_weights.safetensors", marker)
    with pytest.raises(saes.FormatError, match="sae_weights.safetensors"):
        saes.load(sae_dir)
    attacks += 1
    # sparsify's file name.
    (sae_dir / "sae_weights.safetensors").unlink()
    bomb(sae_dir / "sae.safetensors", marker)
    with pytest.raises(saes.FormatError, match="sae.safetensors"):
        saes.load(sae_dir)
    attacks += 1
    # A training checkpoint.
    bomb(tmp_path / "ck" / "checkpoint.safetensors", marker)
    with pytest.raises(saes.CheckpointError, match="checkpoint.safetensors"):
        checkpoint.read(tmp_path / "ck")
    with pytest.raises(saes.CheckpointError):
        saes.train(saes.TopKSAE(8, 16, k=2), torch.randn(128, 8), saes.TrainConfig(batch_size=32, total_tokens=64),
                   checkpoint_dir=tmp_path / "ck", resume=True, progress=False)
    attacks += 2
    # A store shard (same size as the real one, so only the checksum stands in the way).
    store = write_store(tmp_path / "store", torch.randn(64, 8), shard_rows=32)
    shard = store / "shard_00001.safetensors"
    size = shard.stat().st_size
    bomb(shard, marker)
    shard.write_bytes(shard.read_bytes().ljust(size, b"\0")[:size])
    with pytest.raises(StoreError, match="shard_00001.safetensors"):
        ActivationStore.open(store).verify()
    attacks += 1
    # A steering vector file.
    from interp.interventions.steering import Steering

    bomb(tmp_path / "vec.safetensors", marker)
    with pytest.raises(Exception) as err:
        Steering.load(tmp_path / "vec.safetensors")
    assert not isinstance(err.value, (pickle.UnpicklingError, AttributeError))
    attacks += 1
    assert not marker.exists(), "a loader unpickled a file"
    record("No loader unpickles: pickled SAE, checkpoint, shard and vector files are refused unrun",
           f"test_security.py::test_pickled_files_are_refused_without_running_them[{bomb.__name__}]",
           processes=1, faults=attacks, code_run=0)


# ------------------------------------------------------------------------ cfg.json


def _saved_cfg(tmp_path: Path, sae: saes.SAE | None = None) -> tuple[Path, dict]:
    d = tmp_path / "sae"
    (sae or saes.TopKSAE(8, 16, k=2)).save(d)
    return d, json.loads((d / "cfg.json").read_text())


@pytest.mark.parametrize(
    "path,value,key",
    [
        (("d_in",), "8", "d_in"),
        (("d_sae",), 16.5, "d_sae"),
        (("k",), True, "k"),
        (("apply_b_dec_to_input",), "yes", "apply_b_dec_to_input"),
        (("dtype",), "float128", "dtype"),
        (("metadata",), "oops", "metadata"),
        (("saes", "architecture"), "evil", "architecture"),
        (("saes", "config", "k"), "2", "k"),
        (("saes", "config", "d_sae"), -16, "d_sae"),
        (("saes", "config"), [1, 2], "config"),
        (("saes",), "topk", "saes"),
    ],
)
def test_cfg_json_wrong_types_are_errors(tmp_path: Path, path: tuple, value, key: str) -> None:
    d, cfg = _saved_cfg(tmp_path)
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(saes.FormatError) as err:
        saes.load(d)
    assert "cfg.json" in str(err.value) and key in str(err.value), str(err.value)


def test_cfg_json_unknown_keys_warn_and_are_ignored(tmp_path: Path) -> None:
    d, cfg = _saved_cfg(tmp_path, saes.MatryoshkaSAE(8, [4, 12], k=2))
    cfg["from_the_future"] = 1
    cfg["saes"]["config"]["new_knob"] = 3
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.warns(UnknownKeyWarning) as caught:
        sae = saes.load(d)
    text = " ".join(str(w.message) for w in caught)
    assert "from_the_future" in text and "new_knob" in text
    assert isinstance(sae, saes.MatryoshkaSAE) and sae.group_sizes == [4, 12]


def test_saelens_files_are_type_checked_but_their_own_keys_are_not_warned_about(tmp_path: Path) -> None:
    d, cfg = _saved_cfg(tmp_path)
    del cfg["saes"]
    cfg["sae_lens_training_version"] = "6.0"  # a key of SAELens's own
    (d / "cfg.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownKeyWarning)
        assert saes.load(d).d_sae == 16
    cfg["d_sae"] = "16"
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(saes.FormatError, match="'d_sae'"):
        saes.load(d)


def test_checkpoint_state_is_validated(tmp_path: Path) -> None:
    saes.train(saes.TopKSAE(8, 16, k=2), torch.randn(128, 8), saes.TrainConfig(batch_size=32, total_tokens=64),
               checkpoint_dir=tmp_path, progress=False)
    state, tensors = checkpoint.read(tmp_path)
    checkpoint.write(tmp_path, {**state, "step": "2"}, tensors)
    with pytest.raises(saes.CheckpointError, match="'step'"):
        checkpoint.read(tmp_path)
    checkpoint.write(tmp_path, {**state, "extra": 1}, tensors)
    with pytest.warns(UnknownKeyWarning, match="extra"):
        checkpoint.read(tmp_path)


# ------------------------------------------------------------------------ manifests


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "store", torch.randn(96, 4), shard_rows=32)


def _edit_manifest(store: Path, edit) -> None:
    m = json.loads((store / MANIFEST).read_text())
    edit(m)
    (store / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda m: m.update(context_length="8"), "context_length"),
        (lambda m: m.update(dtype="float64"), "dtype"),
        (lambda m: m.update(hooks="blocks.0"), "hooks"),
        (lambda m: m["hooks"][0].update(shape=[4, "x"]), "shape"),
        (lambda m: m["shards"][0].update(rows=-1), "rows"),
        (lambda m: m["shards"][1].update(bytes="123"), "bytes"),
        (lambda m: m["shards"][2].update(sha256="0" * 10), "sha256"),
        (lambda m: m["shards"][0].pop("sha256"), "sha256"),
        (lambda m: m.update(complete="yes"), "complete"),
    ],
)
def test_manifest_wrong_types_are_errors(store: Path, edit, key: str) -> None:
    _edit_manifest(store, edit)
    with pytest.raises(StoreError) as err:
        ActivationStore.open(store)
    assert "manifest.json" in str(err.value) and key in str(err.value)


def test_manifest_unknown_keys_warn(store: Path) -> None:
    _edit_manifest(store, lambda m: (m.update(writer="v9"), m["shards"][0].update(compression="zstd")))
    with pytest.warns(UnknownKeyWarning) as caught:
        s = ActivationStore.open(store)
    text = " ".join(str(w.message) for w in caught)
    assert "writer" in text and "compression" in text and len(s) == 96


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/shard_00000.safetensors", "..",
                                  "..\\outside.safetensors", "C:evil.safetensors"])
def test_manifest_paths_cannot_escape_the_store(store: Path, name: str) -> None:
    outside = store.parent / "outside.safetensors"
    outside.write_bytes((store / "shard_00000.safetensors").read_bytes())
    _edit_manifest(store, lambda m: m["shards"][0].update(file=name))
    with pytest.raises(StoreError, match="would leave the store's directory"):
        ActivationStore.open(store)


def test_a_shard_linked_outside_the_store_is_refused(store: Path) -> None:
    outside = store.parent / "elsewhere.safetensors"
    (store / "shard_00001.safetensors").rename(outside)
    os.symlink(outside, store / "shard_00001.safetensors")
    with pytest.raises(StoreError, match="outside the store's directory"):
        ActivationStore.open(store)
    record("Paths inside manifests cannot escape their directory (names and links)",
           "test_security.py::test_manifest_paths_cannot_escape_the_store, "
           "test_a_shard_linked_outside_the_store_is_refused", processes=1, faults=7, escaped=0)


def test_manifest_that_is_not_an_object(store: Path) -> None:
    (store / MANIFEST).write_text("[1, 2, 3]")
    with pytest.raises(StoreError, match="JSON object"):
        ActivationStore.open(store)


# ------------------------------------------------------------------------ remote code


def _model_with_custom_code(d: Path, marker: Path) -> Path:
    d.mkdir()
    code = f"open({str(marker)!r}, 'w').close()\n"
    (d / "configuration_evil.py").write_text(code + "from transformers import PretrainedConfig\n"
                                             "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (d / "modeling_evil.py").write_text(code)
    (d / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"},
    }))
    return d


def test_remote_code_is_off_unless_asked_for(tmp_path: Path, capsys) -> None:
    import inspect

    assert inspect.signature(interp.load).parameters["trust_remote_code"].default is False
    marker = tmp_path / "RAN"
    model_dir = _model_with_custom_code(tmp_path / "model", marker)
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        interp.load(model_dir)
    from interp.cli import main

    assert main(["hooks", "--model", str(model_dir)]) == 1
    assert "trust_remote_code" in capsys.readouterr().err
    assert not marker.exists(), "code shipped with a model ran without trust_remote_code"
    record("trust_remote_code is off unless passed: a model with custom code is refused, its code unrun",
           "test_security.py::test_remote_code_is_off_unless_asked_for", processes=1, faults=2, code_run=0)


# ------------------------------------------------------------------------ generated damage

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node, prefix=()):
    """Every key path in a JSON object (for choosing what to damage)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _damaged(doc: dict, data) -> dict:
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        node = doc
        for p in path[:-1]:
            node = node[p]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(_json_junk)
    return doc


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data(), arch=st.sampled_from(["topk", "batchtopk", "matryoshka", "mp"]))
def test_any_damaged_cfg_json_loads_or_is_a_format_error(tmp_path_factory, data, arch) -> None:
    d = tmp_path_factory.mktemp("sae")
    sae = {"topk": lambda: saes.TopKSAE(8, 16, k=2), "batchtopk": lambda: saes.BatchTopKSAE(8, 16, k=2),
           "matryoshka": lambda: saes.MatryoshkaSAE(8, [4, 12], k=2), "mp": lambda: saes.MPSAE(8, 16, k=2)}[arch]()
    sae.save(d)
    cfg = _damaged(json.loads((d / "cfg.json").read_text()), data)
    (d / "cfg.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownKeyWarning)
        try:
            loaded = saes.load(d)
        except saes.FormatError as err:
            assert "cfg.json" in str(err) or "sae_weights" in str(err), str(err)
            return
    x = torch.randn(3, 8)
    assert loaded.encode(x).shape == (3, loaded.d_sae)  # what loads, works


@FUZZ
@given(data=st.data())
def test_any_damaged_manifest_opens_or_is_a_store_error(tmp_path_factory, data) -> None:
    store = write_store(tmp_path_factory.mktemp("store") / "s", torch.randn(64, 4), shard_rows=16)
    m = _damaged(json.loads((store / MANIFEST).read_text()), data)
    (store / MANIFEST).write_text(json.dumps(m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            s = ActivationStore.open(store)
            rows = torch.cat(list(s.batches(16, shuffle=False)))
        except StoreError as err:
            assert "manifest.json" in str(err) or "shard" in str(err), str(err)
            return
    assert rows.shape[1] == s.d


def test_a_manifest_that_misdescribes_its_shards_is_a_store_error(store: Path) -> None:
    # Found when the store is opened, from the shard headers, before any read.
    _edit_manifest(store, lambda m: m["hooks"][0].update(shape=[5], d=5))
    with pytest.raises(StoreError, match=r"\[32, 4\] torch.float32, but the manifest records rows of d=5"):
        ActivationStore.open(store)
    _edit_manifest(store, lambda m: (m["hooks"][0].update(shape=[4], d=4), m.update(dtype="float16")))
    with pytest.raises(StoreError, match="in float16"):
        ActivationStore.open(store)[0]


def test_a_checkpoint_whose_tensors_do_not_fit_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A well-formed checkpoint (valid checksum) whose tensors do not fit the SAEs it claims."""
    cfg = saes.TrainConfig(batch_size=32, total_tokens=64)
    x = torch.randn(128, 8)  # resumed on the same data: only the tensors are wrong
    saes.train(saes.TopKSAE(8, 16, k=2), x, cfg, checkpoint_dir=tmp_path, progress=False)
    state, tensors = checkpoint.read(tmp_path)
    # Consistent within the file (the reader checks moments and counters against their
    # parameter), but not with the SAE being resumed.
    tensors["sae0.state.W_dec"] = torch.zeros(3, 3)
    tensors |= {f"sae0.adam.W_dec.{m}": torch.zeros(3, 3) for m in ("exp_avg", "exp_avg_sq")}
    tensors["sae0.since_fired"] = torch.zeros(3, dtype=torch.int64)
    checkpoint.write(tmp_path, state, tensors)
    with pytest.raises(saes.CheckpointError, match="do not fit these SAEs"):
        saes.train(saes.TopKSAE(8, 16, k=2), x, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
