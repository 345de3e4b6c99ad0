"""The SAE evaluation suite: SAEBench's metric families, against the synthetic world's planted truth.

:func:`run_suite` evaluates one or more SAEs of one hook with any subset of the families

============== ============================================ =========================== ==================
family         what it measures                             data                        SAEBench eval type
============== ============================================ =========================== ==================
core           FVU/EV, MSE, L0/L1, densities, CE / KL       the general world set       ``core``
sparse_probing k-sparse probes on latents vs the dense probe the general world set       ``sparse_probing``
label_interp   live latents some planted label explains      the general world set       (ours)
absorption     parent latents silent on child tokens         topical documents           ``absorption_first_letter``
scr            spurious correlation removal (topic, mood)    topical sentences           ``scr``
tpp            targeted probe perturbation (topics)          topical documents           ``tpp``
ravel          attribute cause / isolation by latent swaps   the fact prompts            ``ravel``
============== ============================================ =========================== ==================

and writes, under ``out``, one SAEBench result file per SAE and family
(``out/<family>/<sae>_eval_results.json``, SAEBench's top-level fields, metric names and
folder-per-eval-type layout), ``comparison.json`` / ``comparison.md`` (a table across SAEs,
each headline figure with its 95% interval) and plotly figures (one offline ``figures.html``): sparse-
probing accuracy against k, absorption by concept, SCR/TPP against the number of ablated
latents and every headline score against L0, each with bootstrap 95% intervals.

The two world sets are built once and shared by every SAE: ``n_docs`` documents of every
kind (seed ``seed``, text the shipped model was not trained on) and ``n_topical_docs``
topical documents (hierarchy members, topics and sentiment are all in those). A caller's
``dataset`` (a :class:`~interp.evaluation.dataset.LabelledActivations`) replaces both.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError
from interp.evaluation.absorption import AbsorptionConfig
from interp.evaluation.ravel import RavelConfig
from interp.evaluation.scr_tpp import ScrTppConfig

FAMILIES = ("core", "sparse_probing", "label_interp", "absorption", "scr", "tpp", "ravel")
# Folder (SAEBench's output layout) and eval_type_id of each family.
EVAL_TYPES = {"core": "core", "sparse_probing": "sparse_probing", "label_interp": "label_interp",
              "absorption": "absorption_first_letter", "scr": "scr", "tpp": "tpp", "ravel": "ravel"}


@dataclass
class SuiteConfig:
    """Sizes and per-family settings of :func:`run_suite`."""

    n_docs: int = 256
    n_topical_docs: int = 1024
    seed: int = 1
    n_boot: int = 1000
    model_batch_size: int = 16
    absorption: AbsorptionConfig = field(default_factory=AbsorptionConfig)
    scr_tpp: ScrTppConfig = field(default_factory=ScrTppConfig)
    ravel: RavelConfig = field(default_factory=RavelConfig)
    ravel_position: str = "last"
    headline_n: int = 10  # SCR / TPP figures shown in the table: this many ablated latents (SAEBench's default view)

    def check(self) -> None:
        if self.n_docs < 8 or self.n_topical_docs < 8:
            raise InterpError(f"n_docs={self.n_docs}, n_topical_docs={self.n_topical_docs}: use at least 8 documents each")
        if self.n_boot < 10:
            raise InterpError(f"n_boot={self.n_boot}: use at least 10 bootstrap resamples (1000 is the default)")


@dataclass
class FamilyRun:
    """One family on one SAE: the SAEBench JSON object, the headline figures with intervals."""

    family: str
    output: dict[str, Any]
    headline: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    seconds: float
    result: Any = field(default=None, repr=False)


@dataclass
class SuiteResult:
    """Every family run on every SAE, and the files written."""

    saes: list[str]
    runs: dict[str, dict[str, FamilyRun]]
    l0: dict[str, tuple[float, float, float]]     # sae -> (L0, lo, hi)
    files: list[str] = field(default_factory=list)

    def comparison(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """``{sae: {"family.metric": {"value", "lo", "hi"}}}``: the headline figures side by side."""
        out: dict[str, dict[str, dict[str, float | None]]] = {}
        for name in self.saes:
            row: dict[str, dict[str, float | None]] = {"l0": _triple(*self.l0[name])} if name in self.l0 else {}
            for family, run in self.runs[name].items():
                for metric, value in run.headline.items():
                    lo, hi = run.intervals.get(metric, (math.nan, math.nan))
                    row[f"{family}.{metric}"] = _triple(value, lo, hi)
            out[name] = row
        return out

    def table(self) -> str:
        """The comparison as a Markdown table: one row per metric, one column per SAE."""
        comp = self.comparison()
        metrics = list(dict.fromkeys(m for row in comp.values() for m in row))
        head = "| metric | " + " | ".join(self.saes) + " |"
        lines = [head, "|" + "---|" * (len(self.saes) + 1)]
        for m in metrics:
            cells = [_cell(comp[s].get(m)) for s in self.saes]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _triple(value: float, lo: float, hi: float) -> dict[str, float | None]:
    return {"value": _finite(value), "lo": _finite(lo), "hi": _finite(hi)}


def _finite(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _cell(t: dict[str, float | None] | None) -> str:
    if not t or t["value"] is None:
        return "n/a"
    if t["lo"] is None or t["hi"] is None:
        return f"{t['value']:.3f}"
    return f"{t['value']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]"


def json_clean(obj: Any) -> Any:
    """``obj`` with tensors as lists and non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_clean(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


# ------------------------------------------------------------------------------ context


class _Context:
    """The data every SAE is evaluated on, built on first use and shared."""

    def __init__(self, model: Any, hook: str, dataset: Any, config: SuiteConfig, log: Callable[[str], None]) -> None:
        self.model, self.hook, self.dataset, self.config, self.log = model, hook, dataset, config, log
        self._general: Any = None
        self._topical: Any = None
        self._ravel: Any = None
        self._texts: dict[str, Any] = {}
        self._absorption: Any = None

    def _world(self, what: str) -> None:
        if self.model is None:
            raise InterpError(f"{what} needs the model (or pass dataset=... for the families that read a set)")
        from interp.world import World

        if len(self.model.tokenizer) != len(World().vocab):
            raise InterpError(f"{what} reads the synthetic world's planted labels, but {self.model.name} is not a "
                              "world model; pass dataset=LabelledActivations.from_tokens(...) with labels, or run "
                              "the families that need no world (core)")

    def general(self) -> Any:
        if self.dataset is not None:
            return self.dataset
        if self._general is None:
            from interp.evaluation.dataset import LabelledActivations

            self._world("the general evaluation set")
            t = time.time()
            self._general = LabelledActivations.from_world(self.model, self.hook, n_docs=self.config.n_docs,
                                                           seed=self.config.seed)
            self.log(f"general set: {len(self._general):,} tokens of {self.config.n_docs} documents "
                     f"({time.time() - t:.1f}s)")
        return self._general

    def topical(self) -> Any:
        if self.dataset is not None:
            return self.dataset
        if self._topical is None:
            from interp.evaluation.dataset import LabelledActivations

            self._world("the topical evaluation set")
            t = time.time()
            self._topical = LabelledActivations.from_world(self.model, self.hook, n_docs=self.config.n_topical_docs,
                                                           seed=self.config.seed, kind="topical")
            self.log(f"topical set: {len(self._topical):,} tokens of {self.config.n_topical_docs} documents "
                     f"({time.time() - t:.1f}s)")
        return self._topical

    def texts(self, kind: str) -> Any:
        """Grouping of the topical set into SCR sentences or TPP documents (SAE-independent)."""
        if kind not in self._texts:
            from interp.evaluation.scr_tpp import world_scr_pairs, world_tpp_texts

            self._texts[kind] = world_scr_pairs(self.topical()) if kind == "scr" else world_tpp_texts(self.topical())
        return self._texts[kind]

    def absorption_inputs(self) -> Any:
        """The topical set's hierarchy concepts and their probes (SAE-independent)."""
        if self._absorption is None:
            from interp.evaluation.absorption import concept_probes, hierarchy_concepts

            data = self.topical()
            labels, names, children = hierarchy_concepts(data)
            probes = concept_probes(data.acts, labels, names, children=children, config=self.config.absorption,
                                    doc=data.doc)
            self._absorption = (labels, names, children, probes)
        return self._absorption

    def ravel_task(self) -> Any:
        if self._ravel is None:
            from interp.evaluation.ravel import world_ravel_task

            self._world("RAVEL")
            self._ravel = world_ravel_task(self.model, self.hook, position=self.config.ravel_position)
        return self._ravel

    def any_set(self) -> Any:
        """A set already built (for L0), else the general one."""
        return self.dataset or self._general or self._topical or self.general()


# ------------------------------------------------------------------------- the families


def _core(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.core import evaluate_core

    data = ctx.general()
    model = ctx.model if data.windows is not None else None
    r = evaluate_core(sae, data, model, n_boot=ctx.config.n_boot, model_batch_size=ctx.config.model_batch_size)
    head = {"explained_variance": r.explained_variance, "l0": r.l0}
    if r.splice:
        head.update(ce_loss_score=r.splice["ce_loss_recovered"], kl_div_score=r.splice["kl_div_score"])
    values = {k: float(v.value) for k, v in head.items()}
    values["frac_alive"] = 1.0 - r.dead_fraction
    values.pop("l0")  # the table's own l0 row (every SAE gets one) shows it
    intervals = {k: (float(v.lo), float(v.hi)) for k, v in head.items()}
    return FamilyRun("core", r.to_saebench(sae, {"n_boot": ctx.config.n_boot}), values, intervals, 0.0, r)


def _sparse_probing(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.sparse_probing import sparse_probing

    r = sparse_probing(sae, ctx.general(), n_boot=ctx.config.n_boot)
    keys = [k for k in ("sae_top_1_test_accuracy", "sae_top_5_test_accuracy", "sae_test_accuracy") if k in r.sae]
    head = {k: float(r.sae[k]) for k in keys}
    intervals = {k: tuple(r.intervals[k]) for k in keys if k in r.intervals}
    model_name = getattr(ctx.model, "name", None)
    return FamilyRun("sparse_probing", r.to_saebench(sae, model_name=model_name), head, intervals, 0.0, r)


def _label_interp(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.core import saebench_envelope
    from interp.evaluation.label_interp import label_interpretability

    r = label_interpretability(sae, ctx.general(), random_control_seed=0)
    metrics = {"label_interp": {"explained_fraction": r.explained_fraction, "label_coverage": r.label_coverage,
                                "random_explained_fraction": r.random_explained_fraction,
                                "n_live": float(r.n_live), "n_explained": float(r.n_explained),
                                "n_labels": float(r.n_labels)}}
    out = saebench_envelope("label_interp", {"threshold": r.threshold, "min_support": r.min_support,
                                             "min_fires": r.min_fires, "hook_name": ctx.hook},
                            metrics, r.per_latent, {"per_label": r.per_label,
                                                    "explained_fraction_by_scope": r.explained_fraction_by_scope}, sae)
    head = {"explained_fraction": r.explained_fraction, "random_explained_fraction": r.random_explained_fraction,
            "label_coverage": r.label_coverage}
    return FamilyRun("label_interp", out, head, {}, 0.0, r)


def _absorption(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.absorption import absorption
    from interp.evaluation.core import saebench_envelope

    data = ctx.topical()
    labels, names, children, probes = ctx.absorption_inputs()
    cfg = ctx.config.absorption
    r = absorption(sae, data.acts, labels, names, children=children, config=cfg, doc=data.doc, probes=probes)
    iv = r.intervals(n_boot=ctx.config.n_boot)
    out = saebench_envelope(EVAL_TYPES["absorption"], {**asdict(cfg), "concepts": "world hierarchy (inner nodes)",
                                                       "hook_name": ctx.hook},
                            {"mean": r.mean_metrics()}, r.details(), {**r.unstructured(), "intervals": iv}, sae)
    m = r.mean_metrics()
    keys = ("mean_absorption_fraction_score", "mean_full_absorption_score")
    return FamilyRun("absorption", out, {k: m[k] for k in keys},
                     {k: tuple(iv[k]) for k in keys if k in iv}, 0.0, r)


def _headline_n(n_values: Sequence[int], wanted: int) -> int:
    return wanted if wanted in n_values else sorted(n_values)[len(n_values) // 2]


def _scr(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.core import saebench_envelope
    from interp.evaluation.scr_tpp import Texts, scr

    group, text_labels, pairs = ctx.texts("scr")
    texts = Texts.of(sae, ctx.topical().acts, group, text_labels)
    cfg = ctx.config.scr_tpp
    r = scr(texts, pairs, cfg)
    out = saebench_envelope(EVAL_TYPES["scr"], {**asdict(cfg), "perform_scr": True, "hook_name": ctx.hook,
                                                "concepts": "target: topic A vs B; spurious: sentiment"},
                            {"scr_metrics": r.metrics}, r.details,
                            {"intervals": r.intervals, "accuracies": r.accuracies}, sae)
    n = _headline_n(r.n_values, ctx.config.headline_n)
    key = f"scr_metric_threshold_{n}"
    return FamilyRun("scr", out, {key: r.metrics[key]}, {key: r.intervals[key]}, 0.0, r)


def _tpp(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.core import saebench_envelope
    from interp.evaluation.scr_tpp import Texts, tpp

    group, classes, names = ctx.texts("tpp")
    texts = Texts.of(sae, ctx.topical().acts, group, {})
    cfg = ctx.config.scr_tpp
    r = tpp(texts, classes, names, cfg)
    dataset = "world_topic_tpp"
    out = saebench_envelope(EVAL_TYPES["tpp"], {**asdict(cfg), "perform_scr": False, "hook_name": ctx.hook},
                            {"tpp_metrics": r.metrics}, [{"dataset_name": dataset, **r.metrics}],
                            {dataset: r.per_class, "intervals": r.intervals, "clean_accuracies": r.clean_accuracies},
                            sae)
    n = _headline_n(r.n_values, ctx.config.headline_n)
    key = f"tpp_threshold_{n}_total_metric"
    return FamilyRun("tpp", out, {key: r.metrics[key]}, {key: r.intervals[key]}, 0.0, r)


def _ravel(ctx: _Context, sae: Any) -> FamilyRun:
    from interp.evaluation.core import saebench_envelope
    from interp.evaluation.ravel import ravel

    cfg = ctx.config.ravel
    r = ravel(sae, ctx.ravel_task(), cfg)
    out = saebench_envelope(EVAL_TYPES["ravel"], {**asdict(cfg), "position": ctx.config.ravel_position,
                                                  "hook_name": ctx.hook, "entity_class": "world lands",
                                                  "attributes": ctx.ravel_task().attributes},
                            {"ravel": r.metrics}, [], {"per_attribute": r.per_attribute, "intervals": r.intervals}, sae)
    return FamilyRun("ravel", out, dict(r.metrics), dict(r.intervals), 0.0, r)


RUNNERS: dict[str, Callable[[_Context, Any], FamilyRun]] = {
    "core": _core, "sparse_probing": _sparse_probing, "label_interp": _label_interp, "absorption": _absorption,
    "scr": _scr, "tpp": _tpp, "ravel": _ravel,
}


# -------------------------------------------------------------------------------- driver


def parse_families(families: str | Sequence[str] | None) -> list[str]:
    """``"core,absorption"`` or a list -> validated family names (all of them for None / "all")."""
    if families is None:
        return list(FAMILIES)
    items = [f.strip() for f in (families.split(",") if isinstance(families, str) else families) if f.strip()]
    if items == ["all"]:
        return list(FAMILIES)
    unknown = [f for f in items if f not in FAMILIES]
    if unknown or not items:
        from difflib import get_close_matches

        near = get_close_matches(unknown[0], FAMILIES, n=1) if unknown else []
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise InterpError(f"unknown suite family {unknown[0] if unknown else '(none)'!r}{hint}; choose from "
                          f"{', '.join(FAMILIES)} or 'all'")
    return list(dict.fromkeys(items))


def load_saes(saes_or_paths: Any) -> list[tuple[str, Any, str | None]]:
    """``[(name, sae, path)]`` from an SAE, a directory, or a list of them; names are unique."""
    import saes

    items = saes_or_paths if isinstance(saes_or_paths, (list, tuple)) else [saes_or_paths]
    if not items:
        raise InterpError("no SAE given; pass an SAE or a directory (saes.load reads ours, SAELens, sparsify, "
                          "Gemma Scope and dictionary_learning files)")
    out, seen = [], set()
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            path = Path(item)
            if not path.exists():
                raise InterpError(f"SAE directory {str(path)!r} does not exist")
            try:
                sae = saes.load(path)
            except saes.SAEError as err:
                raise InterpError(f"{path}: {err}") from err
            name = path.resolve().name or f"sae{i}"
        else:
            sae, path, name = item, None, getattr(item, "metadata", {}).get("name") or f"sae{i}"
        base, k = name, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        out.append((name, sae, str(path) if path else None))
    return out


def _resolve_hook(hook: str | None, loaded: list[tuple[str, Any, str | None]]) -> str:
    recorded = {n: (s.metadata or {}).get("hook_name") for n, s, _ in loaded}
    if hook:
        return hook
    found = {h for h in recorded.values() if h}
    if len(found) == 1 and all(recorded.values()):
        return found.pop()
    if not found:
        raise InterpError("the SAEs record no hook name; pass hook=... (the hook their activations came from)")
    raise InterpError(f"the SAEs record different hooks ({', '.join(f'{n}: {h}' for n, h in recorded.items())}); "
                      "evaluate SAEs of one hook together, or pass hook=...")


def _check_fit(model: Any, hook: str, loaded: list[tuple[str, Any, str | None]], allow_mismatch: bool) -> None:
    """Every SAE's width fits the hook; one recorded for another model or hook is refused unless allowed."""
    from interp.evaluation.splice import check_sae_fits, origin_mismatches

    for name, sae, _ in loaded:
        problems = origin_mismatches(model, sae, hook)
        if problems and not allow_mismatch:
            raise InterpError(f"{name}: {'; '.join(problems)} (its cfg.json says so): its figures here would measure "
                              "the mismatch, not the SAE. Evaluate it with the model and hook it was trained on, or "
                              "pass allow_mismatch=True if this is the same model under another name")
        check_sae_fits(model, sae, hook)


def _l0(ctx: _Context, sae: Any, runs: dict[str, FamilyRun]) -> tuple[float, float, float]:
    core = runs.get("core")
    if core is not None:
        e = core.result.l0
        return float(e.value), float(e.lo), float(e.hi)
    from interp.evaluation.absorption import encode_rows
    from interp.evaluation.dataset import bootstrap_docs

    data = ctx.any_set()
    l0 = (encode_rows(sae, data.acts) != 0).sum(1).double()
    return bootstrap_docs(l0, data.doc, n_boot=ctx.config.n_boot)


def run_suite(
    saes_or_paths: Any,
    model: Any = None,
    hook: str | None = None,
    families: str | Sequence[str] | None = None,
    dataset: Any = None,
    *,
    out: str | Path | None = None,
    config: SuiteConfig | None = None,
    figures: bool = True,
    log: Callable[[str], None] | None = None,
    allow_mismatch: bool = True,
) -> SuiteResult:
    """Evaluate SAEs with the chosen families (all by default) and write SAEBench-layout results.

    Args:
        saes_or_paths: an SAE, a directory ``saes.load`` reads, or a list of them.
        model: a HookedModel or a model name for ``interp.load`` (the world model for the
            world's sets, CE / KL and RAVEL); may be None with ``dataset`` for families that
            need no model.
        hook: the hook the SAEs read (default: the one their files record).
        families: names from :data:`FAMILIES` (a list or ``"core,absorption"``).
        dataset: a :class:`~interp.evaluation.dataset.LabelledActivations` used in place of
            the world sets.
        out: directory for the result files, the comparison and the figures (None: write nothing).
        config: sizes and per-family settings.
        figures: write the plotly figures (with ``out``).
        log: called with one line per step (default: silent).
        allow_mismatch: evaluate an SAE whose file records another model or hook (with a
            warning); False refuses it, since its figures would measure the mismatch.
    """
    config = config or SuiteConfig()
    config.check()
    chosen = parse_families(families)
    log = log or (lambda line: None)
    loaded = load_saes(saes_or_paths)
    hook = _resolve_hook(hook, loaded)
    if isinstance(model, str):
        from interp.model.loading import load

        model = load(model)
    if model is not None:
        _check_fit(model, hook, loaded, allow_mismatch)
    ctx = _Context(model, hook, dataset, config, log)
    runs: dict[str, dict[str, FamilyRun]] = {}
    l0s: dict[str, tuple[float, float, float]] = {}
    for name, sae, _ in loaded:
        sae = sae.eval() if model is None else sae.to(model.device).eval()
        runs[name] = {}
        for family in chosen:
            t = time.time()
            run = RUNNERS[family](ctx, sae)
            run.seconds = time.time() - t
            runs[name][family] = run
            log(f"{name}: {family} in {run.seconds:.1f}s: " + ", ".join(f"{k} {v:.3f}" for k, v in run.headline.items()))
        l0s[name] = _l0(ctx, sae, runs[name])
    result = SuiteResult([n for n, _, _ in loaded], runs, l0s)
    if out is not None:
        result.files = write_outputs(result, Path(out), figures=figures)
    return result


# ------------------------------------------------------------------------------- output


def write_outputs(result: SuiteResult, out: Path, figures: bool = True) -> list[str]:
    """The result files (SAEBench layout), the comparison (JSON and Markdown) and the figures."""
    from saes.formats.durable import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, runs in result.runs.items():
        for family, run in runs.items():
            path = out / family / f"{_safe(name)}_eval_results.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(json_clean(run.output), indent=2, allow_nan=False))
            files.append(str(path))
    comparison = {"saes": result.saes, "metrics": result.comparison(),
                  "seconds": {n: {f: r.seconds for f, r in runs.items()} for n, runs in result.runs.items()}}
    atomic_write_text(out / "comparison.json", json.dumps(json_clean(comparison), indent=2, allow_nan=False))
    atomic_write_text(out / "comparison.md", result.table() + "\n")
    files += [str(out / "comparison.json"), str(out / "comparison.md")]
    if figures:
        atomic_write_text(out / "figures.html", figures_html(all_figures(result)))
        files.append(str(out / "figures.html"))
    return files


def figures_html(figs: dict[str, Any]) -> str:
    """One self-contained HTML page holding every figure (plotly's script inlined once)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=stem)
             for i, (stem, fig) in enumerate(figs.items())]
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>SAE evaluation suite</title></head><body>"
            + "".join(f"<section>{p}</section>" for p in parts) + "</body></html>")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ------------------------------------------------------------------------------ figures


def _err(value: float, lo: float | None, hi: float | None) -> tuple[float, float]:
    """Plotly's asymmetric error bar (``array``, ``arrayminus``); 0 where no interval exists."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(value)):
        return 0.0, 0.0
    return max(hi - value, 0.0), max(value - lo, 0.0)


def _errors(points: list[tuple[float, float, float]]) -> dict[str, Any]:
    up, down = zip(*(_err(*p) for p in points)) if points else ((), ())
    return {"type": "data", "symmetric": False, "array": list(up), "arrayminus": list(down)}


def figure_sparse_probing(result: SuiteResult) -> Any:
    """Sparse-probing test accuracy against k, one line per SAE (dense probe on the activations dashed)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in result.saes:
        run = result.runs[name].get("sparse_probing")
        if run is None:
            continue
        r = run.result
        ks = sorted(int(k.split("_")[2]) for k in r.sae if k.startswith("sae_top_"))
        for space, values, dash in (("SAE", r.sae, None), ("activations", r.llm, "dash")):
            if space == "activations" and name != next(n for n in result.saes if "sparse_probing" in result.runs[n]):
                continue
            key = "sae" if space == "SAE" else "llm"
            pts = [(values[f"{key}_top_{k}_test_accuracy"], *r.intervals.get(f"{key}_top_{k}_test_accuracy", (None, None)))
                   for k in ks]
            fig.add_trace(go.Scatter(x=ks, y=[p[0] for p in pts], error_y=_errors(pts), mode="lines+markers",
                                     name=name if space == "SAE" else "top-k activations (no SAE)",
                                     line={"dash": dash} if dash else None))
    fig.update_layout(title="Sparse probing: test accuracy of k-latent probes (95% bootstrap intervals over test documents)",
                      xaxis={"title": "k (latents per probe)", "type": "log"}, yaxis={"title": "test accuracy"})
    return fig


def figure_absorption(result: SuiteResult) -> Any:
    """Mean absorption fraction per parent concept, one bar group per SAE."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in result.saes:
        run = result.runs[name].get("absorption")
        if run is None:
            continue
        per = run.output["eval_result_unstructured"]["intervals"].get("per_concept", {})
        concepts = [c.concept for c in run.result.concepts]
        pts = [(c.mean_absorption_fraction, *per.get(c.concept, {}).get("mean_absorption_fraction", (None, None)))
               for c in run.result.concepts]
        fig.add_trace(go.Bar(x=concepts, y=[p[0] for p in pts], error_y=_errors(pts), name=name))
    fig.update_layout(title="Absorption fraction by parent concept (95% bootstrap intervals over documents)",
                      barmode="group", xaxis={"title": "parent concept (world hierarchy)"},
                      yaxis={"title": "mean absorption fraction", "range": [0, 1.05]})
    return fig


def figure_scr_tpp(result: SuiteResult) -> Any:
    """SCR and TPP against the number of ablated latents, one line per SAE."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("SCR (normalised accuracy shift)", "TPP (total metric)"))
    for col, (family, pattern) in enumerate((("scr", "scr_metric_threshold_{}"), ("tpp", "tpp_threshold_{}_total_metric")), 1):
        for i, name in enumerate(result.saes):
            run = result.runs[name].get(family)
            if run is None:
                continue
            ns = run.result.n_values
            pts = [(run.result.metrics[pattern.format(n)], *run.result.intervals[pattern.format(n)]) for n in ns]
            fig.add_trace(go.Scatter(x=ns, y=[p[0] for p in pts], error_y=_errors(pts), mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1, marker={"color": _colour(i)}),
                          row=1, col=col)
        fig.update_xaxes(title_text="latents ablated (n)", type="log", row=1, col=col)
    fig.update_layout(title="SCR and TPP against the number of ablated latents (95% bootstrap intervals over test texts)")
    return fig


def figure_scores_vs_l0(result: SuiteResult) -> Any:
    """Every headline score against L0, one panel per score, one point per SAE."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    comp = result.comparison()
    metrics = [m for m in dict.fromkeys(m for row in comp.values() for m in row) if m not in ("l0", "core.l0")]
    if not metrics:
        return go.Figure().update_layout(title="no scores to plot")
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=metrics)
    for j, metric in enumerate(metrics):
        for i, name in enumerate(result.saes):
            y, l0 = comp[name].get(metric), comp[name].get("l0")
            if not y or y["value"] is None or not l0 or l0["value"] is None:
                continue
            fig.add_trace(go.Scatter(
                x=[l0["value"]], y=[y["value"]], mode="markers+text", text=[name], textposition="top center",
                error_x=_errors([(l0["value"], l0["lo"], l0["hi"])]), error_y=_errors([(y["value"], y["lo"], y["hi"])]),
                name=name, legendgroup=name, showlegend=j == 0, marker={"color": _colour(i), "size": 10}),
                row=j // cols + 1, col=j % cols + 1)
    fig.update_xaxes(title_text="L0")
    fig.update_layout(title="Scores against L0 (95% bootstrap intervals)", height=320 * rows)
    return fig


def _colour(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    return palette[i % len(palette)]


def all_figures(result: SuiteResult) -> dict[str, Any]:
    """The figures the runs allow: ``{file stem: plotly figure}``."""
    ran = {f for runs in result.runs.values() for f in runs}
    figs: dict[str, Any] = {"scores_vs_l0": figure_scores_vs_l0(result)}
    if "sparse_probing" in ran:
        figs["sparse_probing_accuracy_vs_k"] = figure_sparse_probing(result)
    if "absorption" in ran:
        figs["absorption_by_concept"] = figure_absorption(result)
    if ran & {"scr", "tpp"}:
        figs["scr_tpp_vs_n"] = figure_scr_tpp(result)
    return figs
