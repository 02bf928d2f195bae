"""Pair sources for mining: BEIR qrels, pairs JSONL, and self-supervised generators."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
from helpers import DOCS, write_beir

from embedtune.corpus import Document, load_corpus
from embedtune.errors import ConfigError, InputError
from embedtune.pairs import (
    KeywordQueries,
    QueryGenConfig,
    SelfPairsConfig,
    TransformersQueryGenerator,
    crop_pair,
    ict_pair,
    pairs_from_beir,
    pairs_from_corpus,
    pairs_from_jsonl,
    parse_splits,
    split_sentences,
)

LONG_DOCS = {
    "a": Document("a", "Vitamin D levels were measured in patients. Low levels increase cancer risk. The effect was high in the study.", "Vitamin D"),
    "b": Document("b", "Salt in the diet increase blood pressure. High blood pressure is a heart disease risk. Water reduce the effect.", "Salt"),
    "c": Document("c", "Fish oil is an acid. It may reduce heart disease. Results of the study were not high.", ""),
    "d": Document("d", "one sentence only without a title and with enough words to crop from it", ""),
}


# --------------------------------------------------------------------------- BEIR


def test_beir_pairs_and_known_positives_over_splits(tmp_path):
    qrels = {"train": [("q1", "d1", 1), ("q3", "d3", 1), ("q3", "d4", 0)], "dev": [("q3", "d2", 2)]}
    folder = write_beir(tmp_path / "ds", qrels=qrels)
    corpus = load_corpus(folder)
    ps = pairs_from_beir(folder, ["train"], corpus)
    assert {(p.query_id, p.positive_id) for p in ps.pairs} == {("q1", "d1"), ("q3", "d3")}
    assert ps.known_positives["q3"] == {"d3"}  # score 0 is judged non-relevant, not a positive
    assert all(p.positive == corpus[p.positive_id].full_text and p.positive_in_pool for p in ps.pairs)
    both = pairs_from_beir(folder, parse_splits("train,dev"), corpus)
    assert both.known_positives["q3"] == {"d3", "d2"}  # every split given counts
    assert both.qrels["q3"] == {"d3": 1, "d4": 0, "d2": 2}  # qrels.json keeps all judgements


def test_beir_unknown_split_lists_available(tmp_path):
    folder = write_beir(tmp_path / "ds")
    with pytest.raises(InputError, match=r"split 'dev' not found \(available: test, train\)"):
        pairs_from_beir(folder, ["dev"], load_corpus(folder))


def test_parse_splits():
    assert parse_splits("train,dev") == ["train", "dev"]
    assert parse_splits("train+train") == ["train"]
    with pytest.raises(ConfigError):
        parse_splits(" , ")


# --------------------------------------------------------------------------- pairs JSONL


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_positives_matched_by_exact_text_or_added(tmp_path):
    corpus = {k: Document(k, text, title) for k, (title, text) in DOCS.items()}
    path = _write_pairs(tmp_path / "p.jsonl", [
        {"query": "vitamin", "positive": corpus["d1"].full_text},  # full text (title + text)
        {"query": "vitamin", "positive": corpus["d2"].text},  # body only also matches
        {"query": "new", "positive": "a text in no document", "negatives": ["some negative text"]},
        {"query": "new2", "positive": "a text in no document"},  # same unmatched text -> same extra doc
        {"query": "vitamin", "positive": corpus["d1"].full_text},  # duplicate pair dropped
    ])
    ps = pairs_from_jsonl(path, corpus)
    assert [p.positive_id for p in ps.pairs] == ["d1", "d2", "pairs-positive-0", "pairs-positive-0"]
    assert ps.pairs[0].positive_in_pool and not ps.pairs[1].positive_in_pool  # body-only text is not the pool text
    assert ps.known_positives[ps.pairs[0].query_id] == {"d1", "d2"}  # all positives of one query text
    assert list(ps.extra_docs) == ["pairs-positive-0"] and ps.extra_docs["pairs-positive-0"].full_text == "a text in no document"
    assert ps.pairs[2].given_negatives == ("some negative text",)
    assert ps.stats["positives_added_to_pool"] == 1 and ps.stats["duplicate_pairs_dropped"] == 1


def test_jsonl_unmatched_positive_can_be_an_error_naming_the_line(tmp_path):
    corpus = {k: Document(k, text, title) for k, (title, text) in DOCS.items()}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": corpus["d1"].full_text}) + "\n\n" + json.dumps({"query": "b", "positive": "nowhere"}) + "\n")
    with pytest.raises(InputError) as err:
        pairs_from_jsonl(path, corpus, unmatched_positives="error")
    assert str(err.value).startswith(f"{path}:3: field 'positive': positive matches no corpus document")


# --------------------------------------------------------------------------- self-supervised


def test_split_sentences_keeps_abbreviations():
    assert split_sentences("See e.g. the results. Next one! And (the) last?\nNew line") == [
        "See e.g. the results.", "Next one!", "And (the) last?", "New line"]


def test_ict_removes_or_keeps_the_sentence():
    import numpy as np

    doc = LONG_DOCS["a"]
    removed = SelfPairsConfig(ict_keep_sentence_prob=0.0)
    kept = SelfPairsConfig(ict_keep_sentence_prob=1.0)
    for seed in range(10):
        q, pos = ict_pair(doc, np.random.default_rng(seed), removed)
        assert q in split_sentences(doc.text) and q not in pos and pos.startswith("Vitamin D ")
        q, pos = ict_pair(doc, np.random.default_rng(seed), kept)
        assert q in pos
    assert ict_pair(LONG_DOCS["d"], np.random.default_rng(0), removed) is None  # one sentence: no context


def test_ict_context_is_bounded():
    import numpy as np

    text = " ".join(f"Sentence number {i} has five words." for i in range(200))
    q, pos = ict_pair(Document("x", text), np.random.default_rng(0), SelfPairsConfig(ict_context_words=30, ict_keep_sentence_prob=0))
    assert len(pos.split()) <= 30 and len(pos.split()) >= 24


def test_crops_are_spans_of_the_document():
    import numpy as np

    doc = LONG_DOCS["b"]
    cfg = SelfPairsConfig(crop_min_words=3)
    for seed in range(10):
        a, b = crop_pair(doc, np.random.default_rng(seed), cfg)
        assert a in doc.full_text and b in doc.full_text
        assert 3 <= len(a.split()) <= len(doc.full_text.split()) // 2 + 1


def test_self_pairs_generators_dedup_lengths_and_seed():
    cfg = SelfPairsConfig(generators=["ict", "crop", "title"], pairs_per_doc=3, crop_min_words=3)
    ps = pairs_from_corpus(LONG_DOCS, cfg, seed=1)
    sources = {p.source for p in ps.pairs}
    assert sources == {"ict", "crop", "title"}
    titles = [p for p in ps.pairs if p.source == "title"]
    assert {(p.query, p.positive_id) for p in titles} == {("Vitamin D", "a")}  # "Salt" is below min_query_words
    assert ps.stats["dropped"]["duplicate"] >= 2  # title -> body repeats for pairs_per_doc=3
    keys = [(p.query.lower(), p.positive.lower()) for p in ps.pairs]
    assert len(keys) == len(set(keys))
    for p in ps.pairs:
        assert p.positive_id in ps.known_positives[p.query_id]
        assert p.positive_in_pool == (p.positive == LONG_DOCS[p.positive_id].full_text)
    qw = ps.stats["query_words"]
    assert set(qw) == {"ict", "crop", "title"} and qw["title"]["count"] == 1 and qw["title"]["mean"] == 2.0
    again = pairs_from_corpus(LONG_DOCS, cfg, seed=1)
    assert [(p.query, p.positive) for p in again.pairs] == [(p.query, p.positive) for p in ps.pairs]
    other = pairs_from_corpus(LONG_DOCS, cfg, seed=2)
    assert [(p.query, p.positive) for p in other.pairs] != [(p.query, p.positive) for p in ps.pairs]


def test_a_documents_pairs_do_not_depend_on_other_documents():
    cfg = SelfPairsConfig(generators=["ict", "crop"], crop_min_words=3)
    small = pairs_from_corpus({"a": LONG_DOCS["a"]}, cfg, seed=3)
    full = pairs_from_corpus(LONG_DOCS, cfg, seed=3)
    assert {(p.query, p.positive) for p in small.pairs} <= {(p.query, p.positive) for p in full.pairs}


def test_same_query_from_two_documents_is_one_query_with_both_positives():
    docs = {"x": Document("x", "body one about salt", "shared title here"), "y": Document("y", "body two about fish", "shared title here")}
    ps = pairs_from_corpus(docs, SelfPairsConfig(generators=["title"]), seed=0)
    assert len(ps.pairs) == 2 and ps.pairs[0].query_id == ps.pairs[1].query_id
    assert ps.known_positives[ps.pairs[0].query_id] == {"x", "y"}


def test_queries_differing_only_in_case_are_one_query_with_one_text():
    """Mining looks a query up by its text: two spellings of one query id crashed the hybrid teacher
    (the demo corpus has "See also" and "See Also")."""
    docs = {"x": Document("x", "body one about salt", "See also"), "y": Document("y", "body two about fish", "See Also")}
    ps = pairs_from_corpus(docs, SelfPairsConfig(generators=["title"], min_query_words=1), seed=0)
    assert len(ps.pairs) == 2 and ps.pairs[0].query_id == ps.pairs[1].query_id
    assert ps.pairs[0].query == ps.pairs[1].query == "See also"


def test_keyword_queries_are_salient_terms_of_their_document_in_order():
    docs = {
        "salt": Document("salt", "Sodium and sodium intake raise blood pressure; the study found sodium harms arteries in patients.", "Sodium"),
        "fish": Document("fish", "Omega-3 oil from fish lowers triglycerides; omega-3 supplements helped patients in the study.", ""),
        "sun": Document("sun", "Sunlight makes vitamin D; vitamin D deficiency weakens bones of patients in winter.", ""),
        "tea": Document("tea", "Green tea catechins and tea drinking lowered pressure of patients in the trial.", ""),
        "potassium": Document("potassium", "Potassium in bananas balances sodium in cells of patients.", ""),
    }
    keywords = KeywordQueries(list(docs.values()))
    # In "salt": sodium (4x, in 2 of 5 documents) outranks pressure and study (1x, 2 of 5; pressure comes
    # first); patients is in every document (idf 0), intake/arteries in this one only, "the" a stopword.
    top2 = SelfPairsConfig(generators=["keywords"], keyword_min_terms=2, keyword_max_terms=3, keyword_candidates=2)
    assert {keywords(docs["salt"], np.random.default_rng(seed), top2)[0] for seed in range(10)} == {"sodium pressure"}
    top3 = SelfPairsConfig(generators=["keywords"], keyword_min_terms=2, keyword_max_terms=3, keyword_candidates=3)
    queries = []
    for seed in range(30):
        query, positive = keywords(docs["salt"], np.random.default_rng(seed), top3)
        assert positive == docs["salt"].full_text
        terms = query.split()
        assert 2 <= len(terms) <= 3 and set(terms) <= {"sodium", "pressure", "study"}
        assert terms == sorted(terms, key=docs["salt"].full_text.lower().index)  # in the document's order
        queries.append(query)
    assert len(set(queries)) >= 3  # drawn, not fixed
    assert sum("sodium" in q for q in queries) > sum("study" in q for q in queries)  # drawn by salience
    ps = pairs_from_corpus(docs, top3, seed=0)
    assert {p.source for p in ps.pairs} == {"keywords"}
    assert all(p.positive_in_pool and p.positive_id in ps.known_positives[p.query_id] for p in ps.pairs)
    with pytest.raises(ValueError, match="keyword_min_terms"):
        SelfPairsConfig(keyword_min_terms=4, keyword_max_terms=3)


def test_self_pairs_config_errors():
    with pytest.raises(ValueError, match="qgen.model"):
        SelfPairsConfig(generators=["qgen"])
    with pytest.raises(InputError, match="no usable pairs"):
        pairs_from_corpus({"z": Document("z", "tiny", "")}, SelfPairsConfig(generators=["title", "ict"]))


# --------------------------------------------------------------------------- query generation models


def _tiny_tokenizer(folder):
    from tiny_models import VOCAB_WORDS
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + VOCAB_WORDS + list(string.ascii_lowercase + string.digits + ".,?") + ["##" + c for c in string.ascii_lowercase]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    # vocab= (not vocab_file=): transformers 5 ignores vocab_file here and keeps only the specials
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    tok.eos_token = "[SEP]"
    tok.bos_token = "[CLS]"
    return tok


def build_tiny_t5(folder):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def build_tiny_gpt2(folder):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = _tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=256,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("builder,kind", [(build_tiny_t5, "seq2seq"), (build_tiny_gpt2, "causal")])
def test_query_generation_model_plugs_in(tmp_path, builder, kind):
    folder = builder(tmp_path / kind)
    qcfg = QueryGenConfig(model=str(folder), max_new_tokens=6, batch_size=2)
    generator = TransformersQueryGenerator(qcfg)
    assert generator.kind == kind
    passages = [d.full_text for d in LONG_DOCS.values()]
    out = generator.generate(passages, 2, seed=7)
    assert len(out) == len(passages) and all(len(qs) == 2 for qs in out)
    assert generator.generate(passages, 2, seed=7) == out  # seeded
    if kind == "causal":  # the prompt is not echoed back
        assert not any("passage" in q.lower() for qs in out for q in qs)
    cfg = SelfPairsConfig(generators=["qgen"], pairs_per_doc=2, min_query_words=1, qgen=qcfg)
    ps = pairs_from_corpus(LONG_DOCS, cfg, seed=7, query_generator=generator)
    assert ps.pairs and all(p.source == "qgen" and p.positive_in_pool for p in ps.pairs)
    assert ps.stats["generated"]["qgen"] == 2 * len(LONG_DOCS)
    assert ps.stats["query_words"]["qgen"]["count"] == len(ps.pairs)


def test_query_generation_model_must_be_safetensors(tmp_path):
    from embedtune.errors import ModelError

    folder = tmp_path / "pickle"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="pickle"):
        TransformersQueryGenerator(QueryGenConfig(model=str(folder)))
