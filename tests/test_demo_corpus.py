"""The embedded demo corpus: real docstrings of installed packages, split by function."""

from __future__ import annotations

import json

from embedtune.corpus import load_beir
from embedtune.demo_corpus import _summary_and_body, build_docstring_corpus


def test_signature_paragraph_is_skipped():
    doc = "arccos(x, /, out=None)\n\nTrigonometric inverse cosine, element-wise.\n\nThe inverse of cos so that y = cos(x) means x = arccos(y) for all x in the domain [-1, 1]."
    assert _summary_and_body(doc) == ("Trigonometric inverse cosine, element-wise.", "The inverse of cos so that y = cos(x) means x = arccos(y) for all x in the domain [-1, 1].")
    assert _summary_and_body("Only a summary line here.") is None


def test_builds_a_split_beir_folder(tmp_path):
    folder = build_docstring_corpus(tmp_path / "demo", modules=("json", "os", "pathlib", "shutil", "collections", "textwrap", "subprocess", "tempfile", "zipfile", "argparse", "logging", "difflib", "inspect"))
    train, test = load_beir(folder, "train"), load_beir(folder, "test")
    assert len(train.corpus) >= 50 and test.queries and train.queries
    assert not set(train.queries) & set(test.queries)  # split by function
    for qid, rels in test.qrels.items():
        (doc_id,) = rels
        assert test.corpus[doc_id].text  # every test question points at a real document
    source = json.loads((folder / "SOURCE.json").read_text())
    assert source["documents"] == len(train.corpus)
    assert not list(tmp_path.glob(".tmp-*"))
