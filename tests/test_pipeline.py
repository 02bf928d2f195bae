"""`embedtune run`: the whole pipeline on a tiny model and synthetic BEIR data, its skipping,
`--from`, the run-folder guard, resume after a kill, and the HTML report in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import write_synthetic_beir
from typer.testing import CliRunner

from embedtune.cli import app

runner = CliRunner()


def pipeline_yaml(tmp_path: Path, model: str, run_dir: Path, **train_overrides) -> Path:
    data = write_synthetic_beir(tmp_path / "bench")
    train = {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-4, "negatives_per_query": 1, "logging_steps": 1,
             "dev": {"holdout_fraction": 0.2, "eval_steps": 2, "early_stopping_patience": None}}
    train.update(train_overrides)
    cfg = {
        "run_dir": str(run_dir),
        "model": {"name": model, "batch_size": 16},
        "data": {"benchmark": str(data)},
        "mine": {"num_negatives": 2, "range_max": 10, "cache_dir": str(tmp_path / "cache")},
        "train": train,
        "index": {"backend": "exact-numba", "cache_dir": str(tmp_path / "cache")},
        "eval": {"permutations": 500, "cache_dir": str(tmp_path / "cache")},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def check_hybrid(run_dir: Path, summary: dict) -> None:
    """Hybrid rows in the last JSON line, the weight chosen on the held-out training queries
    stored in the index and shipped with the export, and the RAG retrievers agreeing with it."""
    from embedtune.fusion import FusionConfig
    from embedtune.index import read_fusion
    from embedtune.integrations.langchain import EmbedtuneRetriever as LangChainRetriever
    from embedtune.integrations.llamaindex import EmbedtuneRetriever as LlamaIndexRetriever
    from embedtune.retriever import Retriever

    metrics = json.loads((run_dir / "eval" / "manifest.json").read_text())["metrics"]
    for name in ("hybrid(base)", "hybrid(tuned)"):
        assert summary[name]["ndcg@10"] == metrics["models"][name]["ndcg@10"]
        assert summary[name]["fusion_chosen_on"].startswith("bench:train (")  # the held-out training queries
    assert {"tuned", "hybrid(tuned)"} <= set(summary["vs_hybrid_base"])
    assert summary["best"] in metrics["models"]
    held_out = json.loads((run_dir / "eval" / "manifest.json").read_text())["config"]["fusion_dev_queries"]
    bench = run_dir.parent / "bench" / "qrels"
    split_queries = {split: {line.split("\t")[0] for line in (bench / f"{split}.tsv").read_text().splitlines()[1:]}
                     for split in ("train", "test")}
    assert held_out and set(held_out) <= split_queries["train"] and not set(held_out) & split_queries["test"]
    shipped = summary["shipped"]["model"].split("(")[0]  # base | tuned | merged
    chosen = FusionConfig(**metrics["fusion"][f"hybrid({shipped})"]["config"])
    assert read_fusion(run_dir / "index") == chosen == read_fusion(run_dir / "export" / "index")
    retriever = Retriever.load(run_dir / "export" / "index")
    assert retriever.hybrid and retriever.fusion == chosen
    query = "protein cell cancer risk"
    hits = retriever.search(query, 5)
    assert len(hits) == 5 and all(h["char_end"] > h["char_start"] for h in hits)
    docs = LangChainRetriever(retriever=retriever, k=5).invoke(query)
    assert [d.id for d in docs] == [h["passage_id"] for h in hits]
    assert [d.metadata["doc_id"] for d in docs] == [h["doc_id"] for h in hits]
    nodes = LlamaIndexRetriever(retriever, similarity_top_k=5).retrieve(query)
    assert [n.node.node_id for n in nodes] == [h["passage_id"] for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h["score"] for h in hits])
    # the USAGE.md snippet that shows all three runs as written
    usage = (run_dir / "export" / "USAGE.md").read_text()
    block = re.findall(r"## Hybrid search.*?```python\n(.*?)```", usage, re.S)[0]
    assert f"BM25 weight {chosen.bm25_weight:.2f}" in usage
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, env=env, timeout=300, cwd=run_dir / "export")
    assert res.returncode == 0, res.stderr[-2000:]
    from embedtune.export.usage import TOP_K

    assert len(res.stdout.strip().splitlines()) == TOP_K


def test_full_pipeline_then_skip_then_from(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    config = pipeline_yaml(tmp_path, tiny_model_dir, run_dir)
    result = runner.invoke(app, ["run", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = last_json(result.stdout)
    assert {"base", "tuned", "p_value", "wall_time_s"} <= set(summary)
    assert 0 <= summary["base"]["ndcg@10"] <= 1 and 0 <= summary["p_value"] <= 1
    for stage in ("mine", "train", "index", "eval", "export"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete", stage
    assert (run_dir / "export" / "model" / "README.md").is_file()
    report = (run_dir / "report.md").read_text()
    assert "## Base vs tuned" in report and "## Mining" in report and "## Wall time and peak memory per stage" in report
    assert "## Which weights ship" in report and f"**{summary['shipped']['model']}**" in report  # and why
    # each stage's peak resident memory: in its manifest, the state and the summary; the peak is
    # the stage's own (reset per stage), so the stages do not all report the process' largest
    peaks = summary["stage_peak_rss_mb"]
    assert set(peaks) == {"mine", "train", "select", "index", "eval", "export"} and all(50 < v < 8000 for v in peaks.values())
    assert len(set(peaks.values())) > 1
    assert all(json.loads((run_dir / s / "manifest.json").read_text())["peak_rss_mb"] > 50 for s in peaks)
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="eval/' not in html
    check_hybrid(run_dir, summary)

    # same command again: every stage is skipped, same numbers
    again = runner.invoke(app, ["run", str(config), "--json"])
    assert again.exit_code == 0, again.stderr
    assert last_json(again.stdout)["tuned"] == summary["tuned"]
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert all(s["skipped"] for s in state["stages"].values())

    # --from index: index, eval and export run again; mine and train stay
    rerun = runner.invoke(app, ["run", str(config), "--from", "index"])
    assert rerun.exit_code == 0, rerun.stderr
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert state["stages"]["mine"]["skipped"] and state["stages"]["train"]["skipped"]
    assert not state["stages"]["index"]["skipped"] and not state["stages"]["eval"]["skipped"]

    # another config into the same run folder is refused
    other = yaml.safe_load(config.read_text())
    other["mine"]["num_negatives"] = 3
    config.write_text(yaml.safe_dump(other))
    refused = runner.invoke(app, ["run", str(config)])
    assert refused.exit_code == 7
    assert "run folder holds a run of another config" in refused.stderr


def test_bad_pipeline_config_fails_before_work(tmp_path, tiny_model_dir):
    config = pipeline_yaml(tmp_path, tiny_model_dir, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["epoch"] = 2  # typo
    config.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 4
    assert "field 'epoch': unknown key" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_qrels_row_stops_the_run_before_the_first_stage(tmp_path, tiny_model_dir):
    """Every input is read before mining: a test-split qrels row naming an unknown document used
    to stop the run at the eval stage, after mining and training."""
    config = pipeline_yaml(tmp_path, tiny_model_dir, tmp_path / "run")
    qrels = tmp_path / "bench" / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join(lines + [lines[1].split("\t")[0] + "\tno-such-doc\t1"]) + "\n")
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code == 3, result.output
    assert f"{qrels}:{len(lines) + 1}" in result.stderr and "no-such-doc" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "mine").exists()


def test_null_in_a_stage_section_is_a_setting_not_an_absent_key(tmp_path, tiny_model_dir):
    """`relative_margin: null` turns the filter off; it used to be dropped like an unpassed CLI flag."""
    from embedtune.pipeline import Pipeline, load_pipeline_config

    config = pipeline_yaml(tmp_path, tiny_model_dir, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["mine"]["relative_margin"] = None
    config.write_text(yaml.safe_dump(cfg))
    stages = Pipeline(load_pipeline_config(config), str(config)).validate()
    assert stages["mine"].relative_margin is None
    assert stages["train"].dev.early_stopping_patience is None
    assert load_pipeline_config(config, {"run_dir": None}).run_dir == str(tmp_path / "run")  # CLI: None = not passed


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    """SIGKILL `embedtune run` during training, re-run the same command: same metrics as a run
    that was never interrupted, no temp files left behind."""
    env = {**os.environ, "EMBEDTUNE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    straight_cfg = pipeline_yaml(tmp_path / "a", tiny_model_dir, tmp_path / "straight", max_steps=30, dev={"enabled": False}, save_steps=5)
    cmd = [sys.executable, "-m", "embedtune", "run"]
    done = subprocess.run(cmd + [str(straight_cfg), "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    expected = last_json(done.stdout)

    killed_dir = tmp_path / "killed"
    killed_cfg = pipeline_yaml(tmp_path / "b", tiny_model_dir, killed_dir, max_steps=30, dev={"enabled": False}, save_steps=5)
    proc = subprocess.Popen(cmd + [str(killed_cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list((killed_dir / "train").glob("checkpoints/checkpoint-*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "eval" / "manifest.json").exists(), "the kill came too late to test anything"
    resumed = subprocess.run(cmd + [str(killed_cfg), "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    got = last_json(resumed.stdout)
    assert got["tuned"]["ndcg@10"] == pytest.approx(expected["tuned"]["ndcg@10"], abs=1e-6)
    assert got["base"] == expected["base"]
    assert not [p for p in killed_dir.rglob(".tmp-*")]


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("EMBEDTUNE_REQUIRE_CHROMIUM"),
                    reason="Debian's chromium is not installed (.ci/run installs it and requires this test)")
def test_html_report_renders_in_headless_chromium(tmp_path):
    """Open a report in a real headless browser: it renders, every image loads, no console errors."""
    import numpy as np

    from embedtune.io import atomic_write_with
    from embedtune.report import markdown_to_html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(np.arange(5))
    (tmp_path / "eval").mkdir()
    atomic_write_with(tmp_path / "eval" / "plot.png", lambda p: fig.savefig(p, format="png"))
    page = markdown_to_html("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![plot](eval/plot.png)\n", tmp_path, "t")
    # A checker script appended for the test only: records load errors and image sizes in the DOM.
    checker = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement('pre'); out.id = 'check';
  out.textContent = JSON.stringify({images: imgs.length, loaded: ok, errors: window.__errors, tables: document.querySelectorAll('table').length});
  document.body.appendChild(out);
});
</script>"""
    html_path = tmp_path / "report.html"
    html_path.write_text(page.replace("</head>", checker + "</head>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    proc = subprocess.run(["chromium", *flags, "--virtual-time-budget=3000", "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    start = dom.index('<pre id="check">') + len('<pre id="check">')
    check = json.loads(dom[start : dom.index("</pre>", start)].replace("&quot;", '"'))
    assert check == {"images": 1, "loaded": 1, "errors": [], "tables": 1}
    console_errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not console_errors
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1000,800", html_path.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 5000  # something was painted


def test_no_label_pipeline_with_select_and_hybrid(tmp_path, tiny_model_dir, monkeypatch):
    """pairs: self (the unsupervised recipe's path): the select stage guards with held-out
    pseudo-queries, the fusion weight stays the fixed default (never the benchmark's dev labels),
    and the run reports hybrid rows."""
    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    config = pipeline_yaml(tmp_path, tiny_model_dir, run_dir, loss={"name": "margin_mse"})
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["pairs"] = "self"
    cfg["mine"].update({"retriever": "hybrid", "sampling": "random", "hybrid_teacher": {"bm25_weight": 0.5},
                        "self_pairs": {"generators": ["crop"], "pairs_per_doc": 2}})
    (tmp_path / "bench" / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")  # must not be used
    config.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(config), "--json"])
    assert result.exit_code in (0, 8), result.output
    summary = last_json(result.stdout)
    selection = json.loads((run_dir / "select" / "selection.json").read_text())
    assert "held-out" in selection["dev"] and len(selection["candidates"]) == 4
    assert summary["shipped"]["model"] == selection["shipped"]
    # the pseudo-queries are also judged by the hybrid teacher: a guard on every candidate
    for cand in selection["candidates"]:
        teacher = cand["guards"]["teacher(dev)"]
        assert 0 < teacher["ndcg@10"] <= 1 and (teacher["delta"] == 0.0) == (cand["alpha"] == 0.0)
        assert cand["qualified"] == (cand["lost_on"] == [])
    assert "guard" in selection["why"] and set(summary["shipped"]["guards"]["tuned"]) == {"teacher(dev)"}
    for name in ("hybrid(base)", "hybrid(tuned)"):
        assert summary[name]["bm25_weight"] == 0.5 and summary[name]["fusion_chosen_on"] == "fixed (no dev split)"


def test_query_side_pipeline_keeps_the_base_models_document_vectors(tmp_path, tiny_model_dir, monkeypatch):
    """train.side: query through run: the index holds the base encoder's vectors (no re-encoding:
    they come from the cache the mining filled), the JSON line says "reindexed": false, and the
    export's model card says the model is query-side only."""
    from embedtune.models import QUERY_SIDE_FILE, load_model

    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    config = pipeline_yaml(tmp_path, tiny_model_dir, run_dir, side="query", max_steps=None, epochs=30, batch_size=8,
                           learning_rate=1e-2, warmup_ratio=0.0, dev={"holdout_fraction": 0.2, "early_stopping_patience": None})
    result = runner.invoke(app, ["run", str(config), "--json"])
    assert result.exit_code in (0, 8), result.output
    summary = last_json(result.stdout)
    assert summary["reindexed"] is False
    assert summary["shipped"]["beat_base"], summary["shipped"]  # the adapter, not the base, is what is checked below
    assert (run_dir / "select" / "model" / QUERY_SIDE_FILE).is_file()
    card = (run_dir / "export" / "model" / "README.md").read_text()
    assert "## Query side only" in card and "do not use it to search other document collections" in card
    info = json.loads((run_dir / "index" / "manifest.json").read_text())["index"]
    assert info["document_encoder_sha256"] == load_model(tiny_model_dir).fingerprint
