"""`build_dashboard`: two streaming passes over a store, then the few rows the examples show."""
from __future__ import annotations

import re
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.dashboards.dashboard import Dashboard
from interp.dashboards.data import Example, LabelMatch, LatentCard, QuantileGroup
from interp.activations.row_labels import DOCUMENT, GIVEN, TOKEN, resolve_labels
from interp.dashboards.sources import chunks, code_source
from interp.dashboards.stream import (
    FirstPass,
    SecondPass,
    draw_from_bins,
    quantile_groups,
)
from interp.errors import InterpError
from interp.evaluation.features import mlp_output_direction, unembedding

# Hooks whose activations live in the residual stream's space, so a decoder row can be read
# through the unembedding as it is.
RESIDUAL_HOOK = re.compile(r"(^hook_(pos_)?embed$|hook_resid_(pre|mid|post)$|hook_(attn|mlp)_out$|^ln_final\.)")
MLP_POST_HOOK = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
# A concept seen on fewer rows than this gives an AUROC too noisy to name a latent by: a rare
# word that happens to sit in a few firing contexts would otherwise top the list.
MIN_LABEL_TOKENS = 25
# Token strings never listed as promoted or suppressed: they are not text a reader can relate
# to a feature (tokenizers' own special ids are dropped too).
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<|endoftext|>")


def build_dashboard(
    model: Any,
    dictionary: Any,
    store: Any,
    latents: list[int],
    n_examples: int = 10,
    n_quantile_examples: int = 5,
    labels: dict[str, Any] | None = None,
    *,
    n_quantiles: int = 4,
    n_bins: int = 40,
    context: tuple[int, int] = (12, 4),
    n_logits: int = 10,
    chunk_rows: int = 4096,
    seed: int = 0,
    progress: bool = True,
    reasons: dict[int, str] | None = None,
    min_label_tokens: int = MIN_LABEL_TOKENS,
    n_labels: int = 3,
) -> Dashboard:
    """Feature dashboards of ``latents`` of an SAE or SNMF result, from an ActivationStore.

    Args:
        model: the HookedModel the store was harvested from (tokenizer and unembedding).
        dictionary: a ``saes.SAE`` trained at ``store.hook``, or an SNMF (``saes.SNMFResult``
            or its ``as_dictionary()``) of the hook: on the rows it was fit on its codes are
            the fit's coefficients, on any other store of the hook they are the non-negative
            least-squares codes of :meth:`saes.SNMFResult.encode` on the fixed features.
        store: an ``ActivationStore`` read at the dictionary's hook.
        latents: latent (feature) indices to show.
        n_examples: top-activating examples per latent.
        n_quantile_examples: examples drawn from each of ``n_quantiles`` groups of the firing
            values (group edges are histogram-bin edges near the quantiles).
        labels: ``{concept: [n_rows] 0/1 tensor}`` aligned with the store; on a store of the
            world model, None means the world's planted labels (token labels of each row's word,
            and the document labels its window shows: topic, doc_kind, sentiment, qa_part; see
            :mod:`interp.activations.row_labels`).
        n_bins: bins of the activation histogram (firing values only).
        context: tokens shown before and after an example's token.
        n_logits: promoted and suppressed tokens listed per latent.
        chunk_rows: rows encoded at a time (memory is bounded by this, not the store).
        reasons: ``{latent: why it is shown}``, printed under the latent's title (e.g.
            ``"chosen: best AUROC for topic:travel (0.93)"``); latents not in it say "requested".
        min_label_tokens: a concept needs at least this many positive rows to be matched.
        n_labels: best-matching concepts listed per kind (token labels, document labels).

    Two streaming passes read the store (ranges, then histograms, samples and label
    counts); no pass holds more than one chunk of codes.
    """
    started = time.perf_counter()
    latents = _check_latents(latents)
    for name, value, least in (("n_examples", n_examples, 0), ("n_quantile_examples", n_quantile_examples, 0),
                               ("n_quantiles", n_quantiles, 1), ("n_bins", n_bins, 1), ("chunk_rows", chunk_rows, 1),
                               ("min_label_tokens", min_label_tokens, 1), ("n_labels", n_labels, 0)):
        if value < least:
            raise InterpError(f"{name} must be at least {least}, got {value}")
    reasons = _check_reasons(reasons, latents)
    source = code_source(dictionary, store, latents)
    concepts = resolve_labels(model, store, labels)
    n_rows = len(store)
    n_chunks = sum(-(-s.rows // chunk_rows) for s in store.manifest.shards)

    def passing(name: str):
        return tqdm(chunks(store, chunk_rows, source.needs_activations), total=n_chunks, desc=name,
                    disable=not progress, leave=False)

    first = FirstPass(len(latents), max(n_examples, 1))
    for a, b, x in passing("dashboard pass 1/2"):
        first.update(source.codes(a, b, x), a)
    stats = first.result()
    second = SecondPass(stats, n_bins, max(n_quantile_examples, 1),
                        len(concepts.names) if concepts else 0, seed=seed)
    for a, b, x in passing("dashboard pass 2/2"):
        second.update(source.codes(a, b, x), a, concepts.chunk(store, a, b) if concepts else None)
    hist = second.result()

    gen = torch.Generator().manual_seed(seed)
    picks: list[tuple[list[tuple[int, float]], list[tuple[QuantileGroup, list[tuple[int, float]]]]]] = []
    for j in range(len(latents)):
        top = [(int(r), float(v)) for r, v in zip(stats.top_rows[j].tolist(), stats.top_values[j].tolist())
               if r >= 0][:n_examples]
        groups = []
        fired = max(int(stats.n_fire[j]), 1)
        for bins in quantile_groups(hist.counts[j], n_quantiles) if n_quantile_examples else []:
            drawn = draw_from_bins(hist.counts[j], hist.sample_rows[j], hist.sample_values[j], bins,
                                   n_quantile_examples, gen)
            edges = hist.edges[j]
            group = QuantileGroup(float(edges[bins[0]]), float(edges[bins[-1] + 1]),
                                  float(hist.counts[j][bins].sum()) / fired, [])
            groups.append((group, drawn))
        picks.append((top, groups))

    contexts = _Contexts(model, store, source, context)
    contexts.fetch([r for top, groups in picks for r, _ in top + [x for _, d in groups for x in d]])

    residual = _residual_directions(model, store.hook, source.directions())
    special = special_token_ids(model) if residual is not None else []
    cards = []
    for j, latent in enumerate(latents):
        top, groups = picks[j]
        for group, drawn in groups:
            group.examples = [contexts.example(r, v, j, "quantile") for r, v in drawn]
        card = LatentCard(
            latent=latent,
            n_rows=stats.n_rows,
            n_fire=int(stats.n_fire[j]),
            max_value=float(stats.max_fire[j]) if stats.n_fire[j] > 0 else 0.0,
            min_value=float(stats.min_fire[j]) if stats.n_fire[j] > 0 else 0.0,
            hist_edges=hist.edges[j].tolist(),
            hist_counts=hist.counts[j].tolist(),
            top=[contexts.example(r, v, j, "top") for r, v in top],
            quantiles=[g for g, _ in groups],
            reason=reasons.get(latent, "requested"),
        )
        if residual is not None:
            _add_logits(card, model, residual[j], n_logits, special)
        else:
            card.logits_note = (f"no logit effects: {store.hook!r} is neither in the residual stream nor an "
                                "mlp.hook_post, so its decoder rows have no single path to the unembedding")
        if concepts is not None and hist.auroc is not None:
            card.label_matches = _matches(concepts.names, hist.auroc[j], hist.positives, n_rows, concepts.scopes,
                                          n_labels, min_label_tokens)
        cards.append(card)
    return Dashboard(
        model_name=getattr(model, "name", None) or store.model_name,
        hook=store.hook,
        dictionary=source.describe(),
        n_rows=n_rows,
        cards=cards,
        labels_source=None if concepts is None else ("caller" if labels is not None else "world planted labels"),
        seconds=time.perf_counter() - started,
    )


def _check_latents(latents: Any) -> list[int]:
    out = [int(i) for i in (latents.tolist() if isinstance(latents, torch.Tensor) else latents)]
    if not out:
        raise InterpError("give at least one latent, e.g. latents=[0, 1, 2]")
    if len(set(out)) != len(out):
        raise InterpError(f"latents repeat: {out}; give each latent once")
    return out


def _check_reasons(reasons: dict[int, str] | None, latents: list[int]) -> dict[int, str]:
    out = {int(k): str(v) for k, v in (reasons or {}).items()}
    stray = sorted(set(out) - set(latents))
    if stray:
        raise InterpError(f"reasons name latents {stray} that are not shown; give reasons only for latents={latents}")
    return out


class _Contexts:
    """Tokens around example rows and the latents' codes on them, fetched in one batch."""

    def __init__(self, model: Any, store: Any, source: Any, context: tuple[int, int]) -> None:
        self.model, self.store, self.source = model, store, source
        self.before, self.after = context
        self.windows: dict[int, tuple[int, int, torch.Tensor]] = {}  # row -> (seq, pos, window tokens)
        self.codes: dict[int, torch.Tensor] = {}  # row -> [L] codes
        self.where: dict[int, tuple[int, int]] = {}  # row -> (seq, pos), for the rows fetched
        self._names: dict[int, str] = {}

    def fetch(self, rows: list[int]) -> None:
        rows = sorted(set(rows))
        if not rows:
            return
        n = len(self.store)
        for r in rows:
            ctx = self.store.tokens_for(r)
            self.windows[r] = (ctx.sequence, ctx.position, ctx.tokens)
        # Neighbours of a row in the same window are the rows next to it (harvests store a
        # window's positions in order); locate() confirms each before it is used.
        wanted = sorted({r + d for r in rows for d in range(-self.before, self.after + 1) if 0 <= r + d < n})
        seq, pos = self.store.locate(torch.tensor(wanted))
        self.where = {r: (s, p) for r, s, p in zip(wanted, seq.tolist(), pos.tolist())}
        codes = self.source.codes_at(torch.tensor(wanted))
        self.codes = dict(zip(wanted, codes))

    def _token(self, token_id: int) -> str:
        if token_id not in self._names:
            self._names[token_id] = self.model.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        return self._names[token_id]

    def example(self, row: int, value: float, j: int, group: str) -> Example:
        seq, pos, window = self.windows[row]
        tokens, ids, values, own = [], [], [], 0
        for q in range(max(0, pos - self.before), pos + self.after + 1):
            r = row + q - pos
            stored = self.where.get(r) == (seq, q)
            if q > pos and not stored:
                break  # past the stored rows: the end of the text (or padding)
            if q == pos:
                own = len(tokens)
            ids.append(int(window[q]))
            tokens.append(self._token(int(window[q])))
            values.append(float(self.codes[r][j]) if stored else 0.0)  # unstored prefix: BOS
        return Example(row=row, value=value, tokens=tokens, token_ids=ids, values=values, token_index=own, group=group)


def _residual_directions(model: Any, hook: str, directions: torch.Tensor) -> torch.Tensor | None:
    """Decoder rows ``[L, d]`` as residual-stream directions ``[L, d_model]``, or None."""
    if RESIDUAL_HOOK.search(hook):
        return directions
    match = MLP_POST_HOOK.match(hook)
    if match:
        device = next(model.model.parameters()).device  # the model may sit on a GPU, the rows do not
        with torch.no_grad():
            return mlp_output_direction(model, int(match.group(1)), directions.to(device)).float().cpu()
    return None


def special_token_ids(model: Any) -> list[int]:
    """Ids of the tokenizer's special tokens (``<pad>``, ``<bos>``...), which logit lists leave out."""
    tok = model.tokenizer
    ids = set(getattr(tok, "all_special_ids", None) or [])
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    ids |= {vocab[t] for t in SPECIAL_TOKENS if t in vocab}
    return sorted(ids)


@torch.no_grad()
def _add_logits(card: LatentCard, model: Any, direction: torch.Tensor, k: int, special: list[int]) -> None:
    """Promoted and suppressed tokens of a residual direction (``W_U · v``, the logit lens
    without the final norm), special tokens left out, and the histogram of every logit."""
    W_U = unembedding(model)
    logits = (W_U @ direction.to(W_U.device, W_U.dtype)).float().cpu()
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[[i for i in special if i < logits.numel()]] = False
    ids = keep.nonzero()[:, 0]
    shown = logits[ids]
    k = min(k, shown.numel())
    top, bottom = shown.topk(k), (-shown).topk(k)
    name = model.tokenizer.convert_ids_to_tokens
    card.promoted = list(zip(name(ids[top.indices].tolist()), top.values.tolist()))
    card.suppressed = list(zip(name(ids[bottom.indices].tolist()), (-bottom.values).tolist()))
    lo, hi = float(shown.min()), float(shown.max()) + 1e-6
    card.logit_hist_counts = torch.histc(shown, bins=40, min=lo, max=hi).long().tolist()
    edges = torch.linspace(lo, hi, 41)
    card.logit_hist_centres = ((edges[:-1] + edges[1:]) / 2).tolist()


def _matches(names: list[str], auroc: torch.Tensor, positives: torch.Tensor, n_rows: int,
             scopes: list[str] | None = None, top: int = 3, min_positives: int = MIN_LABEL_TOKENS) -> list[LabelMatch]:
    """The ``top`` concepts of each scope (token, document, given labels) by the lower end
    of AUROC's ~95% interval (AUROC - 2 SE), among concepts with ``min_positives`` rows.

    Ranking by AUROC alone lets a concept seen on a handful of tokens that happen to fire
    outrank a well-supported one; the standard error of Hanley & McNeil (1982) discounts it,
    and the minimum count keeps very rare concepts out altogether. Scopes are ranked
    separately so a document label (a topic) is listed even when a word's label beats it.
    """
    scopes = scopes or [GIVEN] * len(names)
    a = auroc.double()
    n1 = positives.double()
    n2 = n_rows - n1
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    var = (a * (1 - a) + (n1 - 1) * (q1 - a**2) + (n2 - 1) * (q2 - a**2)) / (n1 * n2).clamp_min(1)
    lower = a - 2 * var.clamp_min(0).sqrt()
    ok = (positives >= min_positives) & torch.isfinite(a)
    order = torch.where(ok, lower, torch.full_like(lower, -1.0)).argsort(descending=True).tolist()
    chosen = [i for scope in (GIVEN, DOCUMENT, TOKEN) for i in [i for i in order if ok[i] and scopes[i] == scope][:top]]
    return [LabelMatch(names[i], float(auroc[i]), int(positives[i]), scopes[i], float(lower[i]))
            for i in sorted(chosen, key=order.index)]  # best first, whatever its scope
