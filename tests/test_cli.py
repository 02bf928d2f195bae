"""The terminal: one voice (embedtune's rich display and log lines on stderr, never a library's
tqdm bar or the trainer's raw dicts), a clean stdout under --json, --quiet, the shared options
present on every command they apply to, and old option spellings kept as warned aliases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from test_pipeline import pipeline_yaml
from typer.testing import CliRunner

from embedtune.cli import app

# What a library prints when it speaks for itself: tqdm bars ("Batches", "Computing widget
# examples", "12%|###  | 3/25 [00:01<00:09, 2.3it/s]") and the trainer's log dicts.
STRAY = re.compile(r"Batches|Computing widget examples|\d+%\|.*\||it/s\]|s/it\]|\{'loss'|\{'train_runtime'|\{'eval_")


def test_a_run_speaks_with_one_voice(tmp_path, tiny_model_dir):
    """The whole pipeline, progress on, output captured as a user's terminal would show it."""
    env = {**os.environ, "EMBEDTUNE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("TQDM_DISABLE", None)
    config = pipeline_yaml(tmp_path, tiny_model_dir, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "embedtune", "run", str(config)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""  # everything human-readable is on stderr
    assert not STRAY.findall(proc.stderr), STRAY.findall(proc.stderr)[:5]
    assert re.search(r"step \d+/6: loss \d", proc.stderr)  # the trainer's loss, as embedtune's log line
    assert "nDCG@10" in proc.stderr and "wall time" in proc.stderr  # the closing summary

    # --json: one JSON line on stdout, nothing else, and --quiet: no info lines either
    again = subprocess.run([sys.executable, "-m", "embedtune", "run", str(config), "--json", "--quiet"], env=env,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(again.stdout.splitlines()) == 1 and json.loads(again.stdout)["tuned"]
    assert "skipped" not in again.stderr and not STRAY.findall(again.stderr)


def test_the_stray_pattern_catches_what_it_is_for():
    """The check above can fail: these are lines the libraries really print."""
    for line in ("Batches: 100%|##########| 2/2 [00:00<00:00,  9.1it/s]", "Computing widget examples:   0%|  | 0/1",
                 "{'loss': 0.6931, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.5}", " 40%|####      | 2/5 [00:01<00:01,  1.9it/s]"):
        assert STRAY.search(line), line
    assert not STRAY.search("step 3/6: loss 0.6931, learning rate 5e-05")


SHARED = {"--json": ["data inspect", "data download", "mine", "train", "index build", "index update", "index fusion", "search", "eval",
                     "export", "merge", "run", "demo"],
          "--quiet": ["data inspect", "mine", "train", "index build", "index update", "search", "eval", "export", "merge", "run", "demo"],
          "--cache-dir": ["mine", "train", "index build", "eval", "run", "demo"],
          "--device": ["mine", "train", "index build", "eval"],
          "--seed": ["mine", "train", "eval"],
          "--query-prompt": ["mine", "train", "index build", "eval"],
          "--document-prompt": ["mine", "train", "index build", "eval"],
          "--batch-size": ["mine", "train", "index build", "eval"],
          "--max-seq-length": ["data inspect", "mine", "train", "index build", "eval"]}


@pytest.mark.parametrize("option", sorted(SHARED))
def test_shared_options_exist_wherever_they_apply(option):
    runner = CliRunner()
    for command in SHARED[option]:
        res = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "250"})
        assert res.exit_code == 0, command
        assert re.search(rf"\s{re.escape(option)}\s", res.stdout), f"{command} has no {option}"


def test_every_option_has_help():
    """No option in any command without help text (a bare flag tells a user nothing)."""
    import typer.main

    group = typer.main.get_command(app)

    def walk(cmd, path):  # noqa: ANN001, ANN202
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")
        for param in getattr(cmd, "params", []):
            if param.param_type_name == "option":
                yield path, param

    missing = [f"{path}: {param.opts[0]}" for path, param in walk(group, "embedtune") if not param.help and param.opts[0] != "--help"]
    assert not missing, missing


def test_old_spellings_are_warned_aliases(tmp_path):
    """train --data (the mined folder) is now --mined: it still works, with a warning; --help
    shows only the new name."""
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert "--data is now --mined" in res.stderr
    assert "mined data folder not found" in res.stderr and res.exit_code == 3  # parsed as --mined
    helptext = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).stdout
    assert "--mined" in helptext and "--data" not in helptext and "--train-batch-size" in helptext
