"""The catalogue of bad inputs: each gives one line naming file, line and field, and a
documented exit code (see embedtune/errors.py) -- never a traceback, never silent skipping."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import write_beir
from typer.testing import CliRunner

from embedtune.cli import app

runner = CliRunner()
INPUT_ERROR = 3
CONFIG_ERROR = 4
MODEL_ERROR = 5


def inspect(path, model) -> tuple[int, str]:
    result = runner.invoke(app, ["data", "inspect", str(path), "--model", model])
    return result.exit_code, result.stderr


def corrupt(folder, name, mutate):
    path = folder / name
    path.write_bytes(mutate(path.read_bytes()))
    return path


def lines_with(folder, name, line_no, new_line: str):
    path = folder / name
    lines = path.read_text().splitlines()
    lines[line_no - 1] = new_line
    path.write_text("\n".join(lines) + "\n")
    return path


CASES = {
    "malformed json": (lambda f: lines_with(f, "corpus.jsonl", 3, '{"_id": "d3", "text": '), "corpus.jsonl:3: malformed JSON"),
    "missing _id": (lambda f: lines_with(f, "corpus.jsonl", 2, '{"title": "t", "text": "x"}'), "corpus.jsonl:2: field '_id': missing"),
    "empty _id": (lambda f: lines_with(f, "corpus.jsonl", 2, '{"_id": " ", "text": "x"}'), "corpus.jsonl:2: field '_id': empty"),
    "missing text": (lambda f: lines_with(f, "corpus.jsonl", 4, '{"_id": "d4", "title": ""}'), "corpus.jsonl:4: field 'text': missing"),
    "non-string text": (lambda f: lines_with(f, "corpus.jsonl", 5, '{"_id": "d5", "text": ["a"]}'), "corpus.jsonl:5: field 'text': must be a string, got list"),
    "duplicate id": (lambda f: lines_with(f, "corpus.jsonl", 5, '{"_id": "d1", "text": "again"}'), "corpus.jsonl:5: field '_id': duplicate id 'd1' (first on line 1)"),
    "empty corpus": (lambda f: (f / "corpus.jsonl").write_text(""), "corpus.jsonl: empty corpus: no documents"),
    "non-utf8 bytes": (lambda f: corrupt(f, "corpus.jsonl", lambda b: b.replace(b"salt diet", b"salt \xff diet")), "corpus.jsonl:2: not valid UTF-8 (byte 0xff"),
    "bom": (lambda f: corrupt(f, "queries.jsonl", lambda b: b"\xef\xbb\xbf" + b), "queries.jsonl:1: file starts with a UTF-8 byte-order mark"),
    "empty query": (lambda f: lines_with(f, "queries.jsonl", 2, '{"_id": "q2", "text": ""}'), "queries.jsonl:2: field 'text': empty"),
    "qrels unknown query": (lambda f: lines_with(f, "qrels/test.tsv", 2, "q99\td1\t1"), "test.tsv:2: field 'query-id': unknown query id 'q99'"),
    "qrels unknown doc": (lambda f: lines_with(f, "qrels/test.tsv", 3, "q2\tnope\t1"), "test.tsv:3: field 'corpus-id': unknown document id 'nope'"),
    "qrels negative score": (lambda f: lines_with(f, "qrels/test.tsv", 2, "q1\td1\t-1"), "test.tsv:2: field 'score': must be >= 0, got -1"),
    "qrels non-integer score": (lambda f: lines_with(f, "qrels/test.tsv", 2, "q1\td1\t0.5"), "test.tsv:2: field 'score': must be an integer, got '0.5'"),
    "qrels wrong columns": (lambda f: lines_with(f, "qrels/test.tsv", 2, "q1\td1"), "test.tsv:2: expected 3 tab-separated columns, got 2"),
    "missing file": (lambda f: (f / "queries.jsonl").unlink(), "queries.jsonl: file not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_beir_folder(case, tmp_path, tiny_model_dir):
    folder = write_beir(tmp_path / "ds")
    mutate, expected = CASES[case]
    mutate(folder)
    code, err = inspect(folder, tiny_model_dir)
    assert code == INPUT_ERROR, err
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_missing_split(tmp_path):
    from embedtune.corpus import load_beir
    from embedtune.errors import InputError

    folder = write_beir(tmp_path / "ds")
    with pytest.raises(InputError) as info:
        load_beir(folder, "dev")
    assert str(info.value).endswith("qrels/dev.tsv: split 'dev' not found (available: test, train)")


def test_crlf_is_accepted(tmp_path, tiny_model_dir):
    folder = write_beir(tmp_path / "ds", newline="\r\n")
    result = runner.invoke(app, ["data", "inspect", str(folder), "--model", tiny_model_dir, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["corpus"]["documents"] == 6 and summary["splits"]["test"]["queries"] == 3


def test_csv_with_wrong_columns(tmp_path, tiny_model_dir):
    path = tmp_path / "docs.csv"
    path.write_text("id,body\n1,hello\n")
    code, err = inspect(path, tiny_model_dir)
    assert code == INPUT_ERROR
    assert "docs.csv:1: field '_id': missing column(s) ['_id', 'text']" in err


def test_pairs_with_bad_negatives(tmp_path, tiny_model_dir):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "q", "positive": "p"}\n{"query": "q", "positive": "p", "negatives": "n"}\n')
    code, err = inspect(path, tiny_model_dir)
    assert code == INPUT_ERROR
    assert "pairs.jsonl:2: field 'negatives': must be a list of non-empty strings" in err


def test_model_folder_without_weights(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    from embedtune.errors import ModelError
    from embedtune.models import load_model

    with pytest.raises(ModelError, match="no model weights"):
        load_model(str(tmp_path / "m"))


def test_pickle_only_model_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"not loaded")
    from embedtune.errors import ModelError
    from embedtune.models import load_model

    with pytest.raises(ModelError, match="only pickle weights \\(pytorch_model.bin\\)"):
        load_model(str(tmp_path / "m"))


def test_unknown_hub_model_offline_is_one_line():
    from embedtune.errors import ModelError
    from embedtune.models import resolve_model_path

    with pytest.raises(ModelError) as info:
        resolve_model_path("someone/not-a-real-model")
    assert "is not available locally" in str(info.value)


def test_config_unknown_key_and_wrong_type(tmp_path):
    from embedtune.config import ModelConfig, load_config
    from embedtune.errors import ConfigError

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: minilm\nbatch_sise: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(ModelConfig, cfg)
    assert str(info.value) == f"{cfg}: field 'batch_sise': unknown key (typo?)"
    assert info.value.exit_code == CONFIG_ERROR
    cfg.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match="field 'batch_size': Input should be a valid integer"):
        load_config(ModelConfig, cfg)
    cfg.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(ModelConfig, cfg)
    # CLI flags override YAML values
    cfg.write_text("name: minilm\nbatch_size: 8\n")
    assert load_config(ModelConfig, cfg, {"batch_size": 16, "query_prompt": None}).batch_size == 16


def test_cli_process_has_no_traceback(tmp_path):
    """The installed entry point prints one line and exits with the documented code."""
    folder = write_beir(tmp_path / "ds")
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": \n')
    proc = subprocess.run([sys.executable, "-m", "embedtune", "data", "inspect", str(folder)], capture_output=True, text=True)
    assert proc.returncode == INPUT_ERROR
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {folder}/corpus.jsonl:1: malformed JSON (Expecting value at column 23)"]


def test_five_megabyte_document_is_truncated_with_a_warning(tmp_path, tiny_model_dir):
    """A 5 MB single document in a JSONL corpus: indexed as its first passages, with a warning
    that names how many passages were dropped, and nothing else lost."""
    import json

    corpus = tmp_path / "corpus.jsonl"
    words = ("salt diet sodium blood pressure " * 170_000)[:5_000_000]
    corpus.write_text(json.dumps({"_id": "big", "text": words}) + "\n" + json.dumps({"_id": "small", "text": "fish oil"}) + "\n")
    assert corpus.stat().st_size > 5_000_000
    out = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", "--model", tiny_model_dir, "--corpus", str(corpus), "--out", str(out), "--max-tokens", "96", "--json"])
    assert result.exit_code == 0, result.output
    assert "truncated" in result.output and "passage(s) dropped" in result.output
    passages = [json.loads(line) for line in (out / "passages.jsonl").read_text().splitlines()]
    assert sum(p["doc_id"] == "big" for p in passages) == 2000  # max_passages_per_doc
    assert any(p["doc_id"] == "small" for p in passages)


def test_empty_documents_are_reported_and_kept(tmp_path, tiny_model_dir):
    """A document with no title and no text loads with one warning naming it (BEIR keeps such
    documents); --strict refuses it with a one-line error."""
    folder = write_beir(tmp_path / "ds")
    lines_with(folder, "corpus.jsonl", 4, '{"_id": "d4", "title": "", "text": ""}')
    result = runner.invoke(app, ["data", "inspect", str(folder), "--model", tiny_model_dir, "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["corpus"]["documents"] == 6 and summary["corpus"]["empty_documents"] == 1
    assert summary["corpus"]["empty_document_ids"] == ["d4"]
    assert "1 empty document(s)" in result.stderr and "'d4'" in result.stderr
    strict = runner.invoke(app, ["data", "inspect", str(folder), "--model", tiny_model_dir, "--strict"])
    assert strict.exit_code == INPUT_ERROR and "corpus.jsonl:4: field 'text': empty (no title, no text)" in strict.stderr


def test_empty_documents_are_never_mined(tmp_path):
    """Kept in the corpus, but never a negative or a positive: a qrels row pointing at one is
    counted, not turned into a pair."""
    from embedtune.mining import MineConfig
    from embedtune.mining.inputs import load_mining_inputs

    folder = write_beir(tmp_path / "ds")
    lines_with(folder, "corpus.jsonl", 3, '{"_id": "d3", "title": "", "text": "  "}')  # judged relevant for q3 in test
    inputs = load_mining_inputs(MineConfig(pairs=f"{folder}:test"))
    assert "d3" not in inputs.corpus
    assert all(p.positive_id != "d3" for p in inputs.pair_set.pairs)
    assert inputs.pair_set.stats["empty_positives_skipped"] == 1
    assert "d3" in inputs.pair_set.known_positives["q3"]
