"""Evaluation: metrics against hand-computed values, the paired significance test on cases with
known answers, BM25 sanity, and `embedtune eval` end to end on a tiny BEIR folder."""

from __future__ import annotations

import json
from math import log2

import numpy as np
import pytest
from typer.testing import CliRunner

from embedtune.cli import app
from embedtune.evaluation import (
    METRICS,
    compute_metrics,
    mean_metrics,
    paired_randomization_test,
    wins_ties_losses,
)
from embedtune.lexical import bm25_search
from helpers import write_beir

# --------------------------------------------------------------------------- metrics

# Graded qrels: q1 has a highly relevant (2) and a relevant (1) document and a judged
# non-relevant one (0); q2 one relevant document; q3 two, but the run returns nothing for q3.
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0},
    "q2": {"d4": 1},
    "q3": {"d5": 1, "d6": 2},
}
RUN = {
    "q1": {"d2": 0.9, "d1": 0.8, "d3": 0.7, "d7": 0.6},
    # the query's own id (q2) must be ignored, as BEIR does: d4 is then at rank 3
    "q2": {"q2": 1.0, "d7": 0.9, "d8": 0.8, "d4": 0.7},
}


def test_metrics_match_hand_computed_values():
    per_query = compute_metrics(QRELS, RUN)
    got = mean_metrics(per_query)
    assert set(got) == set(METRICS)

    # nDCG (trec_eval): gain = relevance grade, discount 1 / log2(rank + 1)
    # q1 ranking: d2 (1), d1 (2), d3 (0), d7 (-); ideal: 2, 1
    q1_ndcg10 = (1 / log2(2) + 2 / log2(3)) / (2 / log2(2) + 1 / log2(3))
    q1_ndcg1 = 1 / 2
    q2_ndcg10 = (1 / log2(4)) / 1  # d4 at rank 3 once q2 itself is dropped
    assert per_query["ndcg@10"]["q1"] == pytest.approx(q1_ndcg10, abs=1e-6)
    assert per_query["ndcg@10"]["q2"] == pytest.approx(q2_ndcg10, abs=1e-6)
    assert per_query["ndcg@10"]["q3"] == 0.0  # not in the run: scores 0, and is counted
    assert got["ndcg@10"] == pytest.approx((q1_ndcg10 + q2_ndcg10 + 0) / 3, abs=1e-6)
    assert got["ndcg@1"] == pytest.approx((q1_ndcg1 + 0 + 0) / 3, abs=1e-6)
    assert got["ndcg@3"] == pytest.approx(got["ndcg@10"], abs=1e-9)  # nothing relevant below rank 3

    # recall: relevant = grade >= 1; q1 has 2, q2 1, q3 2
    assert got["recall@1"] == pytest.approx((1 / 2 + 0 + 0) / 3, abs=1e-6)
    assert got["recall@5"] == pytest.approx((2 / 2 + 1 / 1 + 0) / 3, abs=1e-6)
    assert got["recall@10"] == pytest.approx(2 / 3, abs=1e-6)
    # precision: P@1 = rank 1 relevant; P@10 counts relevant in 10 slots
    assert got["p@1"] == pytest.approx((1 + 0 + 0) / 3, abs=1e-6)
    assert got["p@10"] == pytest.approx((2 / 10 + 1 / 10 + 0) / 3, abs=1e-6)
    # MRR@10: 1 / rank of the first relevant document
    assert per_query["mrr@10"] == pytest.approx({"q1": 1.0, "q2": 1 / 3, "q3": 0.0})
    assert got["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-9)
    # MAP@10: mean of precision at each relevant rank, over all relevant documents
    assert got["map@10"] == pytest.approx(((1 / 1 + 2 / 2) / 2 + (1 / 3) / 1 + 0) / 3, abs=1e-6)


def test_mrr_ignores_documents_below_rank_10():
    run = {"q2": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"d4": 0.01}}
    per_query = compute_metrics({"q2": {"d4": 1}}, run)
    assert per_query["mrr@10"]["q2"] == 0.0
    assert per_query["recall@100"]["q2"] == 1.0


# --------------------------------------------------------------------------- significance


def test_identical_runs_give_p_one_and_a_ci_around_zero():
    a = list(np.random.default_rng(0).random(40))
    res = paired_randomization_test(a, a, permutations=1000)
    assert res["p_value"] == 1.0 and res["delta"] == 0.0
    assert res["ci95"][0] <= 0.0 <= res["ci95"][1]


def test_exact_enumeration_on_a_tiny_case():
    # deltas 0.1, 0.2, 0.3, -0.1 (sum 0.5). Of the 16 sign assignments of (0.1, 0.2, 0.3, 0.1)
    # |sum| >= 0.5 holds for: all +, all -, one 0.1 flipped (2 ways), and their mirrors (2):
    # 6 of 16, so p = 0.375 exactly.
    a = [0.5, 0.5, 0.5, 0.5]
    b = [0.6, 0.7, 0.8, 0.4]
    res = paired_randomization_test(a, b)
    assert res["p_value"] == pytest.approx(6 / 16, abs=1e-12)
    assert res["delta"] == pytest.approx(0.125)


def test_exact_enumeration_smallest_p():
    # all 5 deltas positive: only the observed assignment and its mirror reach |mean| -> 2 / 32
    res = paired_randomization_test([0.0] * 5, [0.1, 0.2, 0.1, 0.3, 0.2])
    assert res["p_value"] == pytest.approx(2 / 32)


def test_large_constant_improvement_is_significant():
    a = np.random.default_rng(1).random(300) * 0.9
    res = paired_randomization_test(a, a + 0.05, permutations=5000, seed=3)
    assert res["p_value"] < 0.01
    assert res["p_value"] == pytest.approx(1 / 5001)  # no sampled flip reaches the observed mean
    assert res["delta"] == pytest.approx(0.05)
    assert res["ci95"] == pytest.approx([0.05, 0.05])


def test_symmetric_deltas_are_not_significant():
    a = np.zeros(200)
    b = np.where(np.arange(200) % 2 == 0, 0.3, -0.3)  # mean delta 0
    res = paired_randomization_test(a, b, permutations=2000)
    assert res["p_value"] > 0.5
    assert res["ci95"][0] < 0 < res["ci95"][1]


def test_wins_ties_losses():
    a = {"q1": 0.5, "q2": 0.5, "q3": 0.5, "q4": 0.2}
    b = {"q1": 0.7, "q2": 0.5, "q3": 0.1, "q4": 0.9}
    assert wins_ties_losses(a, b) == {"wins": 2, "ties": 1, "losses": 1}


# --------------------------------------------------------------------------- BM25


def test_bm25_ranks_matching_documents_and_drops_non_matching():
    ids = ["a", "b", "c", "d"]
    texts = [
        "vitamin d levels and cancer risk",
        "salt intake raises blood pressure",
        "vitamin c and the common cold",
        "numpy arrays and matrix products",
    ]
    scores, ranked = bm25_search(ids, texts, ["vitamin cancer", "blood pressure salt", "quantum chromodynamics"], k=3)
    assert ranked[0][0] == "a" and "c" in ranked[0] and "d" not in ranked[0]
    assert np.all(np.diff(scores[0]) <= 0) and np.all(scores[0] > 0)
    assert ranked[1] == ["b"]  # the only document sharing a term
    assert ranked[2] == [] and len(scores[2]) == 0
    # stemming: "raising" matches "raises"
    _, ranked = bm25_search(ids, texts, ["raising"], k=4)
    assert ranked[0] == ["b"]


def test_bm25_top_k_is_bm25s_scores_ranked_ties_by_row():
    """The numba top-k (all queries at once) against bm25s' own per-query scores, sorted:
    same documents, same scores, ties (duplicate documents) in row order, repeated terms counted."""
    from embedtune.lexical import bm25_index, bm25_retrieve, bm25_scores

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, size=8)) for _ in range(300)]
    texts += texts[:20]  # exact duplicates: tied scores
    retriever = bm25_index(texts)
    queries = [" ".join(rng.choice(words, size=3)) for _ in range(25)] + ["w1 w1 w2", "nothing matches"]
    for k in (1, 7, 50, len(texts)):
        got = bm25_retrieve(retriever, queries, k)
        for query, (rows, scores) in zip(queries, got):
            full = bm25_scores(retriever, query)
            if full is None:
                assert len(rows) == 0
                continue
            full = np.asarray(full, dtype=np.float32)
            order = [r for r in np.lexsort((np.arange(len(full)), -full)) if full[r] > 0][:k]
            assert rows.tolist() == order and np.allclose(scores, full[order], rtol=1e-6)


# --------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory) -> str:
    from tiny_models import build_tiny_bert

    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_2"), seed=1))


def test_cli_eval_end_to_end(tmp_path, tiny_model_dir, second_model_dir, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(cache))
    data = write_beir(tmp_path / "beir")
    out = tmp_path / "eval"
    args = ["eval", "--model", tiny_model_dir, "--model", second_model_dir, "--label", "base", "--label", "other",
            "--bm25", "--benchmark", str(data), "--split", "test", "--out", str(out), "--json"]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["dataset"] == "beir" and summary["split"] == "test" and summary["queries"] == 3
    assert list(summary["models"]) == ["base", "other", "bm25"]
    for name, metrics in summary["models"].items():
        assert set(metrics) == set(METRICS), name
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # q1 -> d1, q2 -> d2, q3 -> d2, d3 are all lexical matches: BM25 finds each at rank 1
    assert summary["models"]["bm25"]["recall@10"] == 1.0
    for name in ("other", "bm25"):
        assert set(summary["deltas"][name]) == set(METRICS)
        for m, d in summary["deltas"][name].items():
            assert d["delta"] == pytest.approx(summary["models"][name][m] - summary["models"]["base"][m], abs=1e-9)
            assert 0.0 < d["p_value"] <= 1.0 and d["ci95"][0] <= d["ci95"][1]
        assert sum(summary["wins_ties_losses"][name].values()) == 3

    for name in ("metrics.json", "report.md", "metrics.png", "delta_other.png", "delta_bm25.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "eval" and manifest["status"] == "complete"
    assert manifest["metrics"]["models"] == summary["models"]
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["systems"][0]["per_query"]["ndcg@10"]) == {"q1", "q2", "q3"}
    report = (out / "report.md").read_text()
    assert "| ndcg@10 |" in report and "## other vs base" in report and "## bm25 vs base" in report
    # corpus and queries of both models were cached
    assert len(list(cache.rglob("*.npy"))) == 4

    # the same evaluation into the same folder is reused, not recomputed
    import embedtune.evaluation as evaluation

    monkeypatch.setattr(evaluation, "dense_run", lambda *a, **k: pytest.fail("should have been reused"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    summary2 = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary2["models"] == summary["models"] and summary2["deltas"] == summary["deltas"]
    assert "reused" in again.stderr


def test_cli_eval_refuses_another_config_in_the_same_folder(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "beir")
    out = tmp_path / "eval"
    runner = CliRunner()
    first = runner.invoke(app, ["eval", "--model", tiny_model_dir, "--benchmark", str(data), "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    assert len(json.loads(first.stdout.strip().splitlines()[-1])["models"]) == 1
    other = runner.invoke(app, ["eval", "--model", tiny_model_dir, "--bm25", "--benchmark", str(data), "--out", str(out)])
    assert other.exit_code == 7, other.output
    assert "another config" in other.stderr


def test_cli_eval_needs_a_system(tmp_path):
    data = write_beir(tmp_path / "beir")
    result = CliRunner().invoke(app, ["eval", "--benchmark", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 4
    assert "nothing to evaluate" in result.stderr


def test_models_read_at_different_token_limits_are_flagged(tmp_path, tiny_model_dir, caplog, monkeypatch):
    import logging

    from embedtune.config import ModelConfig
    from embedtune.evaluation import EvalConfig, evaluate

    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    data = write_beir(tmp_path / "beir")

    def run(*lengths: int) -> str:
        caplog.clear()
        models = [ModelConfig(name=tiny_model_dir, max_seq_length=n) for n in lengths]
        with caplog.at_level(logging.WARNING, logger="embedtune"):
            evaluate(EvalConfig(benchmark=str(data), split="test", models=models, labels=["a", "b"]), show_progress=False)
        return caplog.text

    assert "different token limits (a 64, b 16)" in run(64, 16)
    assert "different token limits" not in run(64, 64)
