"""Hybrid retrieval: the fusions against hand computations, the hybrid index (build, search,
update, fusion.json) and `eval --hybrid`, on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from embedtune.errors import ConfigError, IndexMismatchError
from embedtune.evaluation import choose_fusion, choose_weight
from embedtune.fusion import FusionConfig, fuse_scores
from embedtune.index import build_index, open_index, query_index, read_fusion, update_index, write_fusion
from test_index import QUERIES, V1, V2, make_cfg, write_corpus
from tiny_models import build_tiny_bert


def test_zscore_fusion_matches_hand_computation():
    dense = {"a": 0.9, "b": 0.7, "c": 0.5}
    lexical = {"b": 12.0, "d": 4.0}  # shorter than depth: every other document has BM25 0
    fused = fuse_scores(dense, lexical, FusionConfig(method="zscore", bm25_weight=0.5, depth=3))
    # dense: mean 0.7, sd sqrt(0.08/3); d (not returned) gets the last score, 0.5
    zd = {d: (v - 0.7) / (0.08 / 3) ** 0.5 for d, v in {"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.5}.items()}
    # BM25 padded to depth 3 with 0: (12, 4, 0), mean 16/3, population sd
    mean = 16 / 3
    sd = (((12 - mean) ** 2 + (4 - mean) ** 2 + mean**2) / 3) ** 0.5
    zl = {d: (v - mean) / sd for d, v in {"a": 0.0, "b": 12.0, "c": 0.0, "d": 4.0}.items()}
    expected = {d: 0.5 * zd[d] + 0.5 * zl[d] for d in "abcd"}
    assert fused.keys() == expected.keys()
    for d in expected:
        assert fused[d] == pytest.approx(expected[d], abs=1e-9)
    assert max(fused, key=fused.get) == "b"  # second in dense, first in BM25
    # a full-depth BM25 list: a document it did not return gets its last score, not 0
    full = fuse_scores(dense, lexical, FusionConfig(method="zscore", bm25_weight=0.5, depth=2))
    assert full["a"] == pytest.approx(0.5 * (0.9 - 0.8) / 0.1 + 0.5 * (4.0 - 8.0) / 4.0)


def test_minmax_and_rrf_fusion_match_hand_computation():
    dense = {"a": 0.9, "b": 0.7, "c": 0.5}
    lexical = {"c": 3.0, "d": 1.0}
    mm = fuse_scores(dense, lexical, FusionConfig(method="minmax", bm25_weight=0.5, depth=2))
    # dense top 2 (0.9, 0.7) -> (1, 0); c is below the depth, so like d (not returned) it gets the last
    # score read, 0.7 -> 0 (search fuses top-depth lists: c's 0.5 is never seen there).
    # BM25 (3, 1) fills the depth, so a document it did not return gets its last score 1, not 0: -> 0
    assert mm == pytest.approx({"a": 0.5 * 1 + 0.5 * 0, "b": 0.5 * 0 + 0.5 * 0, "c": 0.5 * 0 + 0.5 * 1, "d": 0.5 * 0 + 0})
    # a list retrieved deeper than the depth fuses exactly as its top-depth part: evaluation = serving
    for method in ("zscore", "minmax", "rrf"):
        cfg = FusionConfig(method=method, bm25_weight=0.4, depth=2, rrf_k=10)
        top2 = lambda run: dict(sorted(run.items(), key=lambda kv: -kv[1])[:2])  # noqa: E731
        assert fuse_scores(dense, lexical | {"e": 0.5}, cfg) == fuse_scores(top2(dense), lexical, cfg)
    rrf = fuse_scores(dense, lexical, FusionConfig(method="rrf", bm25_weight=0.5, rrf_k=10))
    assert rrf == pytest.approx({"a": 0.5 / 11, "b": 0.5 / 12, "c": 0.5 / 13 + 0.5 / 11, "d": 0.5 / 12})
    # the weight's ends are one retriever alone
    only_dense = fuse_scores(dense, lexical, FusionConfig(method="minmax", bm25_weight=0.0, depth=3))
    assert only_dense["a"] > only_dense["b"] > only_dense["c"] == only_dense["d"] == 0.0  # d: below every dense result
    # a query without any BM25 match keeps its dense ranking
    assert fuse_scores(dense, {}, FusionConfig()) == dense


def test_fusion_weight_bounds_are_config_errors():
    from embedtune.config import build_config
    from embedtune.evaluation import EvalConfig

    for bad in ({"bm25_weight": 1.5}, {"bm25_weight": -0.1}, {"rrf_k": 0}, {"method": "max"}):
        with pytest.raises(ConfigError):
            build_config(FusionConfig, bad, source="test")
    with pytest.raises(ConfigError, match="fusion_rule"):
        build_config(EvalConfig, {"benchmark": "x", "fusion_rule": "best"}, source="test")
    assert build_config(EvalConfig, {"benchmark": "x", "fusion_rule": "bagged"}, source="test").fusion_rule == "bagged"


def test_choose_fusion_finds_the_weight_that_ranks_the_relevant_document_first():
    # dense ranks the relevant document 3rd, BM25 1st: any weight that lets BM25 win is better
    dense = {"q1": {"a": 0.9, "b": 0.8, "rel": 0.7}, "q2": {"rel": 0.9, "x": 0.8, "y": 0.1}}
    lexical = {"q1": {"rel": 9.0, "a": 1.0}, "q2": {"x": 5.0, "rel": 4.9, "z": 1.0}}  # w in (0.5, 0.83) ranks both
    qrels = {"q1": {"rel": 1}, "q2": {"rel": 1}}
    choice = choose_fusion(dense, lexical, qrels, base=FusionConfig(method="minmax"), rule="argmax")
    assert choice.dev_ndcg == pytest.approx(1.0)
    assert 0.0 < choice.config.bm25_weight < 1.0  # neither retriever alone gets both queries right
    assert [w for w, _ in choice.curve["minmax"]][0] == 0.0 and choice.curve["minmax"][0][1] < 1.0

    # by default the dev argmax must beat the a-priori weight significantly: 2 queries cannot
    kept = choose_fusion(dense, lexical, qrels, base=FusionConfig(method="minmax"))
    assert kept.config.bm25_weight == 0.5 and kept.dev_ndcg < 1.0
    assert kept.p_value >= 0.05 and "kept bm25_weight 0.5" in kept.source and kept.as_dict()["rule"] == "significant"
    assert kept.as_dict()["p_vs_default_weight"] == pytest.approx(kept.p_value, abs=1e-4)
    # 12 such queries can: the chosen weight ships
    many_dense = {f"{q}-{i}": r for i in range(6) for q, r in dense.items()}
    many_lexical = {f"{q}-{i}": r for i in range(6) for q, r in lexical.items()}
    many_qrels = {f"{q}-{i}": r for i in range(6) for q, r in qrels.items()}
    moved = choose_fusion(many_dense, many_lexical, many_qrels, base=FusionConfig(method="minmax"))
    assert moved.config.bm25_weight == choice.config.bm25_weight and moved.p_value < 0.05


@pytest.fixture()
def hybrid_index(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "v1.jsonl", V1)
    cfg = make_cfg(tiny_model_dir, corpus).model_copy(update={"hybrid": True})
    out = tmp_path / "idx"
    summary = build_index(cfg, out, show_progress=False)
    return out, summary, tmp_path


def test_hybrid_index_search_fuses_bm25(hybrid_index):
    out, summary, _ = hybrid_index
    assert summary["hybrid"] and (out / "bm25" / "ids.json").is_file()
    assert read_fusion(out) == FusionConfig()
    index = open_index(out)
    dense = query_index(index, QUERIES, k=3)
    # BM25 alone (weight 1) ranks by shared words: "fish oil heart" -> the fish oil document
    lexical = query_index(index, QUERIES, k=3, hybrid=True, fusion=FusionConfig(method="minmax", bm25_weight=1.0))
    assert lexical[2][0].doc_id == "d3"
    assert lexical[0][0].doc_id == "d1"
    # weight 0 with min-max gives the dense ranking back
    dense_again = query_index(index, QUERIES, k=3, hybrid=True, fusion=FusionConfig(method="minmax", bm25_weight=0.0))
    assert [[h.passage_id for h in q] for q in dense_again] == [[h.passage_id for h in q] for q in dense]
    # the stored weight is what a plain --hybrid call uses
    write_fusion(out, FusionConfig(method="minmax", bm25_weight=1.0))
    stored = query_index(open_index(out), QUERIES, k=3, hybrid=True)
    assert [[h.passage_id for h in q] for q in stored] == [[h.passage_id for h in q] for q in lexical]


def test_hybrid_index_update_keeps_bm25_in_step(hybrid_index):
    out, _, tmp = hybrid_index
    write_fusion(out, FusionConfig(bm25_weight=0.3))
    update_index(out, write_corpus(tmp / "v2.jsonl", V2), show_progress=False)
    index = open_index(out)
    assert index.lexical_ids == json.loads((out / "searcher" / "ids.json").read_text()) or sorted(index.lexical_ids) == sorted(index.searcher.ids)
    assert read_fusion(out).bm25_weight == 0.3  # a setting survives the update
    hits = query_index(index, ["numpy array sum"], k=2, hybrid=True, fusion=FusionConfig(method="minmax", bm25_weight=1.0))[0]
    assert hits[0].doc_id == "d7"  # added in v2, found by BM25
    assert all(h.doc_id != "d3" for q in query_index(index, ["fish oil acid"], k=5, hybrid=True) for h in q)  # removed


def test_hybrid_search_on_a_dense_only_index_says_how_to_fix_it(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "v1.jsonl", V1)
    out = tmp_path / "idx"
    build_index(make_cfg(tiny_model_dir, corpus), out, show_progress=False)
    with pytest.raises(IndexMismatchError, match="--hybrid"):
        query_index(open_index(out), ["salt"], hybrid=True)
    from embedtune.cli import app

    result = CliRunner().invoke(app, ["search", str(out), "salt", "--hybrid"])
    assert result.exit_code == 6 and "index build --hybrid" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["index", "fusion", str(out), "--bm25-weight", "0.3"])
    assert result.exit_code == 6 and "index build --hybrid" in result.output and not (out / "fusion.json").exists()
    result = CliRunner().invoke(app, ["search", str(out), "salt", "--bm25-weight", "1.5"])
    assert result.exit_code == 4 and "bm25_weight" in result.output


def test_eval_hybrid_rows(tmp_path, tiny_model_dir):
    from helpers import write_synthetic_beir

    from embedtune.cli import app

    data = write_synthetic_beir(tmp_path / "bench")
    other = str(build_tiny_bert(tmp_path / "other", seed=1))
    result = CliRunner().invoke(app, ["eval", "--model", tiny_model_dir, "--label", "base", "--model", other, "--label", "tuned",
                                      "--benchmark", str(data), "--split", "test", "--hybrid", "--bm25", "--fusion-dev-split", "train",
                                      "--out", str(tmp_path / "ev"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["models"]) == {"base", "tuned", "hybrid(base)", "hybrid(tuned)", "bm25"}
    assert set(summary["deltas"]) == {"tuned", "hybrid(base)", "hybrid(tuned)", "bm25"}
    # every other system against the zero-training baseline
    assert set(summary["deltas_vs"]["hybrid(base)"]) == {"tuned", "hybrid(tuned)", "bm25"}
    # each model's weight is chosen on its own dev curve
    assert set(summary["fusion"]) == {"hybrid(base)", "hybrid(tuned)"}
    fusion = summary["fusion"]["hybrid(base)"]
    assert fusion["source"].startswith("bench:train") and fusion["dev_queries"] > 0
    assert summary["best"] in summary["models"]
    assert (tmp_path / "ev" / "fusion.png").is_file()
    # the dev split must not be the evaluated one
    bad = CliRunner().invoke(app, ["eval", "--model", tiny_model_dir, "--benchmark", str(data), "--split", "test", "--hybrid",
                                   "--fusion-dev-split", "test", "--out", str(tmp_path / "ev2")])
    assert bad.exit_code == 4 and "fusion_dev_split" in bad.output


def test_choose_weight_rules_on_a_clear_optimum_and_on_noise():
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    rng = np.random.default_rng(0)
    # 60 queries that all peak at 0.25: every rule leaves 0.5, the significance test agrees
    clear = np.array([[0.5, 0.9, 0.7, 0.4, 0.2]]) + rng.normal(0, 0.05, (60, 5))
    for rule in ("argmax", "bagged", "lcb", "significant"):
        w, p = choose_weight(clear, weights, rule=rule)
        assert w == 0.25 and p < 0.05, rule
    # 6 queries, each best at another weight (two at 0.0): the argmax follows the one extra query to
    # 0.0, "significant" keeps the prior and says why (p), "bagged" averages argmaxes spread over the
    # grid back toward the middle, "lcb" finds no weight whose gain's lower bound is above 0
    noise = np.eye(5)[[0, 0, 1, 2, 3, 4]]
    w_argmax, _ = choose_weight(noise, weights, rule="argmax")
    w_sig, p = choose_weight(noise, weights, rule="significant")
    w_bag, _ = choose_weight(noise, weights, rule="bagged")
    assert w_argmax != 0.5 and w_sig == 0.5 and p >= 0.05
    assert choose_weight(noise, weights, rule="lcb") == (0.5, None)
    assert abs(w_bag - 0.5) < abs(w_argmax - 0.5)
    # a tie keeps the prior; a prior outside the grid or an unknown rule is a one-line error
    assert choose_weight(np.ones((4, 5)), weights, rule="argmax") == (0.5, None)
    with pytest.raises(ConfigError, match="not among the weights"):
        choose_weight(clear, weights, prior=0.3)
    with pytest.raises(ConfigError, match="fusion rule must be one of"):
        choose_weight(clear, weights, rule="best")
