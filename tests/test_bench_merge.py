"""eval/bench_merge.py's results file: one entry per collection the model was tuned on, so the
reverse study (NFCorpus-tuned) does not erase the SciFact-tuned one; the older one-study file is kept."""

from __future__ import annotations

import json

from helpers import load_bench



def _bench():
    return load_bench("bench_merge")


def _study(in_domain: str, other: str, tuned: str) -> dict:
    return {"tuned": tuned, "benchmarks": {in_domain: {"role": "in-domain"}, other: {"role": "out-of-domain"}}}


def test_each_in_domain_collection_keeps_its_own_entry(tmp_path):
    merge_entry = _bench().merge_entry
    path = tmp_path / "merge.json"
    old = _study("scifact", "nfcorpus", "scifact-model")
    path.write_text(json.dumps(old))  # the older one-study shape
    both = merge_entry(path, "nfcorpus", _study("nfcorpus", "scifact", "nfcorpus-model"))
    assert both["by_in_domain"] == {"scifact": old, "nfcorpus": _study("nfcorpus", "scifact", "nfcorpus-model")}
    path.write_text(json.dumps(both))
    again = merge_entry(path, "scifact", _study("scifact", "nfcorpus", "newer-scifact-model"))
    assert again["by_in_domain"]["scifact"]["tuned"] == "newer-scifact-model"
    assert again["by_in_domain"]["nfcorpus"]["tuned"] == "nfcorpus-model"
    assert merge_entry(tmp_path / "absent.json", "scifact", old)["by_in_domain"] == {"scifact": old}
