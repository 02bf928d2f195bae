"""Small builders for test data (tests never use the real datasets' text)."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = {
    "d1": ("Vitamin D", "vitamin d levels reduce cancer risk in patients"),
    "d2": ("Salt", "high salt diet increase blood pressure and heart disease"),
    "d3": ("Fish oil", "fish oil acid reduce heart disease risk"),
    "d4": ("Sugar", "sugar in food increase liver fat"),
    "d5": ("Protein", "protein in the diet and cell growth"),
    "d6": ("Numpy", "numpy array sum returns the sum of array values"),
}
QUERIES = {"q1": "vitamin d cancer risk", "q2": "salt and blood pressure", "q3": "fish oil heart", "q4": "array sum"}
QRELS = {"test": [("q1", "d1", 1), ("q2", "d2", 2), ("q3", "d3", 1), ("q3", "d2", 1)], "train": [("q4", "d6", 1)]}


def write_beir(folder: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, newline: str = "\n") -> Path:
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8", newline="") as fh:
        for doc_id, (title, text) in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text, "metadata": {}}) + newline)
    with open(folder / "queries.jsonl", "w", encoding="utf-8", newline="") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + newline)
    for split, rows in qrels.items():
        with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as fh:
            fh.write("query-id\tcorpus-id\tscore" + newline)
            for q, d, s in rows:
                fh.write(f"{q}\t{d}\t{s}{newline}")
    return folder


def write_synthetic_beir(folder: Path, n_docs: int = 60, n_train: int = 40, n_test: int = 12, seed: int = 0) -> Path:
    """A BEIR folder of random documents from the tiny vocabulary; each query is a few words of its
    document, so retrieval is learnable but not trivial for a random model."""
    import random

    from tiny_models import VOCAB_WORDS

    rng = random.Random(seed)
    words = [w for w in VOCAB_WORDS if len(w) > 3]
    docs, queries, train, test = {}, {}, [], []
    for i in range(n_docs):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(12, 30)))
        docs[f"d{i}"] = (f"doc {i}", body)
        if i < n_train + n_test:
            toks = body.split()
            start = rng.randrange(0, len(toks) - 4)
            queries[f"q{i}"] = " ".join(toks[start : start + 4])
            (train if i < n_train else test).append((f"q{i}", f"d{i}", 1))
    return write_beir(folder, docs, queries, {"train": train, "test": test})


def load_bench(name: str):
    """An ``eval/bench_*.py`` script as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
