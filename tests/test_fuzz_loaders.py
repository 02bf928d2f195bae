"""Fuzzing the loaders: random bytes and random JSON may only ever produce a clean
InputError (or load successfully) -- never another exception."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedtune.corpus import load_beir_corpus, load_corpus, load_pairs, load_qrels, load_queries
from embedtune.errors import InputError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(
    st.sampled_from(["_id", "title", "text", "query", "positive", "negatives", "metadata", "x"]), json_values, max_size=5
)


def check(loader, path):
    try:
        loader(path)
    except InputError as err:
        msg = str(err)
        assert "\n" not in msg and str(path) in msg


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("bytes")
    for name, loader in (("c.jsonl", load_beir_corpus), ("q.jsonl", load_queries), ("p.jsonl", load_pairs), ("r.tsv", load_qrels), ("d.csv", load_corpus)):
        path = folder / name
        path.write_bytes(data)
        check(loader, path)


@FUZZ
@given(rows=st.lists(records | json_values, max_size=6))
def test_random_json_lines(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("json")
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    for name, loader in (("c.jsonl", load_beir_corpus), ("q.jsonl", load_queries), ("p.jsonl", load_pairs)):
        path = folder / name
        path.write_text(text)
        check(loader, path)


@FUZZ
@given(rows=st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5), st.text(max_size=4)), max_size=6))
def test_random_qrels_rows(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("qrels") / "test.tsv"
    body = "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
    path.write_text("query-id\tcorpus-id\tscore\n" + body)
    try:
        qrels, _ = load_qrels(path, query_ids={"q1", "a"}, doc_ids={"d1", "a"})
        for rels in qrels.values():
            assert all(isinstance(v, int) and v >= 0 for v in rels.values())
    except InputError as err:
        assert "\n" not in str(err)
