"""Feature dashboards: streaming statistics equal brute force; labels; HTML, JSON, CLI, browser."""
from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import interp
import saes
from interp.dashboards import build_dashboard
from interp.errors import InterpError
from interp.model.tiny import tiny_model
from saes.metrics import auroc as exact_auroc

WORDS = "the a cat dog bird sat ran flew on under over mat tree sky red blue big small happy sad and then it was".split()
HOOK = "blocks.0.hook_resid_post"
LATENTS = [1, 5, 9, 30]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(5, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GPT-2, a ~1,400-row store in several shards, and a random TopK SAE at its hook."""
    torch.set_num_threads(1)
    model = tiny_model("gpt2")
    out = tmp_path_factory.mktemp("dash") / "store"
    store = interp.harvest(model, _texts(80), hooks=[HOOK, "blocks.0.mlp.hook_post"], out=out,
                           context_length=32, shard_tokens=256, progress=False)
    torch.manual_seed(0)
    sae = saes.TopKSAE(store.d, 64, k=4)
    sae.metadata.update(hook_name=HOOK, model_name=model.name)
    return model, store, sae


@pytest.fixture(scope="module")
def dash(tiny):
    model, store, sae = tiny
    tokens = torch.tensor([store.tokens_for(i).token for i in range(len(store))])
    cat = model.tokenizer.convert_tokens_to_ids("cat")
    labels = {"cat": tokens == cat, "the": tokens == model.tokenizer.convert_tokens_to_ids("the")}
    # Small chunks, so streaming crosses chunk and shard boundaries many times.
    return build_dashboard(model, sae, store, LATENTS, n_examples=6, n_quantile_examples=3, labels=labels,
                           n_bins=20, chunk_rows=97, progress=False)


def _brute_codes(store, sae) -> torch.Tensor:
    with torch.no_grad():
        return sae.encode(store[:])[:, LATENTS].double()


def test_streaming_density_histogram_and_top_examples_equal_brute_force(tiny, dash):
    model, store, sae = tiny
    codes = _brute_codes(store, sae)
    assert store.n_shards > 3 and len(store) > 1000
    for j, latent in enumerate(LATENTS):
        card = dash.card(latent)
        col = codes[:, j]
        fire = col[col != 0]
        assert card.n_rows == len(store)
        assert card.n_fire == fire.numel() > 0
        assert card.density == pytest.approx(fire.numel() / len(store))
        assert card.max_value == pytest.approx(float(fire.max()), rel=1e-6)
        counts, edges = np.histogram(fire.numpy(), bins=20, range=(float(fire.min()), float(fire.max())))
        assert card.hist_counts == counts.tolist()
        np.testing.assert_allclose(card.hist_edges, edges, rtol=1e-12)
        values, rows = col.topk(6)
        assert [e.value for e in card.top] == pytest.approx(values.tolist(), rel=1e-6)
        # Rows agree wherever the value is not tied with another.
        distinct = [i for i, v in enumerate(values.tolist()) if (col == v).sum() == 1]
        assert [card.top[i].row for i in distinct] == [rows[i].item() for i in distinct]


def test_codes_are_computed_a_chunk_at_a_time(tiny):
    model, store, sae = tiny
    sizes: list[int] = []
    encode = sae.encode

    def spy(x, **options):
        sizes.append(x.shape[0])
        return encode(x, **options)

    sae.encode = spy
    try:
        d = build_dashboard(model, sae, store, LATENTS, n_examples=4, n_quantile_examples=2, chunk_rows=128,
                            context=(5, 2), progress=False)
    finally:
        del sae.encode
    examples = sum(len(c.top) + sum(len(g.examples) for g in c.quantiles) for c in d.cards)
    # Two passes of chunks, then one batch with only the examples' context rows: never the store.
    assert sum(sizes[:-1]) == 2 * len(store) and max(sizes[:-1]) <= 128
    assert sizes[-1] <= examples * (5 + 1 + 2) < len(store)


def test_signed_codes_histogram_and_auroc_equal_brute_force(tiny):
    model, store, _ = tiny
    gen = torch.Generator().manual_seed(0)
    n = len(store)
    coefficients = torch.randn(n, 2, generator=gen) * (torch.rand(n, 2, generator=gen) < 0.3)  # signed, sparse
    concept = torch.rand(n, generator=gen) < 0.2
    coefficients[concept, 1] += 1.0
    result = saes.SNMFResult(torch.randn(2, store.d), coefficients, [0.0], 0)
    d = build_dashboard(model, result, store, [0, 1], n_bins=16, labels={"c": concept}, chunk_rows=200,
                        progress=False)
    for j in range(2):
        col = coefficients[:, j].double()
        col = torch.where(col.abs() >= 0.1 * col.abs().max(), col, 0.0)  # SNMF's "active" floor
        fire = col[col != 0]
        counts, _ = np.histogram(fire.numpy(), bins=16, range=(float(fire.min()), float(fire.max())))
        assert d.card(j).hist_counts == counts.tolist() and d.card(j).min_value < 0
        exact = float(exact_auroc(col[:, None], concept)[0])
        assert d.card(j).label_matches[0].auroc == pytest.approx(exact, abs=0.02)
    assert d.card(1).label_matches[0].auroc > 0.8 > abs(d.card(0).label_matches[0].auroc - 0.5) + 0.5


def test_examples_shade_every_context_token_with_its_own_activation(tiny, dash):
    model, store, sae = tiny
    codes = _brute_codes(store, sae)
    for j, latent in enumerate(LATENTS):
        card = dash.card(latent)
        for e in card.top + [x for g in card.quantiles for x in g.examples]:
            assert e.values[e.token_index] == pytest.approx(float(codes[e.row, j]), rel=1e-5)
            assert e.values[e.token_index] == pytest.approx(e.value, rel=1e-5)
            ctx = store.tokens_for(e.row)
            assert e.token_ids[e.token_index] == ctx.token
            assert e.tokens[e.token_index] == model.tokenizer.decode([ctx.token])
            # Tokens before it in the same window are the rows before it (BOS is not stored).
            for i in range(e.token_index):
                row = e.row - (e.token_index - i)
                if store.locate(row)[0].item() == ctx.sequence and e.token_ids[i] != model.bos_token_id:
                    assert e.values[i] == pytest.approx(float(codes[row, j]), rel=1e-5, abs=1e-6)


def test_quantile_examples_come_from_their_group_and_groups_cover_all_firing_tokens(tiny, dash):
    model, store, sae = tiny
    codes = _brute_codes(store, sae)
    for j, latent in enumerate(LATENTS):
        card = dash.card(latent)
        col = codes[:, j]
        assert 2 <= len(card.quantiles) <= 4
        assert sum(g.contains for g in card.quantiles) == pytest.approx(1.0)
        for g in card.quantiles:
            inside = ((col >= g.lo - 1e-9) & (col <= g.hi + 1e-9) & (col != 0)).sum().item()
            assert g.contains == pytest.approx(inside / card.n_fire, abs=1e-9)
            rows = [e.row for e in g.examples]
            assert len(rows) == min(3, inside) and len(set(rows)) == len(rows)
            for e in g.examples:
                assert g.lo - 1e-9 <= e.value <= g.hi + 1e-9


def test_quantile_draws_are_spread_over_the_group_not_its_top(tiny):
    model, store, sae = tiny
    # Over many seeds, the draws from the lowest group must not all be its largest values.
    draws = set()
    for seed in range(4):
        d = build_dashboard(model, sae, store, [LATENTS[0]], n_examples=1, n_quantile_examples=3, seed=seed,
                            progress=False)
        draws |= {e.row for e in d.cards[0].quantiles[0].examples}
    assert len(draws) > 3


def test_label_auroc_matches_the_exact_auroc(tiny, dash):
    model, store, sae = tiny
    codes = _brute_codes(store, sae)
    tokens = torch.tensor([store.tokens_for(i).token for i in range(len(store))])
    cat = tokens == model.tokenizer.convert_tokens_to_ids("cat")
    for j, latent in enumerate(LATENTS):
        matches = {m.label: m for m in dash.card(latent).label_matches}
        exact = float(exact_auroc(codes[:, j:j + 1], cat)[0])
        # Binned: ties within one of 128 bins per sign count half, so a small error is allowed.
        assert matches["cat"].auroc == pytest.approx(exact, abs=0.02)
        assert matches["cat"].n_positive == int(cat.sum())


def test_label_matching_finds_a_planted_concept(tiny):
    model, store, _ = tiny
    # A ReLU latent reading the "cat" direction of the token embedding fires on "cat" only.
    store_embed = interp.harvest(model, _texts(30, seed=1), hooks=["hook_embed"], out=store.directory.parent / "e",
                                 context_length=32, progress=False)
    emb = model.model.get_output_embeddings().weight.detach()
    cat, dog = (model.tokenizer.convert_tokens_to_ids(w) for w in ("cat", "dog"))
    sae = saes.ReLUSAE(store_embed.d, 4)
    with torch.no_grad():
        sae.W_enc.zero_(), sae.b_enc.fill_(-0.9), sae.b_dec.zero_()
        sae.W_enc[:, 2] = emb[cat] / emb[cat].pow(2).sum()
    tokens = torch.tensor([store_embed.tokens_for(i).token for i in range(len(store_embed))])
    labels = {"dog": tokens == dog, "cat": tokens == cat, "a or the": (tokens == 4) | (tokens == 5)}
    d = build_dashboard(model, sae, store_embed, [2], labels=labels, min_label_tokens=5, progress=False)
    best = d.cards[0].label_matches[0]
    assert best.label == "cat" and best.auroc == pytest.approx(1.0)
    assert d.cards[0].top[0].tokens[d.cards[0].top[0].token_index] == "cat"


def test_best_label_needs_support_not_just_a_high_auroc_on_a_few_tokens():
    from interp.dashboards.build import MIN_LABEL_TOKENS, _matches

    names = ["rare", "common", "too rare", "topic:travel", "topic:music"]
    auroc, positives = torch.tensor([0.93, 0.90, 0.99, 0.80, 0.60]), torch.tensor([30, 2000, 6, 3000, 3000])
    scopes = ["token", "token", "token", "document", "document"]
    matches = _matches(names, auroc, positives, 40_000, scopes, top=2)
    # 6 tokens is below the minimum support, however high its AUROC; 30 tokens at 0.93 is
    # weaker evidence than 2,000 at 0.90; both document labels are listed though token
    # labels beat them; the list is best first whatever the scope.
    assert 6 < MIN_LABEL_TOKENS <= 30
    assert [m.label for m in matches] == ["common", "rare", "topic:travel", "topic:music"]
    assert [m.scope for m in matches] == ["token", "token", "document", "document"]
    assert matches[0].auroc == pytest.approx(0.90) and matches[0].n_positive == 2000
    assert "too rare" in [m.label for m in _matches(names, auroc, positives, 40_000, scopes, min_positives=5)]


def test_snmf_dashboard_reads_coefficients_and_mlp_logit_effects(tiny):
    model, store, _ = tiny
    mlp = store.select("blocks.0.mlp.hook_post")
    result = saes.SNMF(rank=4, sparsity=0.1, max_iter=15, device="cpu").fit(mlp)
    d = build_dashboard(model, result, mlp, [0, 3], n_examples=3, progress=False)
    assert d.dictionary["codes"] == "the fit's coefficients"
    for j, latent in enumerate([0, 3]):
        col = result.coefficients[:, latent].double()
        assert d.card(latent).max_value == pytest.approx(float(col.max()), rel=1e-6)
        assert d.card(latent).top[0].row == int(col.argmax())
        assert len(d.card(latent).promoted) == 10  # W_out · feature, then the unembedding


def test_snmf_density_counts_active_coefficients_not_every_token(tiny):
    """SNMF coefficients are almost never exactly zero; a latent planted on 30% of tokens must
    show a density near 30%, not 100%."""
    model, store, _ = tiny
    gen = torch.Generator().manual_seed(1)
    n = len(store)
    planted = torch.rand(n, 2, generator=gen) * (torch.rand(n, 2, generator=gen) < 0.3)
    coefficients = planted + 1e-4 * torch.rand(n, 2, generator=gen)  # a multiplicative update's residue
    result = saes.SNMFResult(torch.randn(2, store.d), coefficients, [0.0], 0)
    d = build_dashboard(model, result, store, [0, 1], progress=False)
    for j in range(2):
        expected = float((coefficients[:, j] >= 0.1 * coefficients[:, j].max()).float().mean())
        assert d.card(j).density == pytest.approx(expected, abs=1e-6) and 0.2 < d.card(j).density < 0.3
    assert "largest on the fit" in d.dictionary["active"]


def test_snmf_dashboard_builds_on_a_store_with_more_rows_than_the_fit(tiny):
    """An SNMF fit on the first rows of a store (as the quickstart fits it) shows every row of
    the store: rows it never saw get the non-negative least-squares codes of its features."""
    model, store, _ = tiny
    mlp = store.select("blocks.0.mlp.hook_post")
    result = saes.SNMF(rank=4, sparsity=0.1, max_iter=15, device="cpu").fit(mlp[:300])
    result.config.update(hook_name=mlp.hook)
    assert result.coefficients.shape[0] == 300 < len(mlp)
    for dictionary in (result, result.as_dictionary(n_iter=40)):
        d = build_dashboard(model, dictionary, mlp, [0, 3], n_examples=3, chunk_rows=250, progress=False)
        n_iter = getattr(dictionary, "n_iter", 100)
        brute = result.encode(mlp[:].float(), n_iter=n_iter)[:, [0, 3]].double()
        floor = 0.1 * result.coefficients[:, [0, 3]].double().amax(0)  # active: >= 10% of the fit's largest
        brute = torch.where(brute >= floor, brute, 0.0)
        assert "non-negative least squares" in d.dictionary["codes"] and d.n_rows == len(mlp)
        for j, latent in enumerate([0, 3]):
            card = d.card(latent)
            assert card.n_fire == int((brute[:, j] != 0).sum())
            assert card.max_value == pytest.approx(float(brute[:, j].max()), rel=1e-4)
            assert card.top[0].value == pytest.approx(float(brute[:, j].max()), rel=1e-4)
            assert brute[card.top[0].row, j] == pytest.approx(float(brute[:, j].max()), rel=1e-4)
            assert any(e.row >= 300 for e in card.top)  # held-out rows are shown, not just the fitted ones
    with pytest.raises(InterpError, match="fit at 'blocks.0.mlp.hook_post' but the store is read at"):
        build_dashboard(model, result, store, [0], progress=False)


def test_logit_lists_leave_out_special_tokens(tiny):
    model, store, _ = tiny
    # A decoder row along the unembedding of <eos> plus a little of "cat": <eos> would top the
    # promoted list and <pad>'s opposite the suppressed one; neither may appear.
    W_U = model.model.get_output_embeddings().weight.detach()
    tok = model.tokenizer
    eos, pad, cat = (tok.convert_tokens_to_ids(t) for t in ("<eos>", "<pad>", "cat"))
    sae = saes.TopKSAE(store.d, 2, k=1)
    sae.metadata.update(hook_name=HOOK)
    with torch.no_grad():
        sae.W_dec[0] = 3 * W_U[eos] - 3 * W_U[pad] + W_U[cat]
    d = build_dashboard(model, sae, store, [0], n_examples=1, n_quantile_examples=0, progress=False)
    card = d.card(0)
    raw = W_U @ sae.W_dec[0].detach()
    assert {tok.convert_ids_to_tokens(int(raw.argmax())), tok.convert_ids_to_tokens(int(raw.argmin()))} == {
        "<eos>", "<pad>"}  # without the rule they would head both lists
    listed = [t for t, _ in card.promoted + card.suppressed]
    assert not {"<pad>", "<unk>", "<bos>", "<eos>"} & set(listed), listed
    assert len(card.promoted) == len(card.suppressed) == 10
    assert sum(card.logit_hist_counts) == len(tok.get_vocab()) - len(tok.all_special_ids)
    assert "cat" in [t for t, _ in card.promoted]


def test_page_order_examples_first_tables_once_and_the_reason_for_each_latent(tiny):
    model, store, sae = tiny
    reasons = {LATENTS[0]: "chosen: best AUROC for topic:travel (0.93)"}
    d = build_dashboard(model, sae, store, LATENTS[:2], n_examples=3, n_quantile_examples=2, reasons=reasons,
                        progress=False)
    page = d.to_html()
    for latent in LATENTS[:2]:
        panel = page[page.index(f'id="latent-{latent}"'):]
        panel = panel[:panel.index("</section>")]
        # The top examples come before the histograms; the group examples after them.
        top, hist = panel.index('class="examples top-examples"'), panel.index(f'data-figure="fig-{latent}-histogram"')
        assert top < hist < panel.index('class="examples quantile-examples"')
        # Promoted and suppressed tokens once: one table each, no bar chart repeating them.
        assert panel.count("<th>promoted</th>") == 1 and panel.count("<th>suppressed</th>") == 1
        card = d.card(latent)
        for (p, _), (n, _) in zip(card.promoted, card.suppressed):
            assert panel.count(f"<td>{html.escape(repr(p))}</td>") == 1
            assert panel.count(f"<td>{html.escape(repr(n))}</td>") == 1
        assert "fig-{latent}-logits\"" not in panel and panel.count('class="plot"') == 2
        reason = reasons.get(latent, "requested")
        assert f'<p class="reason">{reason}</p>' in panel
    assert [f["reason"] for f in d.to_json()["features"]] == [reasons[LATENTS[0]], "requested"]
    with pytest.raises(InterpError, match=r"reasons name latents \[7\] that are not shown"):
        build_dashboard(model, sae, store, [1], reasons={7: "x"}, progress=False)


def test_errors_name_the_problem_and_the_fix(tiny):
    model, store, sae = tiny
    with pytest.raises(InterpError, match=r"latents \[64\] are out of range.*64 latents"):
        build_dashboard(model, sae, store, [1, 64], progress=False)
    with pytest.raises(InterpError, match="trained at 'blocks.0.hook_resid_post'.*store.select"):
        build_dashboard(model, sae, store.select("blocks.0.mlp.hook_post"), [1], progress=False)
    with pytest.raises(InterpError, match="label 'x' has 3 rows but the store has"):
        build_dashboard(model, sae, store, [1], labels={"x": torch.zeros(3)}, progress=False)
    with pytest.raises(InterpError, match="latents repeat"):
        build_dashboard(model, sae, store, [1, 1], progress=False)


def test_html_is_one_self_contained_file(dash, tmp_path):
    path = tmp_path / "features.html"
    dash.save_html(path)
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)  # everything inline
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", text, re.IGNORECASE)
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js itself is inlined
    assert text.count('class="feature-panel"') == len(LATENTS)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind


def test_json_export_has_neuronpedia_fields(dash, tmp_path):
    dash.save_json(tmp_path / "f.json")
    data = json.loads((tmp_path / "f.json").read_text())
    assert data["format"] == "interp-feature-dashboard" and data["layer"] == "0-resid_post"
    assert [f["index"] for f in data["features"]] == [str(i) for i in LATENTS]
    for f, latent in zip(data["features"], LATENTS):
        card = dash.card(latent)
        assert f["modelId"] == "tiny-gpt2-seed0" and f["layer"] == "0-resid_post"
        assert f["frac_nonzero"] == pytest.approx(card.density, abs=1e-6)
        assert sum(f["freq_hist_data_bar_heights"]) == card.n_fire
        assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"]) == 20
        assert len(f["pos_str"]) == len(f["pos_values"]) == len(f["neg_str"]) == len(f["neg_values"]) == 10
        assert f["pos_values"] == sorted(f["pos_values"], reverse=True)
        assert len(f["activations"]) == len(card.top) + sum(len(g.examples) for g in card.quantiles)
        for a in f["activations"]:
            assert len(a["tokens"]) == len(a["values"])
            assert a["maxValue"] == max(a["values"]) == a["values"][a["maxValueTokenIndex"]]
            assert {"binMin", "binMax", "binContains", "qualifyingTokenIndex"} <= set(a)
        assert f["activations"][0]["binMin"] is None and f["activations"][-1]["binMin"] is not None
        assert f["label_matches"][0]["label"] in ("cat", "the")


def test_notebook_views(dash):
    figures = dash.figures(LATENTS[0])
    assert {"histogram", "logits", "logit_histogram"} <= set(figures)
    assert list(figures["histogram"].data[0].y) == dash.card(LATENTS[0]).hist_counts
    html = dash.examples_html(LATENTS[0])
    assert html.count('class="example"') == len(dash.card(LATENTS[0]).top) + sum(
        len(g.examples) for g in dash.card(LATENTS[0]).quantiles)
    assert "rgba(255, 110, 0, 1.000)" in html  # the top token is shaded at full strength
    assert dash._repr_html_().count("Latent ") == len(LATENTS)
    with pytest.raises(KeyError, match="shows"):
        dash.card(999)


def test_cli_writes_html_and_json(tiny_gpt2_dir, tmp_path, capsys):
    from interp.cli import main

    model = interp.load(str(tiny_gpt2_dir))
    interp.harvest(model, _texts(10), hooks=[HOOK], out=tmp_path / "s", context_length=32, progress=False)
    sae = saes.TopKSAE(32, 16, k=2)
    sae.metadata.update(hook_name=HOOK)
    sae.save(tmp_path / "sae")
    code = main(["dashboard", "--model", str(tiny_gpt2_dir), "--sae", str(tmp_path / "sae"), "--store",
                 str(tmp_path / "s"), "--latents", "0,2-3", "--out", str(tmp_path / "f.html"),
                 "--json", str(tmp_path / "f.json")])
    assert code == 0 and "3 latent(s)" in capsys.readouterr().out
    assert (tmp_path / "f.html").read_text().count('class="feature-panel"') == 3
    assert [f["index"] for f in json.loads((tmp_path / "f.json").read_text())["features"]] == ["0", "2", "3"]
    assert main(["dashboard", "--model", str(tiny_gpt2_dir), "--sae", str(tmp_path / "sae"), "--store",
                 str(tmp_path / "s"), "--latents", "0,x"]) == 1
    assert "not a list of integers" in capsys.readouterr().err


# ---------------------------------------------------------------- world model


def _world_available() -> bool:
    from interp.world import default_model_path

    return (default_model_path() / "model.safetensors").exists()


@pytest.mark.skipif(not _world_available(), reason="the default world model is not built: run `interp world train`")
def test_world_store_gets_planted_labels_automatically(tmp_path):
    from interp.world import labelled_batch
    from interp.world.lexicon import SENTIMENTS, TOPICS

    model = interp.load("world", device="cpu")
    # World documents packed into windows as a harvest packs text, each token's labels alongside.
    batch = labelled_batch(400, seed=4)
    real = batch.mask
    stream = batch.tokens[real]
    n = len(stream) // 64
    windows = stream[: n * 64].reshape(n, 64)
    store = interp.harvest(model, windows, hooks=["hook_embed"], out=tmp_path / "w", progress=False)
    keep = torch.ones_like(windows, dtype=torch.bool)
    keep[:, 0] = windows[:, 0] != model.bos_token_id
    tokens = windows[keep]
    truth = {k: batch.labels[k][real][: n * 64].reshape(n, 64)[keep] for k in ("topic", "sentiment")}
    assert len(tokens) == len(store)
    # Planted "dictionary" codes: latent 0 fires on the word "capital", latent 1 on cooking
    # documents, latent 2 on positive sentences (every token of them, as the generator marks them).
    capital = model.tokenizer.convert_tokens_to_ids("capital")
    cooking = list(TOPICS).index("cooking")
    positive = truth["sentiment"] == SENTIMENTS.index("positive")
    assert (tokens == capital).sum() >= 25 and (truth["topic"] == cooking).sum() >= 50 and positive.sum() >= 50
    coefficients = torch.rand(len(store), 3) * 0.01
    coefficients[:, 0] += (tokens == capital).float()
    coefficients[:, 1] += (truth["topic"] == cooking).float()
    coefficients[:, 2] += positive.float()
    result = saes.SNMFResult(torch.randn(3, store.d), coefficients, [0.0], 0)
    reasons = {1: "chosen: best AUROC for topic:cooking (0.97)"}
    d = build_dashboard(model, result, store, [0, 1, 2], reasons=reasons, progress=False)
    assert d.labels_source == "world planted labels"
    best = d.card(0).label_matches[0]
    assert best.label == "relation:capital" and best.scope == "token" and best.auroc == pytest.approx(1.0)
    best = d.card(1).label_matches[0]
    assert best.label == "topic:cooking" and best.scope == "document" and best.auroc > 0.9, d.card(1).label_matches
    documents = [m for m in d.card(2).label_matches if m.scope == "document"]
    assert documents[0].label == "sentiment:positive" and documents[0].auroc > 0.9, d.card(2).label_matches
    # Every panel lists document labels beside token labels, each with its AUROC and support.
    for card in d.cards:
        assert {m.scope for m in card.label_matches} == {"token", "document"}
        assert all(m.n_positive >= 25 for m in card.label_matches)
    page = d.to_html()
    panel = page[page.index('id="latent-1"'):page.index('id="latent-2"')]
    assert "chosen: best AUROC for topic:cooking (0.97)" in panel
    top = d.card(1).label_matches[0]
    assert f"<td>topic:cooking</td><td class=\"num\">{top.auroc:.3f}</td><td class=\"num\">{top.n_positive:,}</td>" \
        in panel


def test_window_topics_agree_with_the_generators_topic_label():
    from interp.activations.row_labels import window_topics
    from interp.world import World, labelled_batch

    world = World()
    batch = labelled_batch(300, seed=11)
    real = batch.mask
    stream, truth = batch.tokens[real].tolist(), batch.labels["topic"][real].tolist()
    labels = _window_topic_tables(world)
    bos = world.vocab.index("<bos>")
    assigned = right = topical = found = 0
    for a in range(0, len(stream) - 127, 127):  # windows as a harvest packs them: BOS + 127 tokens
        window, true = [bos] + stream[a:a + 127], [-1] + truth[a:a + 127]
        for guess, y in zip(window_topics(window, *labels), true):
            assigned, right = assigned + (guess >= 0), right + (guess >= 0 and guess == y)
            topical, found = topical + (y >= 0), found + (y >= 0 and guess == y)
    assert right / assigned > 0.99, (right, assigned)  # what it labels, it labels right
    assert found / topical > 0.85, (found, topical)  # most topical tokens get their topic


@pytest.mark.parametrize(("label", "least_recall"), [("doc_kind", 0.85), ("sentiment", 0.4), ("qa_part", 0.9)])
def test_window_document_labels_agree_with_the_generators_labels(label, least_recall):
    from interp.activations import row_labels as ll
    from interp.world import World, labelled_batch
    from interp.world.labels import SCHEMA

    world = World()
    tables = ll.WindowTables.of(world)
    batch = labelled_batch(300, seed=11)
    real = batch.mask
    stream, truth = batch.tokens[real].tolist(), batch.labels[label][real].tolist()
    generator_names = SCHEMA[label].names
    ours = {"doc_kind": ll.DOC_KINDS, "sentiment": ll.SENTIMENTS, "qa_part": ll.QA_PARTS}[label]
    assigned = right = labelled = found = 0
    for a in range(0, len(stream) - 127, 127):  # windows as a harvest packs them: BOS + 127 tokens
        window, true = [tables.bos] + stream[a:a + 127], [-1] + truth[a:a + 127]
        for guess, y in zip(ll.window_document_labels(window, tables)[label], true):
            # A neutral sentence never shows itself before its end: it is not a concept here.
            y_name = generator_names[y] if y >= 0 and generator_names[y] in ours else None
            g_name = ours[guess] if guess >= 0 else None
            assigned, right = assigned + (g_name is not None), right + (g_name is not None and g_name == y_name)
            labelled, found = labelled + (y_name is not None), found + (y_name is not None and g_name == y_name)
    assert assigned > 500 and right / assigned > 0.98, (right, assigned)  # what it labels, it labels right
    assert found / labelled > least_recall, (found, labelled)


def _window_topic_tables(world):
    """window_topics' tables, built the way WorldTokenLabels builds them."""
    from interp.activations.row_labels import NON_TOPICAL_CLASSES, NON_TOPICAL_WORDS
    from interp.world.labels import WORD_CLASSES, lexical_tables

    t = lexical_tables(world)
    word_topics = [set(row.nonzero()[:, 0].tolist()) for row in t["word_topics"]]
    non_topical = [WORD_CLASSES[int(c)] in NON_TOPICAL_CLASSES or w in NON_TOPICAL_WORDS
                   for c, w in zip(t["word_class"], world.vocab)]
    return word_topics, non_topical, world.vocab.index("<bos>"), world.vocab.index("<eos>")


# ---------------------------------------------------------------- browser


def _browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


WIDTHS = (1280, 800)  # a laptop screen and a half-screen window


def _artefact_dir(tmp_path: Path) -> tuple[Path, Path | None]:
    """Screenshots go under pytest's tmp path and, when INTERP_TEST_ARTEFACTS names a folder, there too."""
    import os

    local = tmp_path / "screenshots"
    local.mkdir()
    extra = os.environ.get("INTERP_TEST_ARTEFACTS")
    return local, (Path(extra) / "dashboards" if extra else None)


LAYOUT_PROBE = """
const rect = e => e.getBoundingClientRect();
const panels = Array.from(document.querySelectorAll('section.feature-panel'));
return {
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  fold: window.innerHeight,
  firstExample: rect(document.querySelector('.top-examples .example')).top,
  panels: panels.map(p => {
    const plots = Array.from(p.querySelectorAll('.plots .plot'));
    const box = rect(p.querySelector('.plots'));
    const rows = {};
    plots.forEach(d => { const r = rect(d); (rows[Math.round(r.top)] = rows[Math.round(r.top)] || []).push(r); });
    return {
      drawn: p.querySelectorAll('.js-plotly-plot .main-svg').length > 0,
      // The own token's left edge in every top example: one column when rows are aligned.
      own: Array.from(p.querySelectorAll('.top-examples .example .tok.own')).map(e => rect(e).left),
      examplesTop: rect(p.querySelector('.top-examples')).top,
      histTop: rect(p.querySelector('.plots')).top,
      // Per row of plots: the space left at its right end, and how far each plot's drawing
      // falls short of its box (a gap either way).
      rowGaps: Object.values(rows).map(r => box.right - Math.max(...r.map(x => x.right))),
      svgGaps: plots.map(d => rect(d).width - rect(d.querySelector('.main-svg')).width),
    };
  }),
};
"""


@pytest.mark.skipif(_browser() is None, reason="no Chromium with chromedriver on this machine: .ci/run installs "
                                               "them (apt-get install chromium chromium-driver)")
def test_html_renders_in_headless_chromium_without_console_errors(dash, tmp_path):
    """The page draws every figure without a script error, and at 1280 and 800 px: the top
    examples open the first screen, ahead of the histograms; each example's own token sits
    in one column; the histograms fill their rows; nothing overflows sideways. Screenshots
    of the first screen and of the whole page at each width are kept (see _artefact_dir)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install -e .[test]")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "features.html"
    dash.save_html(path)
    shots, extra = _artefact_dir(tmp_path)
    chromium, chromedriver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--hide-scrollbars", "--window-size=1280,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    layouts, errors = {}, []
    try:
        for width in WIDTHS:
            # The viewport itself, not the window (whose frame differs between Chromium builds).
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
            driver.get(path.as_uri())
            try:  # the page sets data-rendered once every figure is drawn; a script error never gets there
                WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.rendered"))
            except TimeoutException:
                pass
            n_figures = int(driver.execute_script("return document.body.dataset.rendered || 0"))
            assert n_figures == 2 * len(LATENTS), f"{n_figures} figures drawn at {width}px"
            layouts[width] = driver.execute_script(LAYOUT_PROBE)
            layouts[width]["examples"] = driver.execute_script(
                "return document.querySelectorAll('.example .tok.own').length")
            driver.save_screenshot(str(shots / f"dashboard-{width}-first-screen.png"))
            height = min(int(driver.execute_script("return document.documentElement.scrollHeight")), 12_000)
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            driver.save_screenshot(str(shots / f"dashboard-{width}-page.png"))
            errors += [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    if extra is not None:
        extra.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, extra / png.name)
    assert errors == []
    n_examples = sum(len(dash.card(i).top) + sum(len(g.examples) for g in dash.card(i).quantiles) for i in LATENTS)
    for width, layout in layouts.items():
        assert layout["overflow"] <= 0, f"the page scrolls sideways at {width}px"
        assert layout["examples"] == n_examples
        assert layout["firstExample"] < layout["fold"], f"no example on the first screen at {width}px"
        assert len(layout["panels"]) == len(LATENTS)
        for panel in layout["panels"]:
            assert panel["drawn"] and panel["examplesTop"] < panel["histTop"]
            assert max(panel["own"]) - min(panel["own"]) < 1.0, (width, panel["own"])
            assert all(abs(g) < 2 for g in panel["rowGaps"]), (width, panel["rowGaps"])
            assert all(abs(g) < 2 for g in panel["svgGaps"]), (width, panel["svgGaps"])
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(
        f"dashboard-{w}-{kind}.png" for w in WIDTHS for kind in ("first-screen", "page"))
