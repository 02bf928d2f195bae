"""eval/bench_labels.py's labelled subsets: a query is labelled with all its judgements or not at all,
the test qrels are the original ones, and 'all' is the benchmark itself."""

from __future__ import annotations

import csv
from pathlib import Path

from helpers import load_bench, write_beir



def _bench():
    return load_bench("bench_labels")


def _qrels(path: Path) -> list[tuple[str, str, str]]:
    with path.open(newline="") as f:
        return [tuple(r) for r in list(csv.reader(f, delimiter="\t"))[1:]]


def test_subset_keeps_whole_queries_and_the_test_split(tmp_path):
    train = [(f"q{i}", f"d{j}", 1) for i in range(1, 5) for j in range(1, i + 1)]  # q1: 1 judgement ... q4: 4
    beir = write_beir(tmp_path / "beir", qrels={"train": train, "test": [("q1", "d1", 1)]})
    bench = _bench()
    folder, n = bench.subset_benchmark(beir, "train", 2, seed=0, out=tmp_path / "sub")
    assert (folder, n) == (tmp_path / "sub", 2)
    kept = _qrels(folder / "qrels" / "train.tsv")
    queries = {q for q, _, _ in kept}
    assert len(queries) == 2
    assert sorted(kept) == sorted((q, d, str(s)) for q, d, s in train if q in queries)  # every judgement of a kept query
    assert _qrels(folder / "qrels" / "test.tsv") == _qrels(beir / "qrels" / "test.tsv")
    assert (folder / "corpus.jsonl").resolve() == (beir / "corpus.jsonl").resolve()
    # the same seed draws the same queries; another seed may not, and 'all' is the benchmark itself
    again, _ = bench.subset_benchmark(beir, "train", 2, seed=0, out=tmp_path / "again")
    assert _qrels(again / "qrels" / "train.tsv") == kept
    assert bench.subset_benchmark(beir, "train", 10, seed=0, out=tmp_path / "all") == (beir, 4)


def test_a_rerun_point_replaces_its_earlier_measurement_and_keeps_the_others():
    merge = _bench().merge_points
    old = [{"labelled_queries": 50, "tuned": 0.65}, {"labelled_queries": 809, "tuned": 0.70}]
    new = [{"labelled_queries": 809, "tuned": 0.73}, {"labelled_queries": 0, "tuned": 0.67}]
    assert merge(old, new) == [{"labelled_queries": 0, "tuned": 0.67}, {"labelled_queries": 50, "tuned": 0.65},
                               {"labelled_queries": 809, "tuned": 0.73}]
    assert merge([], new) == sorted(new, key=lambda r: r["labelled_queries"])
