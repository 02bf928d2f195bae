"""Query-side adaptation (train.side: query): documents keep the base model's vectors, queries go
through a trained adapter; indexes of the base model serve the tuned model without re-encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from test_index import QUERIES, V1, make_cfg, write_corpus
from test_training import make_mined, trainable_model_dir  # noqa: F401 (a fixture)
from tiny_models import build_tiny_bert

from embedtune.config import ModelConfig
from embedtune.encoding import cache_path, encode_corpus, encode_texts
from embedtune.errors import IndexMismatchError
from embedtune.index import build_index, open_index, query_index
from embedtune.io import save_model_atomically
from embedtune.models import QUERY_SIDE_FILE, load_model
from embedtune.query_side import add_query_adapter, interpolate_query_side, query_adapter
from embedtune.search import exact_search
from embedtune.mined import load_mined
from embedtune.training import TrainConfig, train_model

TEXTS = ["vitamin d and cancer risk in adults", "salt intake raises blood pressure", "fish oil for the heart",
         "a numpy array sum", "protein synthesis drives cell growth", "sleep and memory"]


def _cfg(model: str, **kw) -> TrainConfig:
    return TrainConfig.model_validate({"model": {"name": model, "precision": "fp32"}, "side": "query", "epochs": 30,
                                       "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0,
                                       "dev": {"holdout_fraction": 0.2, "early_stopping_patience": None}, **kw})


@pytest.fixture(scope="module")
def trained(trainable_model_dir, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("query_side")
    mined = make_mined(tmp / "mined", n_queries=60, distinct=True)
    manifest = train_model(_cfg(trainable_model_dir), mined, tmp / "train", progress=False)
    return tmp, mined, manifest


def test_fixture_tells_texts_apart(trainable_model_dir):  # noqa: F811
    vectors = encode_texts(load_model(trainable_model_dir), TEXTS, precision="fp32", show_progress=False)
    cos = vectors @ vectors.T
    assert cos[~np.eye(len(TEXTS), dtype=bool)].max() < 0.99


def test_query_side_training_improves_dev_and_leaves_documents_byte_identical(trained, trainable_model_dir):  # noqa: F811
    tmp, mined, manifest = trained
    metrics = manifest["metrics"]
    assert metrics["best_dev_ndcg@10"] > metrics["base_dev_ndcg@10"], metrics
    assert metrics["rows"]["documents_encoded_by_new_model"] == 0
    base, tuned = load_model(trainable_model_dir), load_model(str(tmp / "train" / "model"))
    # the adapter learned its training queries: their positives rise in the ranking of the corpus
    data = load_mined(mined)
    corpus = [json.loads(line) for line in (mined / "beir" / "corpus.jsonl").read_text().splitlines()]
    doc_ids, doc_texts = [d["_id"] for d in corpus], [d["text"] for d in corpus]
    docs = encode_texts(base, doc_texts, precision="fp32", show_progress=False)
    queries, positives = data.columns["query"], [doc_ids.index(p) for p in data.columns["positive_id"]]

    def mrr(model) -> float:
        _, idx = exact_search(encode_texts(model, queries, precision="fp32", show_progress=False, task="query"), docs, 10)
        return float(np.mean([1.0 / (list(row).index(p) + 1) if p in row else 0.0 for row, p in zip(idx, positives)]))

    assert mrr(tuned) > mrr(base) + 0.05
    docs_base = encode_texts(base, TEXTS, precision="fp32", show_progress=False)
    docs_tuned = encode_texts(tuned, TEXTS, precision="fp32", show_progress=False, task="document")
    assert docs_base.tobytes() == docs_tuned.tobytes()
    queries_base = encode_texts(base, TEXTS, precision="fp32", show_progress=False, task="query")
    queries_tuned = encode_texts(tuned, TEXTS, precision="fp32", show_progress=False, task="query")
    assert np.abs(queries_base - queries_tuned).max() > 1e-3  # the adapter moved the queries
    record = json.loads((tmp / "train" / "model" / QUERY_SIDE_FILE).read_text())
    assert record["document_encoder"]["sha256"] == base.fingerprint == tuned.document_fingerprint
    assert tuned.fingerprint != base.fingerprint


def test_the_tuned_model_reads_the_base_models_cached_corpus(trained, trainable_model_dir, tmp_path):  # noqa: F811
    tmp, _, _ = trained
    base, tuned = load_model(trainable_model_dir), load_model(str(tmp / "train" / "model"))
    cfg = ModelConfig(name=trainable_model_dir, precision="fp32")
    ids = [f"d{i}" for i in range(len(TEXTS))]
    assert cache_path(tuned, cfg, ids, TEXTS, tmp_path) == cache_path(base, cfg, ids, TEXTS, tmp_path)
    assert cache_path(tuned, cfg, ids, TEXTS, tmp_path, task="query") != cache_path(base, cfg, ids, TEXTS, tmp_path, task="query")
    first = np.array(encode_corpus(base, cfg, ids, TEXTS, cache_dir=tmp_path, show_progress=False))
    tuned.encode = None  # the cached entry must be used: encoding would fail
    assert np.array(encode_corpus(tuned, cfg, ids, TEXTS, cache_dir=tmp_path, show_progress=False)).tobytes() == first.tobytes()


def test_an_identity_adapter_reproduces_the_base_rankings_exactly(trainable_model_dir):  # noqa: F811
    base = load_model(trainable_model_dir)
    identity = add_query_adapter(base)
    docs = encode_texts(base, TEXTS, precision="fp32", show_progress=False)
    q_base = encode_texts(base, QUERIES, precision="fp32", show_progress=False, task="query")
    q_identity = encode_texts(identity, QUERIES, precision="fp32", show_progress=False, task="query")
    np.testing.assert_allclose(q_identity, q_base, atol=1e-6)
    s_base, i_base = exact_search(q_base, docs, len(TEXTS))
    s_identity, i_identity = exact_search(q_identity, docs, len(TEXTS))
    assert (i_base == i_identity).all()
    np.testing.assert_allclose(s_identity, s_base, atol=1e-6)


def test_interpolation_runs_from_the_base_to_the_trained_adapter(trained):
    tmp, _, _ = trained
    tuned = load_model(str(tmp / "train" / "model"))
    w = query_adapter(tuned).linear.weight.detach().numpy()
    assert np.abs(w - np.eye(len(w))).max() > 1e-3
    np.testing.assert_allclose(query_adapter(interpolate_query_side(tuned, 0.0)).linear.weight.detach().numpy(), np.eye(len(w)), atol=1e-7)
    half = query_adapter(interpolate_query_side(tuned, 0.5)).linear.weight.detach().numpy()
    np.testing.assert_allclose(half, (w + np.eye(len(w))) / 2, atol=1e-6)
    assert query_adapter(tuned).linear.weight.detach().numpy().tobytes() == w.tobytes()  # the source is untouched


def test_a_base_index_serves_the_query_model_and_another_encoders_index_refuses_it(trained, trainable_model_dir, tmp_path):  # noqa: F811
    tmp, _, _ = trained
    corpus = write_corpus(tmp_path / "corpus.jsonl", V1)
    base_index = tmp_path / "base-index"
    build_index(make_cfg(trainable_model_dir, corpus).model_copy(update={"cache_dir": str(tmp_path / "cache")}), base_index, show_progress=False)
    def stored() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((base_index / "searcher").iterdir())}

    vectors_before = stored()
    index = open_index(base_index, str(tmp / "train" / "model"))
    hits = query_index(index, QUERIES, 3)
    base_hits = query_index(open_index(base_index), QUERIES, 3)
    assert all(len(h) == 3 for h in hits)
    assert [[x.passage_id for x in h] for h in hits] != [[x.passage_id for x in h] for h in base_hits] or \
        any(abs(a.score - b.score) > 1e-4 for h, g in zip(hits, base_hits) for a, b in zip(h, g))
    assert stored() == vectors_before  # searched as it is: nothing re-encoded or rewritten

    other = build_tiny_bert(tmp_path / "other", seed=1)
    other_index = tmp_path / "other-index"
    build_index(make_cfg(str(other), corpus).model_copy(update={"cache_dir": str(tmp_path / "cache")}), other_index, show_progress=False)
    with pytest.raises(IndexMismatchError, match=r"field 'index.document_encoder_sha256'.*query-side model"):
        open_index(other_index, str(tmp / "train" / "model"))


def test_the_saved_query_model_round_trips_through_sentence_transformers(trained, trainable_model_dir, tmp_path):  # noqa: F811
    from sentence_transformers import SentenceTransformer

    tmp, _, _ = trained
    tuned = load_model(str(tmp / "train" / "model"))
    save_model_atomically(tuned, tmp_path / "copy")
    assert (tmp_path / "copy" / QUERY_SIDE_FILE).is_file()
    plain = SentenceTransformer(str(tmp_path / "copy"), device="cpu")
    base = SentenceTransformer(trainable_model_dir, device="cpu")
    np.testing.assert_array_equal(plain.encode_document(TEXTS), base.encode(TEXTS))
    np.testing.assert_allclose(plain.encode_query(QUERIES), tuned.st.encode(QUERIES, task="query"), atol=1e-6)
    assert np.abs(plain.encode_query(QUERIES) - base.encode(QUERIES)).max() > 1e-3


def test_query_side_settings_are_checked(trainable_model_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValidationError, match="side 'query'"):
        _cfg(trainable_model_dir, loss={"name": "margin_mse"}, negatives_per_query=1)
    with pytest.raises(ValidationError, match="side 'query'"):
        _cfg(trainable_model_dir, rounds=2)
    (tmp_path / "m").mkdir()
    bad = Path(tmp_path / "m" / QUERY_SIDE_FILE)
    bad.write_text("{}")
    from embedtune.errors import ModelError
    from embedtune.models import read_query_side

    with pytest.raises(ModelError, match=r"query_side.json: field 'document_encoder.sha256'"):
        read_query_side(tmp_path / "m")


def test_the_encoder_kind_trains_a_query_copy_and_keeps_documents(trainable_model_dir, tmp_path):  # noqa: F811
    from sentence_transformers import SentenceTransformer

    mined = make_mined(tmp_path / "mined", n_queries=30, distinct=True)
    cfg = _cfg(trainable_model_dir, query_side="encoder", epochs=3, learning_rate=1e-3, dev={"enabled": False})  # last epoch ships
    manifest = train_model(cfg, mined, tmp_path / "train", progress=False)
    assert manifest["metrics"]["steps"] > 0
    base, tuned = load_model(trainable_model_dir), load_model(str(tmp_path / "train" / "model"))
    assert tuned.query_side["kind"] == "encoder" and tuned.document_fingerprint == base.fingerprint
    docs = encode_texts(base, TEXTS, precision="fp32", show_progress=False)
    assert encode_texts(tuned, TEXTS, precision="fp32", show_progress=False).tobytes() == docs.tobytes()
    moved = encode_texts(tuned, QUERIES, precision="fp32", show_progress=False, task="query")
    assert np.abs(moved - encode_texts(base, QUERIES, precision="fp32", show_progress=False)).max() > 1e-3
    back = encode_texts(interpolate_query_side(tuned, 0.0), QUERIES, precision="fp32", show_progress=False, task="query")
    np.testing.assert_allclose(back, encode_texts(base, QUERIES, precision="fp32", show_progress=False), atol=1e-6)
    plain = SentenceTransformer(str(tmp_path / "train" / "model"), device="cpu")  # loads without embedtune
    np.testing.assert_allclose(plain.encode_query(QUERIES), moved, atol=1e-5)


def test_merge_moves_a_query_side_model_toward_its_base_and_refuses_what_cannot_merge(trained, trainable_model_dir, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    from embedtune.cli import app

    tmp, _, _ = trained
    tuned_dir = str(tmp / "train" / "model")
    base, tuned = load_model(trainable_model_dir), load_model(tuned_dir)

    def merge(*args: str) -> object:
        return CliRunner().invoke(app, ["merge", "--base", trainable_model_dir, *args])

    def query_vectors(model) -> np.ndarray:
        return encode_texts(model, QUERIES, precision="fp32", show_progress=False, task="query")

    for alpha in ("0", "0.5", "1"):
        res = merge("--model", tuned_dir, "--alpha", alpha, "--out", str(tmp_path / f"merged-{alpha}"))
        assert res.exit_code == 0, res.output
    merged = {a: load_model(str(tmp_path / f"merged-{a}")) for a in ("0", "0.5", "1")}
    base_queries, tuned_queries = query_vectors(base), query_vectors(tuned)
    np.testing.assert_allclose(query_vectors(merged["0"]), base_queries, atol=1e-6)
    np.testing.assert_allclose(query_vectors(merged["1"]), tuned_queries, atol=1e-6)
    mid = query_vectors(merged["0.5"])
    assert min(np.abs(mid - end).max() for end in (base_queries, tuned_queries)) > 1e-3  # between the two, equal to neither
    base_docs = encode_texts(base, TEXTS, precision="fp32", show_progress=False).tobytes()
    for model in merged.values():  # still the base's documents: its indexes and cached vectors serve the merge
        assert model.query_side and model.document_fingerprint == base.fingerprint
        assert encode_texts(model, TEXTS, precision="fp32", show_progress=False).tobytes() == base_docs

    other = build_tiny_bert(tmp_path / "other-base", seed=7)
    for args, says in ((["--model", tuned_dir, "--model", tuned_dir], "merges with its base alone"),
                       (["--base", str(other), "--model", tuned_dir], "document encoder is not the --base")):
        res = merge(*args, "--alpha", "0.5", "--out", str(tmp_path / "refused"))
        assert res.exit_code == 5, res.output
        errors = [line for line in res.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and says in errors[0], res.stderr
        assert not (tmp_path / "refused").exists()


def test_the_hybrid_teacher_term_is_the_kl_divergence_over_the_corpus_and_changes_training(trainable_model_dir, tmp_path):  # noqa: F811
    import torch

    from embedtune.lexical import bm25_index
    from embedtune.mining.teachers import hybrid_teacher_rows
    from embedtune.query_side import _CorpusTeacher

    cfg = _cfg(trainable_model_dir, hybrid_teacher={"bm25_weight": 0.5, "stats_depth": 3})
    base = load_model(trainable_model_dir)
    docs = torch.from_numpy(encode_texts(base, TEXTS, precision="fp32", show_progress=False))
    queries = ["vitamin d cancer", "blood pressure and salt", "heart fish"]
    teacher = _CorpusTeacher(cfg, encode_texts(base, queries, precision="fp32", show_progress=False), queries, TEXTS, docs)
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0, 0.5, 2.0], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    # by hand: sum_d p_t(d) * (log p_t(d) - log p_model(d)), averaged over the two queries
    target = cfg.loss.scale * hybrid_teacher_rows(teacher.queries[[0, 2]] @ docs.numpy().T, [queries[0], queries[2]],
                                                  bm25_index(TEXTS), 0.5, 3)
    p_t = np.exp(target - target.max(1, keepdims=True))
    p_t /= p_t.sum(1, keepdims=True)
    log_p = logits.numpy() - np.log(np.exp(logits.numpy()).sum(1, keepdims=True))
    expected = float(np.mean((p_t * (np.log(p_t) - log_p)).sum(1)))
    assert teacher.kl([0, 2], logits).item() == pytest.approx(expected, rel=1e-4)
    assert expected > 0.1  # the teacher's rows are not the model's: the term has something to teach

    mined = make_mined(tmp_path / "mined", n_queries=30, distinct=True)
    plain_cfg = _cfg(trainable_model_dir, epochs=3, dev={"enabled": False})
    train_model(plain_cfg, mined, tmp_path / "plain", progress=False)
    train_model(plain_cfg.model_copy(update={"hybrid_teacher": cfg.hybrid_teacher}), mined, tmp_path / "taught", progress=False)
    plain, taught = (query_adapter(load_model(str(tmp_path / f / "model"))).linear.weight.detach().numpy() for f in ("plain", "taught"))
    assert np.abs(plain - taught).max() > 1e-3
    with pytest.raises(ValidationError, match="needs side 'query'"):
        TrainConfig.model_validate({"model": {"name": trainable_model_dir}, "hybrid_teacher": {}})
    for bad in ({"weight": 0}, {"bm25_weight": 1.0}, {"stats_depth": 1}):
        with pytest.raises(ValidationError, match=f"hybrid_teacher.{next(iter(bad))}"):
            _cfg(trainable_model_dir, hybrid_teacher=bad)


def test_unlabeled_queries_learn_from_the_teacher_alone_and_need_it(trainable_model_dir, tmp_path):  # noqa: F811
    import torch

    from embedtune.errors import ConfigError
    from embedtune.query_side import _CorpusTeacher, train_query_side

    corpus = {f"d{i}": t for i, t in enumerate(TEXTS)}
    texts = ["vitamin d cancer", "blood pressure and salt", "heart fish", "array sum"]
    queries = {f"q{i}": t for i, t in enumerate(texts)}
    cfg = _cfg(trainable_model_dir, hybrid_teacher={"bm25_weight": 0.5, "stats_depth": 3}, max_steps=1, batch_size=8)
    with pytest.raises(ConfigError, match="no relevant document") as err:
        train_query_side(cfg.model_copy(update={"hybrid_teacher": None}), corpus, queries, {}, None, None, tmp_path / "refused",
                         precision="fp32", progress=False)
    assert err.value.field == "train.hybrid_teacher" and not (tmp_path / "refused").exists()

    # one step from the identity adapter: the loss recorded is the teacher's KL alone, no contrastive term
    out = train_query_side(cfg, corpus, queries, {}, None, None, tmp_path / "unlabeled", precision="fp32", progress=False)
    base = load_model(trainable_model_dir)
    docs = torch.from_numpy(encode_texts(base, TEXTS, precision="fp32", show_progress=False))
    qv = encode_texts(base, texts, precision="fp32", show_progress=False)
    teacher = _CorpusTeacher(cfg, qv, texts, TEXTS, docs)
    kl = teacher.kl(list(range(4)), cfg.loss.scale * torch.from_numpy(qv) @ docs.T).item()
    assert out["curve"]["loss"][0]["loss"] == pytest.approx(kl, rel=1e-4) and kl > 0.01
    # a labeled query beside them adds its contrastive term
    labeled = train_query_side(cfg, corpus, queries, {"q0": {"d0"}}, None, None, tmp_path / "mixed", precision="fp32", progress=False)
    assert labeled["curve"]["loss"][0]["loss"] > out["curve"]["loss"][0]["loss"] + 1e-3
    moved = query_adapter(load_model(str(tmp_path / "unlabeled"))).linear.weight.detach().numpy()
    assert np.abs(moved - np.eye(moved.shape[0])).max() > 1e-4
