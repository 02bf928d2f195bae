"""Loading BEIR folders, domain corpora and pairs into typed data."""

from __future__ import annotations

import json

import pytest
from helpers import DOCS, write_beir

from embedtune.corpus import Document, load_beir, load_corpus, load_pairs, parse_benchmark_source, split_into_passages
from embedtune.errors import InputError


def test_beir_matches_generic_data_loader(tmp_path):
    """Same corpus, queries and qrels as beir's GenericDataLoader, CRLF qrels included."""
    from beir.datasets.data_loader import GenericDataLoader

    folder = write_beir(tmp_path / "ds", newline="\r\n")
    corpus, queries, qrels = GenericDataLoader(str(folder)).load(split="test")
    ds = load_beir(folder, "test")
    assert {k: {"title": d.title, "text": d.text} for k, d in ds.corpus.items()} == {
        k: {"title": v["title"], "text": v["text"]} for k, v in corpus.items()
    }
    assert ds.queries == queries
    assert ds.qrels == qrels
    assert ds.qrels["q2"]["d2"] == 2  # graded scores kept


def test_full_text_is_title_space_text():
    assert Document("x", "body", "Title").full_text == "Title body"
    assert Document("x", "body").full_text == "body"


def test_domain_corpus_formats(tmp_path):
    rows = [{"doc": "a", "heading": "A", "body": "first text"}, {"doc": "b", "heading": "", "body": "second"}]
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv = tmp_path / "c.csv"
    csv.write_text("doc,heading,body\na,A,first text\nb,,second\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for path in (jl, csv, tmp_path / "c.parquet"):
        docs = load_corpus(path, id_field="doc", title_field="heading", text_field="body")
        assert list(docs) == ["a", "b"], path
        assert docs["a"].full_text == "A first text"
        assert docs["b"].full_text == "second"


def test_text_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "one.md").write_text("# Heading One\n\nsome body\n")
    (tmp_path / "notes" / "two.txt").write_text("plain text\n")
    docs = load_corpus(tmp_path / "notes")
    assert docs["one.md"].title == "Heading One"
    assert docs["two.txt"].title == "two"
    assert docs["two.txt"].text == "plain text"


def test_pairs(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2"]}) + "\n" + json.dumps({"query": "q2", "positive": "p2"}) + "\n")
    pairs = load_pairs(p)
    assert pairs[0].negatives == ("n1", "n2") and pairs[1].negatives == ()


def test_split_into_passages_traceable(tiny_model_dir):
    from embedtune.models import load_tokenizer

    tokenizer, _ = load_tokenizer(tiny_model_dir)
    words = " ".join(f"cell{i}" for i in range(100))  # each word -> several tokens
    docs = {"long": Document("long", words, "T"), "short": Document("short", "protein", "")}
    passages, report = split_into_passages(docs, tokenizer, max_tokens=32, overlap=8)
    long_parts = [p for p in passages if p.doc_id == "long"]
    assert len(long_parts) > 3 and report.split_documents == 1
    assert [p.position for p in long_parts] == list(range(len(long_parts)))
    for p in long_parts:
        assert p.id == f"long#{p.position}"
        assert words[p.char_start : p.char_end] == p.text  # traceable to the source span
        assert len(tokenizer(p.full_text)["input_ids"]) <= 32
    # consecutive passages overlap
    assert long_parts[1].char_start < long_parts[0].char_end
    # the whole text is covered
    assert long_parts[0].char_start == 0 and long_parts[-1].char_end == len(words)
    assert [p.id for p in passages if p.doc_id == "short"] == ["short"]


def test_split_truncates_huge_document_with_warning(tiny_model_dir, caplog):
    from embedtune.models import load_tokenizer

    tokenizer, _ = load_tokenizer(tiny_model_dir)
    docs = {"huge": Document("huge", "protein " * 2000)}
    passages, report = split_into_passages(docs, tokenizer, max_tokens=32, overlap=0, max_passages_per_doc=5)
    assert len(passages) == 5 and report.truncated_documents == 1 and report.dropped_passages > 0
    assert "truncated" in caplog.text and f"{report.dropped_passages} passage(s) dropped" in caplog.text


def test_benchmark_source(tmp_path, monkeypatch):
    write_beir(tmp_path / "data" / "mini")
    monkeypatch.chdir(tmp_path)
    folder, split = parse_benchmark_source("mini:train")
    assert split == "train" and (folder / "corpus.jsonl").is_file()
    with pytest.raises(InputError, match="no BEIR dataset 'nope'"):
        parse_benchmark_source("nope:test")


def test_skip_unknown_ids_is_explicit_and_counted(tmp_path):
    folder = write_beir(tmp_path / "ds", qrels={"test": [("q1", "d1", 1), ("q1", "zzz", 1)]})
    with pytest.raises(InputError):
        load_beir(folder, "test")
    ds = load_beir(folder, "test", skip_unknown_ids=True)
    assert ds.skipped_qrels == 1 and ds.qrels == {"q1": {"d1": 1}}


@pytest.mark.slow
def test_real_scifact_counts():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact"
    if not root.is_dir():
        pytest.skip("../shared/datasets/scifact not present")
    test = load_beir(root, "test")
    train = load_beir(root, "train")
    assert len(test.corpus) == 5183 and len(test.queries) == 300 and len(train.queries) == 809
    assert sum(len(d) for d in test.qrels.values()) == 339 and sum(len(d) for d in train.qrels.values()) == 919
