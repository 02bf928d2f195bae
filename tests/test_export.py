"""Export stage: a fake pipeline run folder built with the tiny model -> an export that loads
with plain sentence-transformers, a model card quoting the run's files, an index that opens
with the exported model, USAGE.md snippets that run, and paths that never leave the folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedtune.config import ChunkingConfig, CorpusConfig, ModelConfig
from embedtune.errors import RunDirError
from embedtune.export import ExportConfig, export_run, read_run_folder
from embedtune.index import IndexConfig, build_index, open_index, query_index
from embedtune.run_folder import write_manifest

DOCS = {
    "d1": ("Vitamin D", "vitamin d levels reduce cancer risk in patients"),
    "d2": ("Salt", "high salt diet increase blood pressure and heart disease"),
    "d3": ("Fish oil", "fish oil acid reduce heart disease risk"),
    "d4": ("Numpy", "numpy array sum returns the sum of array values"),
    "d5": ("Sleep", "short sleep raises the risk of obesity in children"),
    "d6": ("Coffee", "coffee drinkers show lower rates of liver disease"),
    "d7": ("Pandas", "a pandas dataframe groups rows by the values of a column"),
    "d8": ("Exercise", "regular exercise lowers blood pressure in older adults"),
}


def eval_metrics(tuned_sha256: str) -> dict:
    """metrics.json as `embedtune eval --out` writes it, built with the evaluation module's own
    functions from made-up runs of two systems ("base" and "tuned") on four queries."""
    from embedtune.evaluation import compare, compute_metrics, mean_metrics

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2}, "q3": {"d3": 1}, "q4": {"d4": 1}}
    base = {"q1": {"d2": 0.9, "d1": 0.8}, "q2": {"d2": 0.7, "d1": 0.6}, "q3": {"d1": 0.9, "d3": 0.5}, "q4": {"d3": 0.9, "d4": 0.2}}
    tuned = {"q1": {"d1": 0.9, "d2": 0.8}, "q2": {"d2": 0.7, "d1": 0.6}, "q3": {"d3": 0.9, "d1": 0.5}, "q4": {"d4": 0.9, "d3": 0.2}}
    systems = []
    for name, run, sha in (("base", base, "0" * 64), ("tuned", tuned, tuned_sha256)):
        per_query = compute_metrics(qrels, run)
        systems.append({"name": name, "kind": "dense", "model": {"path": f"/models/{name}", "sha256": sha},
                        "per_query": per_query, "metrics": mean_metrics(per_query)})
    comparison = compare(systems[0]["per_query"], systems[1]["per_query"], permutations=200, seed=0)
    return {"dataset": "/data/tinyset", "split": "test", "queries": 4, "documents": 4, "skipped_qrels": 0,
            "systems": systems, "comparisons": [{"system": "tuned", "baseline": "base", **comparison}]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A pipeline run folder: train/model (the tiny model saved by ST plus a pickle and a
    checkpoint that must not be exported), train + mine manifests, index/, eval/metrics.json."""
    root = tmp_path_factory.mktemp("run")
    model_dir = root / "train" / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (model_dir / "checkpoint-7").mkdir()
    (model_dir / "checkpoint-7" / "optimizer.pt").write_bytes(b"PK\x03\x04zip")
    write_manifest(
        root / "train", stage="train", key="k-train",
        config={"model": {"name": "tiny-base-model", "query_prompt": "query: ", "document_prompt": "passage: "},
                "loss": {"name": "mnrl", "scale": 20.0}, "epochs": 1.0, "batch_size": 16, "learning_rate": 3e-5},
        inputs={"data": "hash-of-mined-data"},
        models={"base": {"name": "tiny-base-model"}},
        metrics={"best_dev_ndcg@10": 0.4321, "base_dev_ndcg@10": 0.3456, "train_rows": 123, "dev": "held-out slice"},
    )
    write_manifest(
        root / "mine", stage="mine", key="k-mine",
        config={"pairs": "tinyset:train", "corpus": "tinyset", "num_negatives": 7, "range_max": 42, "relative_margin": 0.05},
        inputs={},
    )
    corpus = root / "data" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text("".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in DOCS.items()))
    cfg = IndexConfig(
        # fp32 vectors: the stores that embed queries with plain sentence-transformers (fp32) must rank alike
        model=ModelConfig(name=str(model_dir), query_prompt="query: ", document_prompt="passage: ", precision="fp32"),
        corpus=CorpusConfig(path=str(corpus), chunking=ChunkingConfig(max_tokens=32, overlap=4)),
        backend="exact-numba", cache_dir=str(root / "cache"), hybrid=True,
    )
    build_index(cfg, root / "index", show_progress=False)
    from embedtune.models import model_fingerprint

    (root / "eval").mkdir()
    (root / "eval" / "metrics.json").write_text(json.dumps(eval_metrics(model_fingerprint(model_dir))))
    return root


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exports") / "ship"
    return out, export_run(run_dir, out, ExportConfig(onnx=True, int8=True, vector_db="qdrant"))


def test_exported_model_loads_offline_and_embeds_the_same(exported, run_dir):
    from sentence_transformers import SentenceTransformer

    out, summary = exported
    texts = ["vitamin d cancer risk", "numpy array sum", "a sentence with unknown words zzz"]
    plain = SentenceTransformer(str(out / "model"), device="cpu", local_files_only=True)
    source = SentenceTransformer(str(run_dir / "train" / "model"), device="cpu", local_files_only=True)
    np.testing.assert_allclose(plain.encode(texts), source.encode(texts), atol=1e-6)
    assert summary["check_min_cosine"] >= 0.9999


def test_only_safetensors_weights_are_exported(exported):
    out, summary = exported
    files = [p.relative_to(out / "model").as_posix() for p in (out / "model").rglob("*") if p.is_file()]
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert not [f for f in files if f.startswith("checkpoint")]
    assert any("training_args.bin" in s and "pickle" in s for s in summary["not_exported"])


def test_model_card_quotes_the_run_files(exported, run_dir):
    out, _ = exported
    card = (out / "model" / "README.md").read_text()
    assert "tiny-base-model" in card and "base_model:" in card
    assert "`query: `" in card and "`passage: `" in card
    for needle in ("tinyset:train", "num_negatives", "| 7 |", "mnrl", "learning_rate", "3e-05", "0.4321"):
        assert needle in card, needle
    # every value of the evaluation table is read from eval/metrics.json
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    base, tuned = (s["metrics"] for s in metrics["systems"])
    comparison = metrics["comparisons"][0]["metrics"]
    assert "tuned (this model)" in card
    for m in ("ndcg@10", "recall@10", "mrr@10"):
        r = comparison[m]
        assert f"| {m} | {base[m]:.4f} | {tuned[m]:.4f} |" in card
        assert f"| {m} | {r['delta']:+.4f} | [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {r['p_value']:.4f} |" in card
    assert comparison["ndcg@10"]["delta"] > 0


def test_index_is_exported_and_opens_with_the_exported_model(exported, run_dir):
    out, summary = exported
    index = open_index(out / "index")  # default model: ../model, the exported one
    assert Path(index.model_cfg.name) == (out / "model").resolve()
    original = open_index(run_dir / "index")
    queries = ["salt blood pressure", "numpy array"]
    got = [[(h.passage_id, round(h.score, 5)) for h in hits] for hits in query_index(index, queries, 3)]
    want = [[(h.passage_id, round(h.score, 5)) for h in hits] for hits in query_index(original, queries, 3)]
    assert got == want
    assert summary["index"]["count"] == index.count >= len(DOCS)
    assert index.model_cfg.query_prompt == "query: "
    # no model path of the machine it was built on: the bundle can be moved and shipped
    m = json.loads((out / "index" / "manifest.json").read_text())
    assert m["index"]["model"] == m["index"]["model_path"] == m["config"]["model"]["name"] == "../model"


def test_onnx_export_matches_torch(exported):
    out, summary = exported
    assert (out / "model" / "onnx" / "model.onnx").is_file()
    assert summary["onnx"]["min_cosine"] >= 0.9999 and summary["onnx"]["texts"] >= len(DOCS)


RESULT_LINE = re.compile(r"^(-?\d+\.\d{3})  (\S+)  ")


def usage_blocks(usage: str) -> dict[str, str]:
    """Every python block of USAGE.md under its "## " heading."""
    sections = (part.split("\n", 1) for part in usage.split("\n## ")[1:])
    return {title: m.group(1) for title, body in sections if (m := re.search(r"```python\n(.*?)```", body, re.S))}


def run_blocks(blocks: dict[str, str], cwd: Path) -> dict[str, str]:
    """Run each block in its own interpreter (two at a time: most of each run is importing);
    return what each printed."""
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)

    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(blocks, pool.map(run, blocks.values())))
    for title, res in done.items():
        assert res.returncode == 0, f"{title}: {res.stderr[-3000:]}"
    return {title: res.stdout for title, res in done.items()}


def result_lines(stdout: str) -> list[tuple[float, str]]:
    return [(float(m.group(1)), m.group(2)) for line in stdout.splitlines() if (m := RESULT_LINE.match(line))]


@pytest.mark.rag
def test_usage_snippets_run_from_a_moved_export_and_give_the_same_answers(exported):
    """Every snippet of USAGE.md, taken from the file, runs from a moved copy of the export
    against the real packages; the dense ones (sentence-transformers, embedtune, Qdrant,
    LangChain, LlamaIndex) return the same passages, in the same order, as `embedtune search`."""
    from embedtune.export.usage import QUERY, TOP_K

    out, _ = exported
    usage = (out / "USAGE.md").read_text()
    assert str(out.resolve()) not in usage  # relative paths only: the folder can be moved and shipped
    moved = out.parent / "moved-export"
    shutil.copytree(out, moved)
    blocks = usage_blocks(usage)
    expected_sections = {"sentence-transformers", "int8 on CPU (`model-int8/`)", "embedtune retriever",
                         "Hybrid search: BM25 fused with this model", "Vector database: Qdrant (`qdrant/`)",
                         "LangChain (`pip install 'embedtune[rag]'`)", "LlamaIndex (`pip install 'embedtune[rag]'`)"}
    assert set(blocks) == expected_sections
    reference = [(h.score, h.passage_id) for h in query_index(open_index(moved / "index"), [QUERY], TOP_K)[0]]
    assert len({pid for _, pid in reference}) == TOP_K
    stdout = run_blocks(blocks, moved)
    printed = {title: result_lines(out) for title, out in stdout.items()}
    for title in expected_sections - {"int8 on CPU (`model-int8/`)", "Hybrid search: BM25 fused with this model"}:
        assert [pid for _, pid in printed[title]] == [pid for _, pid in reference], title
        assert np.allclose([s for s, _ in printed[title]], [s for s, _ in reference], atol=2e-3), title
    assert len(printed["Hybrid search: BM25 fused with this model"]) == TOP_K
    # LangChain and LlamaIndex with the int8 model: the same store answers (agreement measured, not assumed)
    for title in ("LangChain (`pip install 'embedtune[rag]'`)", "LlamaIndex (`pip install 'embedtune[rag]'`)"):
        int8_ids = re.search(r"int8 top passages: (\[.*\])", stdout[title]).group(1)
        int8_ids = json.loads(int8_ids.replace("'", '"'))
        assert len(int8_ids) == TOP_K and len(set(int8_ids) & {pid for _, pid in reference}) >= TOP_K - 2, title


@pytest.mark.rag
def test_langchain_and_llamaindex_embed_like_embedtune(exported):
    """The embeddings the RAG stacks compute for a query and a passage (prompts from the model
    folder's config) are embedtune's (cosine >= 0.9999)."""
    from langchain_huggingface import HuggingFaceEmbeddings
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from embedtune.encoding import encode_texts
    from embedtune.models import load_model

    out, _ = exported
    model = load_model(ModelConfig(name=str(out / "model")))
    query, passage = "fish oil and the heart", "high salt diet increase blood pressure"
    want_q = encode_texts(model, [query], prompt="query: ", precision="fp32", show_progress=False, task="query")[0]
    want_d = encode_texts(model, [passage], prompt="passage: ", precision="fp32", show_progress=False)[0]
    lc = HuggingFaceEmbeddings(model_name=str(out / "model"), encode_kwargs={"normalize_embeddings": True, "prompt_name": "document"},
                               query_encode_kwargs={"normalize_embeddings": True, "prompt_name": "query"})
    li = HuggingFaceEmbedding(model_name=str(out / "model"), query_instruction="query: ", text_instruction="passage: ", normalize=True)
    for got_q, got_d in ((lc.embed_query(query), lc.embed_documents([passage])[0]),
                         (li.get_query_embedding(query), li.get_text_embedding(passage))):
        assert float(np.dot(got_q, want_q)) >= 0.9999 and float(np.dot(got_d, want_d)) >= 0.9999
    # and without the prompt the vectors differ: the fixture tells prompted from plain text apart
    plain = encode_texts(model, [query], precision="fp32", show_progress=False)[0]
    assert float(np.dot(plain, want_q)) < 0.9999


def test_int8_model_is_exported_checked_and_loads(exported):
    from sentence_transformers import SentenceTransformer

    out, summary = exported
    q = summary["int8"]
    assert (out / "model-int8" / "onnx" / "model_int8.onnx").is_file()
    assert not list((out / "model-int8").rglob("*.safetensors"))  # the graph holds the weights
    assert 0.95 <= q["min_cosine"] <= q["mean_cosine"] < 1.0  # close to torch, and not the torch model itself
    model = SentenceTransformer(str(out / "model-int8"), device="cpu", trust_remote_code=True)
    assert model.prompts.get("query") == "query: "  # the prompts travel with it
    assert model.encode_query(["fish oil"]).shape == (1, summary["dim"])
    card = (out / "model-int8" / "README.md").read_text()
    assert "int8 version of ../model" in card and f"{q['mean_cosine']:.4f}" in card


def test_train_out_folder_exports_what_exists(tmp_path, tiny_model_dir):
    train = tmp_path / "train-out"
    shutil.copytree(tiny_model_dir, train / "model")
    write_manifest(train, stage="train", key="k", config={"model": {"name": "base-x"}, "loss": {"name": "gist"}}, inputs={})
    summary = export_run(train, tmp_path / "ship")
    assert summary["run_kind"] == "train" and "index" not in summary
    assert {"index", "evaluation", "mine manifest"} <= set(summary["missing"])
    card = (tmp_path / "ship" / "model" / "README.md").read_text()
    assert "base-x" in card and "gist" in card and "No evaluation" in card
    assert not (tmp_path / "ship" / "index").exists()
    manifest = json.loads((tmp_path / "ship" / "manifest.json").read_text())
    assert manifest["stage"] == "export" and manifest["missing"] == summary["missing"]



@pytest.mark.rag
def test_usage_of_an_export_without_index_runs_and_agrees(tmp_path, tiny_model_dir):
    """Without an index USAGE.md encodes sample texts: its sentence-transformers and LangChain
    snippets run and rank them alike."""
    train = tmp_path / "train-out"
    shutil.copytree(tiny_model_dir, train / "model")
    export_run(train, tmp_path / "ship")
    blocks = usage_blocks((tmp_path / "ship" / "USAGE.md").read_text())
    assert set(blocks) == {"sentence-transformers", "LangChain (`pip install 'embedtune[rag]'`)"}
    printed = {title: result_lines(out) for title, out in run_blocks(blocks, tmp_path / "ship").items()}
    st, lc = printed.values()
    assert len(st) == 3 and [p for _, p in st] == [p for _, p in lc]
    assert np.allclose([s for s, _ in st], [s for s, _ in lc], atol=2e-3)


def test_symlink_pointing_outside_is_not_copied(tmp_path, tiny_model_dir):
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}')
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    write_manifest(run, stage="train", key="k", config={}, inputs={})
    (run / "model" / "stolen.json").symlink_to(secret)
    (run / "model" / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    summary = export_run(run, tmp_path / "ship")
    exported = [p.name for p in (tmp_path / "ship").rglob("*")]
    assert "stolen.json" not in exported and "linked_dir" not in exported and "secret.json" not in exported
    assert any("stolen.json" in s and "outside" in s for s in summary["not_exported"])
    assert "hunter2" not in "".join(p.read_text(errors="ignore") for p in (tmp_path / "ship").rglob("*") if p.is_file() and p.suffix != ".safetensors")


def test_run_folder_part_symlinked_outside_is_refused(tmp_path, run_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train").symlink_to(run_dir / "train", target_is_directory=True)
    with pytest.raises(RunDirError, match="outside the run folder"):
        export_run(run, tmp_path / "ship")
    assert not (tmp_path / "ship").exists()


@pytest.mark.parametrize("bad", ["../../escaped.txt", "/tmp/embedtune-absolute-escape.txt", "searcher/../../../escaped.txt"])
def test_manifest_paths_cannot_escape(tmp_path, run_dir, bad):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    manifest_path = run / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
    manifest_path.write_text(json.dumps(manifest))
    (run / "escaped.txt").write_text("outside the index folder")
    out = tmp_path / "deep" / "er" / "ship"
    with pytest.raises(RunDirError, match="must stay inside"):
        export_run(run, out)
    assert not out.exists()
    assert not list(tmp_path.rglob("escaped.txt"))[1:]  # only the planted source file
    assert not Path("/tmp/embedtune-absolute-escape.txt").exists()
    assert not list(out.parent.glob(".tmp-*"))


def test_out_inside_a_source_part_and_non_empty_out_are_refused(tmp_path, run_dir):
    with pytest.raises(RunDirError, match="inside the run folder's model/"):
        export_run(run_dir, run_dir / "train" / "model" / "export")
    with pytest.raises(RunDirError, match="must not be or contain the run folder"):
        export_run(run_dir, run_dir.parent)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something.txt").write_text("x")
    with pytest.raises(RunDirError, match="not empty"):
        export_run(run_dir, busy)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RunDirError, match="no trained model"):
        read_run_folder(tmp_path)


def test_cli_export_json(run_dir, tmp_path):
    from embedtune.cli import app

    res = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "ship"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["index"]["count"] >= len(DOCS) and summary["missing"] == []
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "ship2")])
    assert res.exit_code == 7 and "run folder not found" in res.output


def test_int8_export_that_fails_is_one_line_and_leaves_nothing(run_dir, tmp_path, monkeypatch):
    """A model the quantizer cannot handle: a one-line error naming the step, no export folder."""
    import embedtune.onnx_model as onnx_model
    from embedtune.errors import ModelError

    def refuse(src, dst):
        raise RuntimeError("Unsupported operator FancyAttention\nTraceback details the user does not need")

    monkeypatch.setattr(onnx_model, "quantize_int8", refuse)
    out = tmp_path / "ship"
    with pytest.raises(ModelError) as err:
        export_run(run_dir, out, ExportConfig(int8=True))
    assert str(err.value).count("\n") == 0 and "int8 export of this model failed: Unsupported operator FancyAttention" in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "ship"]


def test_vector_db_into_a_non_empty_folder_is_refused(exported, tmp_path):
    from embedtune.errors import InputError
    from embedtune.vector_db import write_qdrant

    out, _ = exported
    taken = tmp_path / "db"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not empty"):
        write_qdrant(out / "index", taken)
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]


def test_missing_optional_packages_say_what_to_install(exported, tmp_path, monkeypatch):
    import embedtune.onnx_model as onnx_model
    import embedtune.vector_db as vector_db
    from embedtune.errors import ModelError

    out, _ = exported
    monkeypatch.setattr(vector_db, "qdrant_available", lambda: False)
    with pytest.raises(ModelError, match=r"needs qdrant-client \(pip install 'embedtune\[rag\]'\)"):
        vector_db.write_qdrant(out / "index", tmp_path / "db")
    monkeypatch.setattr(onnx_model, "onnx_available", lambda: False)
    with pytest.raises(ModelError, match=r"needs onnx and onnxruntime \(pip install 'embedtune\[onnx\]'\)"):
        onnx_model.require_onnx("int8 / ONNX encoding")
    assert not (tmp_path / "db").exists()


def test_export_help_lists_flags_without_a_value_type():
    from embedtune.cli import app

    res = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--int8" in res.stdout and "--vector-db" in res.stdout
    assert "<bool>" not in res.stdout and "<path>" in res.stdout
