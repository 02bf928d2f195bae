"""Index stage: build -> search -> update on a tiny corpus with the tiny model; mismatch and
corruption errors; atomic builds; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedtune import encoding
from embedtune.config import ChunkingConfig, CorpusConfig, ModelConfig
from embedtune.errors import IndexMismatchError, RunDirError
from embedtune.index import IndexConfig, build_index, open_index, query_index, update_index
from tiny_models import build_tiny_bert

# A long document (split into several passages at max_tokens=24) and short ones; words from the
# tiny model's vocabulary so that tokens are whole words.
LONG = (
    "protein cell gene cancer risk patients study effect disease treatment dose blood heart brain liver "
    "vitamin diet food fat sugar salt water acid fish increase decrease reduce high low level result data "
    "model search index query document passage vector embedding train test loss batch negative positive "
    "score function array value number string list file path name python numpy torch tensor matrix sum mean"
)
V1 = {
    "d1": ("Vitamin D", "vitamin d levels reduce cancer risk in patients"),
    "d2": ("Salt", "high salt diet increase blood pressure and heart disease"),
    "d3": ("Fish oil", "fish oil acid reduce heart disease risk"),
    "d4": ("Sugar", "sugar in food increase liver fat"),
    "d5": ("", "protein in the diet and cell growth"),
    "long": ("Long", LONG),
}
# v2: d7 added, d2 changed, d3 removed, the end of the long document changed.
V2 = {k: v for k, v in V1.items() if k != "d3"}
V2["d2"] = ("Salt", "low salt diet decrease blood pressure")
V2["d7"] = ("Numpy", "numpy array sum returns the sum of array values")
V2["long"] = ("Long", LONG.replace("tensor matrix sum mean", "tensor matrix sort random seed"))
QUERIES = ["vitamin d cancer risk", "salt and blood pressure", "fish oil heart", "numpy array sum", "protein cell growth"]


def write_corpus(path: Path, docs: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id, (title, text) in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    return path


def make_cfg(model_dir: str, corpus: Path, backend: str = "exact-numba") -> IndexConfig:
    return IndexConfig(
        model=ModelConfig(name=model_dir, batch_size=4),
        corpus=CorpusConfig(path=str(corpus), chunking=ChunkingConfig(max_tokens=24, overlap=4)),
        backend=backend,
        cache_dir=None,
    )


@pytest.fixture()
def cache_dir(tmp_path):
    """Every build gets its own embedding cache so tests do not share encoded vectors."""
    return tmp_path / "cache"


@pytest.fixture()
def built(tmp_path, tiny_model_dir, cache_dir):
    corpus = write_corpus(tmp_path / "v1" / "corpus.jsonl", V1)
    cfg = make_cfg(tiny_model_dir, corpus).model_copy(update={"cache_dir": str(cache_dir)})
    out = tmp_path / "idx"
    summary = build_index(cfg, out, show_progress=False)
    return cfg, out, summary


def _results(index_dir: Path, k: int = 4) -> list[list[tuple[str, float]]]:
    index = open_index(index_dir)
    return [[(h.passage_id, h.score) for h in hits] for hits in query_index(index, QUERIES, k)]


def test_build_writes_complete_index(built, tiny_model_dir):
    cfg, out, summary = built
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["index"]
    passages = [json.loads(line) for line in (out / "passages.jsonl").read_text().splitlines()]
    ids = json.loads((out / "searcher" / "ids.json").read_text())
    assert summary["documents"] == 6 and summary["split_documents"] == 1
    assert info["count"] == len(passages) == len(ids) == summary["count"] > 6
    assert info["metric"] == "ip" and info["normalized"] is True
    assert info["dim"] == 32 and info["max_seq_length"] == 128
    assert info["backend"] == "exact-numba"
    assert info["chunking"]["max_tokens"] == 24 and info["chunking"]["overlap"] == 4
    from embedtune.models import model_fingerprint

    assert info["model_sha256"] == model_fingerprint(tiny_model_dir)
    long_parts = [p for p in passages if p["doc_id"] == "long"]
    assert [p["position"] for p in long_parts] == list(range(len(long_parts))) and len(long_parts) > 1
    for p in long_parts:  # the char span points back into the source text
        assert LONG[p["char_start"]:p["char_end"]] == p["text"]
    assert {p["id"] for p in passages} == set(ids)
    assert set(manifest["files"]) >= {"searcher/ids.json", "searcher/searcher.json", "passages.jsonl"}
    assert not list(out.parent.glob(".tmp-*")), "temp folders left behind"


def test_search_finds_the_document_it_was_given(built):
    _, out, _ = built
    index = open_index(out)
    title, text = V1["d4"]
    hits = query_index(index, [f"{title} {text}", "vitamin d cancer risk"], k=3)
    assert hits[0][0].passage_id == "d4" and hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in hits[1]] == [1, 2, 3]
    assert hits[1][0].score >= hits[1][1].score >= hits[1][2].score
    assert hits[0][0].text == text and hits[0][0].title == title


def test_same_build_is_skipped_and_other_config_refused(built):
    cfg, out, _ = built
    again = build_index(cfg, out, show_progress=False)
    assert again["skipped"] is True
    other = cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"chunking": ChunkingConfig(max_tokens=32, overlap=4)})})
    with pytest.raises(RunDirError, match="another config"):
        build_index(other, out, show_progress=False)
    rebuilt = build_index(other, out, overwrite=True, show_progress=False)
    assert rebuilt["skipped"] is False and json.loads((out / "manifest.json").read_text())["index"]["chunking"]["max_tokens"] == 32


def test_update_equals_fresh_build_and_encodes_only_changes(built, tmp_path, tiny_model_dir, monkeypatch, cache_dir):
    cfg, out, _ = built
    v2 = write_corpus(tmp_path / "v2" / "corpus.jsonl", V2)
    old = {json.loads(line)["id"]: json.loads(line)["sha256"] for line in (out / "passages.jsonl").read_text().splitlines()}

    encoded: list[str] = []
    real = encoding.encode_texts

    def counting(model, texts, **kw):
        encoded.extend(texts)
        return real(model, texts, **kw)

    monkeypatch.setattr(encoding, "encode_texts", counting)
    summary = update_index(out, v2, show_progress=False)
    monkeypatch.undo()

    fresh = tmp_path / "fresh"
    build_index(cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"path": str(v2)})}), fresh, show_progress=False)
    new = {json.loads(line)["id"]: json.loads(line)["sha256"] for line in (fresh / "passages.jsonl").read_text().splitlines()}

    u = summary["update"]
    added = set(new) - set(old)
    removed = set(old) - set(new)
    changed = {p for p in set(new) & set(old) if new[p] != old[p]}
    assert (u["added"], u["removed"], u["changed"]) == (len(added), len(removed), len(changed))
    assert "d7" in added and "d3" in removed and "d2" in changed
    assert any(p.startswith("long#") for p in changed), "the changed end of the long document"
    assert any(p.startswith("long#") and new[p] == old[p] for p in new), "its unchanged start is kept"
    assert u["unchanged"] == len(new) - len(added) - len(changed) > 0
    assert u["encoded"] == len(encoded) == len(added) + len(changed) < len(new)

    # same ids, same passage store, same search results as the fresh build
    assert sorted(json.loads((out / "searcher" / "ids.json").read_text())) == sorted(json.loads((fresh / "searcher" / "ids.json").read_text()))
    assert (out / "passages.jsonl").read_bytes() == (fresh / "passages.jsonl").read_bytes()
    # Full rankings: every passage gets the same score for every query, so the rankings are
    # equal (up to the order of exact ties -- the random tiny model has some -- which a searcher
    # breaks by row).
    got, want = _results(out, k=100), _results(fresh, k=100)
    for g, w in zip(got, want):
        g, w = dict(g), dict(w)
        assert sorted(g) == sorted(w)
        np.testing.assert_allclose([g[p] for p in sorted(g)], [w[p] for p in sorted(w)], atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["update"] == u and manifest["key"] == json.loads((fresh / "manifest.json").read_text())["key"]
    assert not list(out.parent.glob(".tmp-*"))


def test_update_without_changes_encodes_nothing(built, tiny_model_dir, monkeypatch):
    cfg, out, _ = built
    monkeypatch.setattr(encoding, "encode_texts", lambda *a, **k: pytest.fail("nothing should be encoded"))
    summary = update_index(out, cfg.corpus.path, show_progress=False)
    assert summary["update"]["encoded"] == 0 and summary["update"]["unchanged"] == summary["count"]


def test_model_mismatch_errors(built, tmp_path_factory):
    _, out, _ = built
    other_weights = build_tiny_bert(tmp_path_factory.mktemp("other_seed"), seed=1)
    with pytest.raises(IndexMismatchError, match="manifest.json: field 'index.model_sha256'"):
        open_index(out, str(other_weights))
    other_dim = build_tiny_bert(tmp_path_factory.mktemp("other_dim"), hidden=48)
    with pytest.raises(IndexMismatchError, match="manifest.json: field 'index.dim'.*48-dim"):
        open_index(out, str(other_dim))


@pytest.mark.parametrize("damage", ["flip_searcher_byte", "truncate_passages", "delete_ids", "manifest_not_json", "missing_folder"])
def test_corrupted_index_is_a_clear_error(built, damage):
    _, out, _ = built
    if damage == "flip_searcher_byte":
        victim = max((p for p in (out / "searcher").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate_passages":
        p = out / "passages.jsonl"
        p.write_bytes(p.read_bytes()[:-20])
    elif damage == "delete_ids":
        (out / "searcher" / "ids.json").unlink()
    elif damage == "manifest_not_json":
        (out / "manifest.json").write_text("{not json")
    else:
        out = out.parent / "nowhere"
    with pytest.raises(IndexMismatchError) as err:
        open_index(out)
    assert "\n" not in str(err.value) and str(out) in str(err.value)


def test_killed_build_keeps_the_old_index(built, tmp_path, monkeypatch):
    cfg, out, _ = built
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    v2 = write_corpus(tmp_path / "v2" / "corpus.jsonl", V2)
    import embedtune.index as index_mod

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_mod, "atomic_write_jsonl", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(cfg.model_copy(update={"corpus": cfg.corpus.model_copy(update={"path": str(v2)})}), out, overwrite=True, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        update_index(out, v2, show_progress=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not list(out.parent.glob(".tmp-*"))
    open_index(out)


def test_cli_build_search_update(tmp_path, tiny_model_dir):
    from embedtune.cli import app

    runner = CliRunner()
    corpus = write_corpus(tmp_path / "c" / "corpus.jsonl", V1)
    out = tmp_path / "cli-idx"
    res = runner.invoke(app, ["index", "build", "--model", tiny_model_dir, "--corpus", str(corpus), "--out", str(out),
                              "--backend", "exact-numba", "--max-tokens", "24", "--overlap", "4", "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["count"] > 6 and summary["timings"]["docs_per_s"] > 0

    res = runner.invoke(app, ["search", str(out), "fish oil heart", "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    found = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["rank"] for r in found["results"]] == [1, 2, 3] and found["results"][0]["passage_id"]

    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUERIES * 3) + "\n")
    results = tmp_path / "results.jsonl"
    # the old spelling of --results still works for a release, with a warning on stderr only
    res = runner.invoke(app, ["search", str(out), "--queries", str(queries), "--out", str(results), "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert "--out is now --results" in res.stderr and "--out" not in res.stdout
    assert json.loads(res.stdout.strip().splitlines()[-1])["results"] == str(results)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 15 and all(len(r["hits"]) == 2 for r in rows)
    assert rows[0]["query"] == QUERIES[0] and rows[0]["hits"] == rows[5]["hits"]

    res = runner.invoke(app, ["search", str(out), "x", "--model", str(build_tiny_bert(tmp_path / "m2", seed=3))])
    assert res.exit_code == 6 and "index.model_sha256" in res.output

    v2 = write_corpus(tmp_path / "c2" / "corpus.jsonl", V2)
    res = runner.invoke(app, ["index", "update", str(out), "--corpus", str(v2), "--json"])
    assert res.exit_code == 0, res.output
    update = json.loads(res.stdout.strip().splitlines()[-1])["update"]
    assert update["added"] >= 1 and update["removed"] >= 1 and update["changed"] >= 1


def test_cli_errors_are_one_line(tmp_path):
    from embedtune.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["search", str(tmp_path / "missing"), "question"])
    assert res.exit_code == 6 and "index folder not found" in res.output
    res = runner.invoke(app, ["index", "build", "--out", str(tmp_path / "x")])
    assert res.exit_code == 4 and "corpus" in res.output


def test_stale_build_cleanup_leaves_sibling_indexes_alone(tmp_path):
    from embedtune.index import _remove_stale_builds

    out = tmp_path / "idx"
    ours = [tmp_path / ".tmp-idx.build-abcd1234", tmp_path / ".tmp-idx.old-zz_9xy01"]
    siblings = [tmp_path / ".tmp-idx.v2.build-abcd1234", tmp_path / ".tmp-idx.build-abcd1234.keep"]
    for p in ours + siblings:
        p.mkdir()
    _remove_stale_builds(out)
    assert [p.exists() for p in ours] == [False, False]
    assert [p.exists() for p in siblings] == [True, True]


def test_gpu_backend_without_gpu_fails_before_encoding(tmp_path, tiny_model_dir, monkeypatch):
    import embedtune.search as search
    from embedtune.errors import ConfigError

    monkeypatch.setattr(search, "_gpu_count", lambda: 0)
    monkeypatch.setattr(encoding, "encode_corpus", lambda *a, **k: pytest.fail("encoded before checking the backend"))
    corpus = write_corpus(tmp_path / "c" / "corpus.jsonl", V1)
    with pytest.raises(ConfigError, match="needs a GPU.*faiss-flat"):
        build_index(make_cfg(tiny_model_dir, corpus, backend="faiss-gpu-flat"), tmp_path / "idx", show_progress=False)
    assert not (tmp_path / "idx").exists()
