"""Weight merging and the select stage's regression guard."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from embedtune.cli import app
from tiny_models import build_tiny_bert

runner = CliRunner()


def _state(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").state_dict()


def test_merge_interpolates_weights(tmp_path, tiny_model_dir):
    other = build_tiny_bert(tmp_path / "other", seed=1)  # same architecture and tokenizer, other weights
    base, tuned = _state(tiny_model_dir), _state(other)
    outs = {}
    for alpha in (0.0, 0.25, 1.0):
        out = tmp_path / f"merged-{alpha}"
        result = runner.invoke(app, ["merge", "--base", tiny_model_dir, "--model", str(other), "--alpha", str(alpha), "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
        outs[alpha] = _state(out)
    key = next(k for k, v in base.items() if torch.is_floating_point(v) and v.numel() > 10)
    assert torch.equal(outs[0.0][key], base[key])
    assert torch.equal(outs[1.0][key], tuned[key])
    mid = outs[0.25][key]
    assert not torch.equal(mid, base[key]) and not torch.equal(mid, tuned[key])
    assert torch.allclose(mid, 0.75 * base[key] + 0.25 * tuned[key], atol=1e-6)


def test_merge_refuses_what_cannot_be_merged(tmp_path, tiny_model_dir):
    wider = build_tiny_bert(tmp_path / "wider", hidden=48)
    result = runner.invoke(app, ["merge", "--base", tiny_model_dir, "--model", str(wider), "--alpha", "0.5", "--out", str(tmp_path / "m1")])
    assert result.exit_code == 5 and "cannot merge" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m1").exists()
    result = runner.invoke(app, ["merge", "--base", tiny_model_dir, "--model", tiny_model_dir, "--alpha", "1.5", "--out", str(tmp_path / "m2")])
    assert result.exit_code == 4 and "alpha must be in [0, 1]" in result.output
    assert not (tmp_path / "m2").exists()


def test_different_tokenizers_cannot_be_merged(tmp_path, tiny_model_dir):
    from embedtune.errors import ModelError
    from embedtune.merging import merge_models
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(tiny_model_dir, device="cpu")
    other = SentenceTransformer(str(build_tiny_bert(tmp_path / "other", seed=1)), device="cpu")
    other.tokenizer.add_tokens(["zebra"])  # same shapes, another vocabulary
    with pytest.raises(ModelError, match="different tokenizers"):
        merge_models(base, [other], 0.5)


def test_guard_ships_the_base_after_a_harmful_training(tmp_path, tiny_model_dir, monkeypatch):
    """A learning rate that wrecks the model: the select stage ships the base, says so, exit code 8."""
    from test_pipeline import pipeline_yaml

    monkeypatch.setenv("EMBEDTUNE_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    config = pipeline_yaml(tmp_path, tiny_model_dir, run_dir, learning_rate=0.5, max_steps=12)
    cfg = yaml.safe_load(config.read_text())
    cfg["select"] = {"alphas": [0.5, 1.0], "guard": [cfg["data"]["benchmark"] + ":test"], "permutations": 200}
    config.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(config), "--json"])
    assert result.exit_code == 8, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["shipped"]["model"] == "base" and summary["shipped"]["beat_base"] is False
    dev = summary["shipped"]["dev_ndcg@10"]
    assert dev["base"] > dev["tuned"] and dev["base"] >= dev["merged(alpha=0.5)"]
    assert "nothing beat the base model" in result.stderr
    selection = json.loads((run_dir / "select" / "selection.json").read_text())
    for cand in selection["candidates"]:  # every candidate was also scored on the guard benchmark
        guard = cand["guards"]["bench:test"]
        assert "teacher(dev)" not in cand["guards"]  # real dev queries: no teacher guard
        assert 0 <= guard["ndcg@10"] <= 1 and (guard["delta"] == 0.0) == (cand["alpha"] == 0.0)
    card = (run_dir / "export" / "model" / "README.md").read_text()
    assert "## Which weights ship" in card and "**base**" in card and "no candidate beat the base model on dev" in card
    # what ships is the base model's weights
    base = _state(tiny_model_dir)
    shipped = _state(run_dir / "export" / "model")
    assert all(torch.equal(base[k], shipped[k]) for k in base)


def test_guard_benchmark_that_does_not_exist_is_a_config_error(tmp_path, tiny_model_dir):
    from test_pipeline import pipeline_yaml

    config = pipeline_yaml(tmp_path, tiny_model_dir, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["select"] = {"guard": [str(tmp_path / "nowhere") + ":test"]}
    config.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(config)])
    assert result.exit_code in (3, 4) and "nowhere" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_choose_candidate_rules():
    from embedtune.selection import choose_candidate

    def cand(alpha, scores, qualified=True):
        return {"alpha": alpha, "name": str(alpha), "dev_ndcg@10": sum(scores) / len(scores), "qualified": qualified,
                "lost_on": [] if qualified else ["teacher(dev)"]}

    base = [0.2, 0.2, 0.2, 0.2]
    tuned = [0.5, 0.3, 0.6, 0.4]
    noisy_merge = [0.6, 0.2, 0.7, 0.32]  # +0.005 on average, per-query differences of +-0.1: noise
    clear_merge = [0.6, 0.4, 0.7, 0.5]  # +0.1 on every query
    scores = {0.0: base, 1.0: tuned, 0.5: noisy_merge}
    as_dicts = {a: dict(enumerate(v)) for a, v in scores.items()}
    chosen, why = choose_candidate([cand(a, v) for a, v in scores.items()], as_dicts)
    assert chosen["alpha"] == 1.0 and "within noise" in why
    scores[0.5] = clear_merge
    as_dicts = {a: dict(enumerate(v)) for a, v in scores.items()}
    chosen, _ = choose_candidate([cand(a, v) for a, v in scores.items()], as_dicts)
    assert chosen["alpha"] == 0.5
    # a candidate out on a guard never ships, however good on dev
    chosen, _ = choose_candidate([cand(0.0, base), cand(1.0, tuned), cand(0.5, clear_merge, qualified=False)], as_dicts)
    assert chosen["alpha"] == 1.0
    # nothing above the base: the base ships
    chosen, why = choose_candidate([cand(0.0, [0.5] * 4), cand(1.0, [0.4] * 4)], {0.0: dict(enumerate([0.5] * 4)), 1.0: dict(enumerate([0.4] * 4))})
    assert chosen["alpha"] == 0.0 and why == "no candidate beat the base model on dev"
    # better on dev, but out on a guard: the base ships, and the reason names the guard
    chosen, why = choose_candidate([cand(0.0, base), cand(1.0, tuned, qualified=False)], as_dicts, guarded=True)
    assert chosen["alpha"] == 0.0 and why == "1.0 beat the base model on dev but lost significantly on teacher(dev)"
    chosen, why = choose_candidate([cand(0.0, base), cand(1.0, tuned)], as_dicts, guarded=True)
    assert chosen["alpha"] == 1.0 and why.endswith(", no significant loss on any guard")


def test_teacher_judgements_by_hand():
    """The teacher's top 10, graded 10..1: at BM25 weight 0 the base model's order; at 0.5 the one
    document that shares the query's word (z-score 9.95 among 100 BM25 slots, the rest 0) leads,
    the others keep the base model's order."""
    from embedtune.selection import teacher_judgements

    corpus = {"a": "apple banana", "b": "cherry grape", "c": "melon kiwi"}
    base_run = {"q": {"a": 0.9, "c": 0.5, "b": 0.1}}
    assert teacher_judgements(base_run, {"q": "cherry"}, corpus, 0.0) == {"q": {"a": 10, "c": 9, "b": 8}}
    assert teacher_judgements(base_run, {"q": "cherry"}, corpus, 0.5) == {"q": {"b": 10, "a": 9, "c": 8}}
    # no word in common with any document: the base model's order
    assert teacher_judgements(base_run, {"q": "zebra"}, corpus, 0.5) == {"q": {"a": 10, "c": 9, "b": 8}}
