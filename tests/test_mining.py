"""Hard-negative mining: the vectorised filters and sampling on hand-made scores, then the whole
stage on tiny data with tiny random models built offline."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest

from embedtune.errors import ConfigError
from embedtune.mining import MineConfig
from embedtune.mining.candidates import rrf_fuse
from embedtune.mining.filters import filter_candidates, rank_among_non_positives, sample_negatives

# --------------------------------------------------------------------------- filters


def _filter(scores, positive, duplicate, floor, **kw):
    scores = np.array(scores, dtype=np.float32)
    valid = np.isfinite(scores)
    kw.setdefault("range_min", 0)
    kw.setdefault("range_max", scores.shape[1])
    return filter_candidates(scores, valid, np.array(positive, bool), np.array(duplicate, bool), np.array(floor, np.float32), **kw)


def test_positives_and_duplicates_are_never_negatives_and_do_not_take_window_ranks():
    scores = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]
    positive = [[0, 1, 0, 0, 0, 0]]
    duplicate = [[0, 0, 0, 1, 0, 0]]
    keep, counts = _filter(scores, positive, duplicate, [0.8], range_max=3, relative_margin=0.05)
    # non-positive ranks: 0.9 -> 1, 0.7 -> 2, 0.5 -> 3 (0.6 is a duplicate), 0.4 -> 4 (outside the window)
    assert keep.tolist() == [[False, False, True, False, True, False]]
    assert counts == {"known_positive": 1, "duplicate_of_positive": 1, "window_candidates": 3,
                      "relative_margin": 1, "absolute_margin": 0, "max_score": 0}


def test_relative_margin_is_sign_safe():
    # positive -0.2, margin 0.5: threshold -0.2 - 0.1 = -0.3 (pos * (1 - m) would wrongly be -0.1)
    keep, counts = _filter([[-0.25, -0.29, -0.31, -0.5]], [[0] * 4], [[0] * 4], [-0.2], relative_margin=0.5)
    assert keep.tolist() == [[False, False, True, True]] and counts["relative_margin"] == 2
    keep, _ = _filter([[0.76, 0.7601, 0.75]], [[0] * 3], [[0] * 3], [0.8], relative_margin=0.05)
    assert keep.tolist() == [[True, False, True]]  # 0.76 is exactly the threshold: kept (strictly above drops)


def test_filters_count_each_candidate_once_in_order():
    scores = [[0.95, 0.85, 0.75, 0.65, 0.55]]
    keep, counts = _filter(scores, [[0] * 5], [[0] * 5], [0.9], relative_margin=0.0, absolute_margin=0.1, max_score=0.7)
    # relative (> 0.9): 0.95; absolute (> 0.8): 0.85; max_score (> 0.7): 0.75
    assert keep.tolist() == [[False, False, False, True, True]]
    assert (counts["relative_margin"], counts["absolute_margin"], counts["max_score"]) == (1, 1, 1)


def test_range_min_skips_best_non_positive_candidates_and_padding_is_ignored():
    scores = [[0.9, 0.8, 0.7, -np.inf], [0.5, 0.4, 0.3, 0.2]]
    keep, counts = _filter(scores, [[1, 0, 0, 0], [0, 0, 0, 0]], [[0] * 4] * 2, [0.95, 0.6], range_min=1, range_max=3)
    assert keep.tolist() == [[False, False, True, False], [False, True, True, False]]
    assert counts["window_candidates"] == 3 and counts["known_positive"] == 1
    assert rank_among_non_positives(np.isfinite(np.array(scores)), np.array([[1, 0, 0, 0], [0] * 4], bool)).tolist() == [[0, 1, 2, 0], [1, 2, 3, 4]]


# --------------------------------------------------------------------------- sampling


def test_top_sampling_takes_best_ranked_eligible():
    eligible = np.array([[0, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 1]], bool)
    assert sample_negatives(eligible, 3, "top").tolist() == [[1, 2, 4], [5, -1, -1]]


def test_random_sampling_is_seeded_uniform_and_chunk_independent():
    rng = np.random.default_rng(0)
    eligible = rng.random((400, 20)) < 0.7
    ids = np.tile(np.arange(100, 120), (400, 1))
    keys = np.arange(400, dtype=np.uint64)
    a = sample_negatives(eligible, 4, "random", seed=1, query_keys=keys, candidate_ids=ids)
    b = np.concatenate([sample_negatives(eligible[s : s + 7], 4, "random", seed=1, query_keys=keys[s : s + 7], candidate_ids=ids[s : s + 7]) for s in range(0, 400, 7)])
    assert (a == b).all()  # chunking does not change the draw
    assert not (a == sample_negatives(eligible, 4, "random", seed=2, query_keys=keys, candidate_ids=ids)).all()
    for row, el in zip(a, eligible):
        got = row[row >= 0]
        assert len(got) == min(4, el.sum()) and el[got].all() and (np.diff(got) > 0).all()  # rank order
    hits = np.bincount(a[a >= 0], minlength=20) / eligible.sum(0)
    assert hits.min() > 0.2 and hits.max() < 0.37  # about 4 / 14 = 0.29 each: uniform, not top-biased


# --------------------------------------------------------------------------- fusion


def test_rrf_fusion_matches_hand_computation():
    dense = np.array([[10, 11, 12, -1]])
    bm25 = np.array([[12, 13, 10, 14]])
    fused = rrf_fuse([dense, bm25], depth=4, k=60)
    # 10: 1/61 + 1/63; 12: 1/63 + 1/61 (tie -> lower id first); 11: 1/62; 13: 1/62; 14: 1/64
    assert fused.tolist() == [[10, 12, 11, 13]]
    assert rrf_fuse([np.array([[-1, -1]])], depth=3).tolist() == [[-1, -1, -1]]


# --------------------------------------------------------------------------- config validation


def test_window_smaller_than_num_negatives_is_a_config_error():
    from embedtune.config import build_config

    with pytest.raises(ConfigError, match=r"num_negatives \(8\) does not fit in the rank window"):
        build_config(MineConfig, {"pairs": "x:train", "range_min": 45, "range_max": 50})
    with pytest.raises(ConfigError, match="range_max"):
        build_config(MineConfig, {"pairs": "x:train", "range_min": 5, "range_max": 5})
    cfg = MineConfig(pairs="x:train")
    assert (cfg.relative_margin, cfg.num_negatives, cfg.range_max, cfg.sampling) == (0.05, 8, 50, "top")


# --------------------------------------------------------------------------- tiny data and models

WORDS = (
    "protein cell gene cancer risk patients study effect disease treatment dose blood heart brain liver vitamin "
    "diet food fat sugar salt water acid fish increase decrease reduce high low level result data model search "
    "index query document passage vector embedding train test loss batch score function array value number "
    "string list file path name python numpy torch tensor matrix sum mean sort random seed error type"
).split()


def write_tiny_beir(folder, *, n_docs=60, n_queries=16, positives_per_query=2, duplicate_of=None, seed=0):
    """Random documents over the tiny vocabulary; each query is words of its positives."""
    from helpers import write_beir

    rng = np.random.default_rng(seed)
    docs = {}
    for i in range(n_docs):
        docs[f"doc{i}"] = (" ".join(rng.choice(WORDS, 2)), " ".join(rng.choice(WORDS, 14)))
    if duplicate_of is not None:  # a second document with exactly the text of a positive
        docs["dup"] = docs[duplicate_of]
    queries, train = {}, []
    for q in range(n_queries):
        pos = [f"doc{j}" for j in rng.choice(n_docs, positives_per_query, replace=False)]
        if duplicate_of is not None and q == 0:
            pos[0] = duplicate_of
        words = " ".join(docs[pos[0]][1].split()[:3] + docs[pos[-1]][1].split()[:2])
        queries[f"q{q}"] = words
        train += [(f"q{q}", d, 1) for d in pos]
    test = [("q0", "doc1", 1)]
    return write_beir(folder, docs=docs, queries=queries, qrels={"train": train, "test": test})


def _tokenizer(folder):
    """WordPiece over the tiny vocabulary. vocab= rather than vocab_file=: with transformers 5
    BertTokenizerFast(vocab_file=...) keeps only the special tokens, so every word would be [UNK]."""
    from tiny_models import VOCAB_WORDS
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + VOCAB_WORDS + list(string.ascii_lowercase + string.digits) + ["##" + c for c in string.ascii_lowercase]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)


def build_bi_encoder(folder):
    """A tiny random BERT bi-encoder whose tokenizer knows the words (distinct embeddings per text)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    tok = _tokenizer(folder / "_hf")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder / "_hf", safe_serialization=True)
    tok.save_pretrained(folder / "_hf")
    model = SentenceTransformer(modules=[Transformer(str(folder / "_hf"), max_seq_length=64), Pooling(32, pooling_mode="mean"), Normalize()], device="cpu")
    model.save(str(folder / "model"), safe_serialization=True)
    return folder / "model"


def build_cross_encoder(folder):
    """A tiny random cross-encoder: BertForSequenceClassification (num_labels=1) + the same tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = _tokenizer(folder)
    torch.manual_seed(1)
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=64, num_labels=1)).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bi_encoder(tmp_path_factory):
    return str(build_bi_encoder(tmp_path_factory.mktemp("bi")))


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory):
    return str(build_cross_encoder(tmp_path_factory.mktemp("ce")))


@pytest.fixture()
def beir(tmp_path):
    return write_tiny_beir(tmp_path / "beir")


def mine(tmp_path, model, pairs, out="out", **settings):
    from embedtune.config import build_config
    from embedtune.mining import mine_hard_negatives

    settings["model"] = {"name": model, "precision": "fp32", **settings.get("model", {})}
    settings.setdefault("cache_dir", str(tmp_path / "cache"))
    settings.setdefault("range_max", 20)
    settings.setdefault("num_negatives", 4)
    cfg = build_config(MineConfig, {"pairs": pairs, **settings})
    summary = mine_hard_negatives(cfg, tmp_path / out, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / out / "pairs.jsonl").read_text().splitlines()]
    return summary, rows


def check_rows(rows, known, relative_margin=None, num_negatives=4, margin_against="weakest"):
    """Contract checks every mined dataset must pass."""
    floor = {}
    pick, start = (min, np.inf) if margin_against == "weakest" else (max, -np.inf)
    for r in rows:
        floor[r["query_id"]] = pick(floor.get(r["query_id"], start), r["positive_score"])
    for r in rows:
        n = len(r["negative_ids"])
        assert n <= num_negatives and len(r["negatives"]) == len(r["negative_scores"]) == len(r["negative_ranks"]) == n
        assert not set(r["negative_ids"]) & known.get(r["query_id"], set())
        mined_ranks = [k for k in r["negative_ranks"] if k > 0]
        assert mined_ranks == sorted(mined_ranks)
        if relative_margin is not None:
            f = floor[r["query_id"]]
            assert all(s <= f - abs(f) * relative_margin + 1e-6 for s, k in zip(r["negative_scores"], r["negative_ranks"]) if k > 0)


# --------------------------------------------------------------------------- the stage


def _known(folder, split="train"):
    from embedtune.corpus import load_beir

    return {q: {d for d, s in judged.items() if s > 0} for q, judged in load_beir(folder, split).qrels.items()}


def test_beir_mining_writes_the_contract_format(tmp_path, beir, bi_encoder):
    import datasets

    summary, rows = mine(tmp_path, bi_encoder, f"{beir}:train", relative_margin=0.0)
    out = tmp_path / "out"
    ds = datasets.load_from_disk(str(out / "dataset"))
    assert ds.column_names == ["query_id", "query", "positive_id", "positive", "positive_score",
                               "negative_ids", "negatives", "negative_scores", "negative_ranks"]
    assert len(ds) == len(rows) == 32 and ds[0]["negative_ids"] == rows[0]["negative_ids"]
    counts = summary["filter_counts"]
    assert summary["negatives"] == sum(len(r["negative_ids"]) for r in rows) > 0
    assert summary["rows_full"] + summary["rows_short"] + summary["rows_without_negatives"] == 32
    assert counts["relative_margin"] > 0 and counts["eligible"] == counts["window_candidates"] - counts["relative_margin"]
    known = _known(beir)
    check_rows(rows, known, relative_margin=0.0)
    from embedtune.corpus import load_corpus

    corpus = load_corpus(beir)
    for r in rows:
        assert r["positive"] == corpus[r["positive_id"]].full_text
        assert r["negatives"] == [corpus[d].full_text for d in r["negative_ids"]]
    assert json.loads((out / "qrels.json").read_text()) == {q: {d: 1 for d in ds_} for q, ds_ in known.items()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "mine" and manifest["status"] == "complete"
    assert manifest["config"]["corpus"] == str(beir.resolve()) and manifest["config"]["pairs"] == f"{beir.resolve()}:train"
    assert manifest["pairs_source"]["given"] == f"{beir}:train"
    assert manifest["config"]["relative_margin"] == 0.0 and manifest["config"]["num_negatives"] == 4
    report = (out / "report.md").read_text()
    assert "## Filters" in report and "## Examples" in report and "relative_margin" in report
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG" and (out / "negative_ranks.png").is_file()


def test_margin_against_the_strongest_positive_keeps_more_negatives(tmp_path, beir, bi_encoder):
    # 2 positives per query: the weakest-positive reference is the stricter one
    weak, weak_rows = mine(tmp_path, bi_encoder, f"{beir}:train", out="weak", relative_margin=0.0)
    strong, strong_rows = mine(tmp_path, bi_encoder, f"{beir}:train", out="strong", relative_margin=0.0, margin_against="strongest")
    check_rows(strong_rows, _known(beir), relative_margin=0.0, margin_against="strongest")
    assert strong["filter_counts"]["relative_margin"] < weak["filter_counts"]["relative_margin"]
    assert strong["filter_counts"]["eligible"] > weak["filter_counts"]["eligible"]
    # some negative now scores above the query's weakest positive (which "weakest" forbids)
    floor = {}
    for r in strong_rows:
        floor[r["query_id"]] = min(floor.get(r["query_id"], np.inf), r["positive_score"])
    assert any(s > floor[r["query_id"]] for r in strong_rows for s in r["negative_scores"])


def test_agrees_with_sentence_transformers(tmp_path, beir, bi_encoder):
    """Same settings as sentence-transformers' mine_hard_negatives -> the same negatives (fp32)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from embedtune.corpus import load_beir

    data = load_beir(beir, "train")
    pairs = [(data.queries[q], data.corpus[d].full_text) for q, judged in data.qrels.items() for d in judged]
    st = st_mine(
        Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [p for _, p in pairs]}),
        SentenceTransformer(bi_encoder, device="cpu"), corpus=[d.full_text for d in data.corpus.values()],
        range_max=10, relative_margin=0.01, num_negatives=3, sampling_strategy="top", output_format="n-tuple", verbose=False,
    )
    _, rows = mine(tmp_path, bi_encoder, f"{beir}:train", relative_margin=0.01, range_max=10, num_negatives=3)
    ours = {(r["query"], r["positive"]): r["negatives"] for r in rows}
    assert len(st) > 0
    for r in st:
        assert ours[(r["query"], r["positive"])] == [r["negative_1"], r["negative_2"], r["negative_3"]]


def test_rerun_is_skipped_and_other_config_needs_overwrite(tmp_path, beir, tiny_model_dir):
    from typer.testing import CliRunner

    from embedtune.cli import app

    args = ["mine", "--model", tiny_model_dir, "--pairs", f"{beir}:train", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--range-max", "10", "--num-negatives", "2", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["skipped"] is False and result["pairs"] == 32
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["skipped"] is True
    other = CliRunner().invoke(app, [*args, "--relative-margin", "0.1"])
    assert other.exit_code == 7 and "another config" in other.output
    forced = CliRunner().invoke(app, [*args, "--relative-margin", "0.1", "--overwrite"])
    assert forced.exit_code == 0
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["relative_margin"] == 0.1


def test_a_folder_made_before_a_setting_existed_is_reused_while_it_stays_at_its_default(tmp_path, beir, tiny_model_dir):
    """A release that adds a setting changes every stage key (the key hashes defaults too); the
    recorded config decides: an added setting at its default is the same work, an added setting
    set otherwise or a setting whose value (or default) changed is other work."""
    from typer.testing import CliRunner

    from embedtune.cli import app

    args = ["mine", "--model", tiny_model_dir, "--pairs", f"{beir}:train", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "--range-max", "10", "--num-negatives", "2", "--json"]
    assert CliRunner().invoke(app, args).exit_code == 0
    path = tmp_path / "run" / "manifest.json"
    made = json.loads(path.read_text())

    def as_if_made(config):  # the manifest an older release wrote: its own config and key
        path.write_text(json.dumps({**made, "key": "0" * 64, "config": config}))

    older = {k: v for k, v in made["config"].items() if k != "margin_against"}
    as_if_made(older)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["skipped"] is True
    assert json.loads(path.read_text())["key"] == "0" * 64  # left as it was: later stages see no change
    other = CliRunner().invoke(app, [*args, "--margin-against", "strongest"])
    assert other.exit_code == 7 and "another config" in other.output
    as_if_made({**older, "relative_margin": made["config"]["relative_margin"] + 0.01})  # a default that changed
    changed = CliRunner().invoke(app, args)
    assert changed.exit_code == 7 and "another config" in changed.output


def test_mining_again_reuses_the_corpus_embeddings(tmp_path, beir, bi_encoder, monkeypatch):
    """The second run with other settings encodes the queries only (counted at the model's input)."""
    import embedtune.models

    encoded = []
    real_load = embedtune.models.load_model

    def counting_load(cfg):
        model = real_load(cfg)
        model.st[0].register_forward_pre_hook(lambda module, args: encoded.append(len(args[0]["input_ids"])))
        return model

    monkeypatch.setattr(embedtune.models, "load_model", counting_load)
    mine(tmp_path, bi_encoder, f"{beir}:train", out="a")
    first = sum(encoded)
    assert first == 60 + 16  # documents + queries
    encoded.clear()
    mine(tmp_path, bi_encoder, f"{beir}:train", out="b", sampling="random", relative_margin=None, range_max=30)
    assert sum(encoded) == 16


def test_bad_settings_fail_before_any_model_is_loaded(tmp_path, beir, monkeypatch):
    import embedtune.models
    from embedtune.errors import InputError

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(embedtune.models, "load_model", no_model)
    monkeypatch.setattr(embedtune.models, "model_fingerprint", no_model)
    with pytest.raises(ConfigError, match="does not fit in the rank window"):
        mine(tmp_path, "minilm", f"{beir}:train", num_negatives=8, range_min=5, range_max=10)
    with pytest.raises(InputError, match=r"split 'dev' not found \(available: test, train\)"):
        mine(tmp_path, "minilm", f"{beir}:dev")
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"query": "q", "positive": "in no document"}) + "\n")
    with pytest.raises(InputError, match="p.jsonl:1: field 'positive': positive matches no corpus document"):
        mine(tmp_path, "minilm", str(pairs), corpus=str(beir), unmatched_positives="error")
    with pytest.raises(ConfigError, match="--corpus is required"):
        mine(tmp_path, "minilm", str(pairs))
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, beir):
    from typer.testing import CliRunner

    from embedtune.cli import app

    base = ["mine", "--model", "minilm", "--out", str(tmp_path / "o")]
    window = CliRunner().invoke(app, [*base, "--pairs", f"{beir}:train", "--range-max", "5"])
    assert window.exit_code == 4 and "num_negatives (8) does not fit" in window.output and "Traceback" not in window.output
    split = CliRunner().invoke(app, [*base, "--pairs", f"{beir}:validation"])
    assert split.exit_code == 3 and "split 'validation' not found" in split.output


def test_duplicate_texts_of_a_positive_are_never_negatives(tmp_path, bi_encoder):
    folder = write_tiny_beir(tmp_path / "dup", duplicate_of="doc3")
    summary, rows = mine(tmp_path, bi_encoder, f"{folder}:train", relative_margin=None, range_max=60, num_negatives=50)
    q0 = [r for r in rows if r["query_id"] == "q0"]
    assert q0 and all("dup" not in r["negative_ids"] and "doc3" not in r["negative_ids"] for r in q0)
    assert any("dup" in r["negative_ids"] for r in rows if r["query_id"] != "q0")  # a negative for the others
    assert summary["filter_counts"]["duplicate_of_positive"] == 1


@pytest.mark.parametrize("retriever", ["bm25", "hybrid"])
def test_bm25_and_hybrid_candidates(tmp_path, beir, bi_encoder, retriever):
    summary, rows = mine(tmp_path, bi_encoder, f"{beir}:train", retriever=retriever, relative_margin=None)
    check_rows(rows, _known(beir))
    assert summary["rows_full"] == 32
    dense_summary, dense_rows = mine(tmp_path, bi_encoder, f"{beir}:train", out="dense", relative_margin=None)
    assert [r["negative_ids"] for r in rows] != [r["negative_ids"] for r in dense_rows]
    # the filters score every candidate with the base model, whatever proposed it
    from embedtune.models import load_model

    model = load_model(bi_encoder)
    r = rows[0]
    q, n = model.st.encode([r["query"], r["negatives"][0]], normalize_embeddings=True)
    assert abs(float(q @ n) - r["negative_scores"][0]) < 1e-4


def test_random_sampling_is_seeded_and_independent_of_chunking(tmp_path, beir, bi_encoder):
    _, a = mine(tmp_path, bi_encoder, f"{beir}:train", out="a", sampling="random", relative_margin=None, seed=3)
    _, b = mine(tmp_path, bi_encoder, f"{beir}:train", out="b", sampling="random", relative_margin=None, seed=3, query_chunk_size=3)
    _, c = mine(tmp_path, bi_encoder, f"{beir}:train", out="c", sampling="random", relative_margin=None, seed=4)
    _, top = mine(tmp_path, bi_encoder, f"{beir}:train", out="top", relative_margin=None)
    ids = lambda rows: [r["negative_ids"] for r in rows]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c) and ids(a) != ids(top)
    assert max(k for r in a for k in r["negative_ranks"]) > 6  # drawn from the whole window, not the top


def test_cross_encoder_filters_and_stores_teacher_scores(tmp_path, beir, bi_encoder, cross_encoder_dir):
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    ce = CrossEncoder(cross_encoder_dir, device="cpu")
    summary, rows = mine(tmp_path, bi_encoder, f"{beir}:train", relative_margin=None, cross_encoder={"path": cross_encoder_dir, "margin": 0.0})
    r = rows[0]
    expected = ce.predict([(r["query"], r["positive"])] + [(r["query"], n) for n in r["negatives"]], activation_fn=torch.nn.Identity())
    assert np.allclose([r["teacher_positive_score"], *r["teacher_negative_scores"]], expected, atol=1e-4)
    floor = {}
    for row in rows:
        floor[row["query_id"]] = min(floor.get(row["query_id"], np.inf), row["teacher_positive_score"])
    assert all(s <= floor[row["query_id"]] + 1e-5 for row in rows for s in row["teacher_negative_scores"])
    assert summary["filter_counts"]["teacher"] > 0  # a random teacher disagrees with the retriever
    import datasets

    assert {"teacher_positive_score", "teacher_negative_scores"} <= set(datasets.load_from_disk(str(tmp_path / "out" / "dataset")).column_names)
    assert (tmp_path / "out" / "teacher_scores.png").is_file()
    everything, rows = mine(tmp_path, bi_encoder, f"{beir}:train", out="all", relative_margin=None,
                            cross_encoder={"path": cross_encoder_dir, "margin": 1000.0})
    assert everything["negatives"] == 0 and everything["filter_counts"]["teacher"] == everything["filter_counts"]["window_candidates"]


def test_pairs_jsonl_source(tmp_path, beir, bi_encoder):
    from embedtune.corpus import load_corpus

    corpus = load_corpus(beir)
    lines = [
        {"query": "vitamin blood heart", "positive": corpus["doc1"].full_text, "negatives": [corpus["doc2"].full_text, "a given negative text"]},
        {"query": "vitamin blood heart", "positive": corpus["doc5"].text},
        {"query": "fish acid water", "positive": "fish acid water protein cell in no document"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary, rows = mine(tmp_path, bi_encoder, str(path), corpus=str(beir), relative_margin=None)
    assert summary["extra_documents"] == 1 and summary["pool_documents"] == 61 and len(rows) == 3
    first = rows[0]
    assert first["negative_ids"][:2] == ["doc2", "given-negative-0"] and first["negative_ranks"][:2] == [0, 0]
    assert first["negatives"][1] == "a given negative text" and len(first["negatives"]) == 4
    assert "doc5" not in first["negative_ids"]  # a positive of the same query text (second line)
    assert rows[1]["positive_id"] == "doc5" and rows[1]["positive"] == corpus["doc5"].text
    assert rows[2]["positive_id"] == "pairs-positive-0"
    assert not (tmp_path / "out" / "qrels.json").exists()


def test_self_pairs_source(tmp_path, beir, bi_encoder):
    from embedtune.corpus import load_corpus

    summary, rows = mine(tmp_path, bi_encoder, "self", corpus=str(beir / "corpus.jsonl"), relative_margin=None,
                         self_pairs={"generators": ["crop", "title"], "crop_min_words": 3})
    corpus = load_corpus(beir)
    assert summary["source"] == "self" and {r["query_id"].split(":")[0] for r in rows} == {"crop", "title"}
    for r in rows:
        assert r["positive_id"] not in r["negative_ids"] and r["positive"] in corpus[r["positive_id"]].full_text
        assert all(corpus[r["positive_id"]].full_text != n for n in r["negatives"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Generated pairs" in report and "| crop |" in report


def test_faiss_backend_finds_the_same_negatives_as_exact_search(tmp_path, beir, bi_encoder):
    _, exact = mine(tmp_path, bi_encoder, f"{beir}:train", out="exact", relative_margin=None)
    _, flat = mine(tmp_path, bi_encoder, f"{beir}:train", out="flat", relative_margin=None, search_backend="faiss-flat")
    assert [r["negative_ids"] for r in flat] == [r["negative_ids"] for r in exact]
    assert np.allclose([s for r in flat for s in r["negative_scores"]], [s for r in exact for s in r["negative_scores"]], atol=1e-5)


def test_hybrid_teacher_fuses_bm25_and_cosine_in_cosine_units(tmp_path, beir, bi_encoder):
    """Teacher scores against a brute-force computation: BM25 z-scored by the query's top-10 BM25
    scores, mapped onto the mean and spread of its top-10 cosines, mixed with the cosine."""
    import bm25s
    import Stemmer

    from embedtune.corpus import load_corpus
    from embedtune.lexical import bm25_index
    from embedtune.mining.teachers import hybrid_teacher_rows
    from embedtune.models import load_model

    summary, rows = mine(tmp_path, bi_encoder, f"{beir}:train", relative_margin=None, hybrid_teacher={"bm25_weight": 0.3, "stats_depth": 10})
    corpus = load_corpus(beir)
    texts = [d.full_text for d in corpus.values()]
    model = load_model(bi_encoder)
    docs = model.st.encode(texts, normalize_embeddings=True)
    stemmer = Stemmer.Stemmer("english")
    bm25 = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    bm25.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    checked = 0
    queries = [r["query"] for r in rows[:6]]
    # the same teacher over the whole corpus (query-side distillation, train.hybrid_teacher)
    whole = hybrid_teacher_rows(model.st.encode(queries, normalize_embeddings=True) @ docs.T, queries, bm25_index(texts), 0.3, 10)
    for r, row in zip(rows[:6], whole):
        q = model.st.encode([r["query"]], normalize_embeddings=True)[0]
        cos_all = docs @ q
        tokens = bm25s.tokenize([r["query"]], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
        bm_all = bm25.get_scores(tokens)
        bm_top, cos_top = np.sort(bm_all)[-10:], np.sort(cos_all)[-10:]
        z = (bm_all - bm_top.mean()) / bm_top.std()
        fused = 0.7 * cos_all + 0.3 * (cos_top.mean() + cos_top.std() * z)
        expected = [fused[texts.index(t)] for t in [r["positive"], *r["negatives"]]]
        assert np.allclose([r["teacher_positive_score"], *r["teacher_negative_scores"]], expected, atol=1e-4)
        np.testing.assert_allclose(row, fused, atol=1e-4)
        checked += len(expected)
    assert checked > 6 and np.ptp(whole, axis=1).min() > 0.05  # the rows grade the documents, not a constant
    # the teacher filter works on the fused scale: a margin that removes everything leaves no negatives
    everything, _ = mine(tmp_path, bi_encoder, f"{beir}:train", out="all", relative_margin=None, hybrid_teacher={"margin": 1000.0})
    assert everything["negatives"] == 0 and everything["filter_counts"]["teacher"] == everything["filter_counts"]["window_candidates"]
    from embedtune.config import build_config

    with pytest.raises(ConfigError, match="choose one teacher"):
        build_config(MineConfig, {"pairs": "x:train", "hybrid_teacher": {}, "cross_encoder": {"path": "ce"}})
