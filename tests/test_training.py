"""Training stage: mined rows -> trainer columns, dev split, losses, run folder, resume."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import yaml
from typer.testing import CliRunner

from tiny_models import VOCAB_WORDS, build_tiny_bert

from embedtune.cli import app
from embedtune.errors import ConfigError, InputError
from embedtune.losses import KNOWN_POSITIVE_LOSSES
from embedtune.run_folder import write_manifest
from embedtune.mined import load_mined
from embedtune.training import TrainConfig, train_model
from embedtune.training.dev import make_dev_split
from embedtune.training.rows import build_train_rows

# --------------------------------------------------------------------------- builders


def make_mined(
    folder: Path,
    *,
    n_queries: int = 40,
    negatives: int = 3,
    seed: int = 0,
    with_ce: bool = False,
    distinct: bool = False,
    qrels: dict | None = None,
    write_dataset: bool = True,
) -> Path:
    """A mined folder in the mining contract's format over a BEIR corpus of random vocabulary
    texts (query = the first words of its positive), with a mining manifest naming the corpus.

    Default: every 5th query has a second positive and every 7th query only one negative.
    ``distinct``: one positive per query, full rows, and no text in two rows (batches then do not
    depend on how the no-duplicates sampler packs them).
    """
    rng = random.Random(seed)
    folder = Path(folder)
    beir = folder / "beir"
    beir.mkdir(parents=True, exist_ok=True)
    n_docs = n_queries * (2 + negatives) if distinct else 2 * n_queries + 20
    docs = {f"d{i}": " ".join(rng.sample(VOCAB_WORDS, 8)) + f" {i}" for i in range(n_docs)}
    with open(beir / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for doc_id, text in docs.items():
            fh.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    ids = list(docs)
    rows = []
    for q in range(n_queries):
        if distinct:
            positives, k = [ids[q]], negatives
            neg = ids[2 * n_queries + q * negatives: 2 * n_queries + (q + 1) * negatives]
        else:
            positives = [ids[q]] + ([ids[q + n_queries]] if q % 5 == 0 else [])
            k = 1 if q % 7 == 0 else negatives
            neg = rng.sample([d for d in ids if d not in positives], k)
        for p in positives:
            row = {
                "query_id": f"q{q}", "query": " ".join(docs[ids[q]].split()[:3]) + f" {q}", "positive_id": p,
                "positive": docs[p], "positive_score": 0.5, "negative_ids": neg, "negatives": [docs[d] for d in neg],
                "negative_scores": [0.4] * k, "negative_ranks": list(range(1, k + 1)),
            }
            if with_ce:
                row["teacher_positive_score"] = 5.0
                row["teacher_negative_scores"] = [1.0 + j for j in range(k)]
            rows.append(row)
    if write_dataset:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(folder / "dataset"))
    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    if qrels is not None:
        (folder / "qrels.json").write_text(json.dumps(qrels))
    write_manifest(folder, stage="mine", key="test", config={"corpus": str(beir)}, inputs={})
    return folder


from transformers import BertTokenizerFast as _BertTokenizerFast  # noqa: E402


class _VocabFileTokenizer:
    """transformers 5 renamed BertTokenizerFast(vocab_file=) to (vocab=); with the old name the
    shared tiny builder gets a 5-token vocabulary (every word -> [UNK], all texts embed alike)."""

    def __new__(cls, vocab_file=None, **kwargs):
        if vocab_file is not None:
            kwargs.setdefault("vocab", vocab_file)
        return _BertTokenizerFast(**kwargs)


@pytest.fixture(scope="session")
def trainable_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The shared tiny model, rebuilt with a real vocabulary if the shared builder lost it."""
    from transformers import AutoTokenizer

    if len(AutoTokenizer.from_pretrained(tiny_model_dir)) >= len(VOCAB_WORDS):
        return tiny_model_dir
    with mock.patch("transformers.BertTokenizerFast", _VocabFileTokenizer):
        return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_vocab")))


def without_dropout(model_dir: str, folder: Path) -> str:
    """A copy of a model with dropout off, so two runs can be compared step by step."""
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _cfg(model_name: str, **kw) -> TrainConfig:
    base = {"model": {"name": model_name}, "batch_size": 8, "learning_rate": 1e-3, "negatives_per_query": 2}
    for key, value in kw.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainConfig.model_validate(base)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --------------------------------------------------------------------------- data shaping


def test_rows_become_trainer_columns_without_dev_queries(tmp_path):
    data = load_mined(make_mined(tmp_path / "m"))
    cfg = _cfg("unused", negatives_per_query=2, short_rows="drop")
    rows = build_train_rows(data, cfg, exclude_query_ids={"q1", "q2"})
    assert list(rows.columns) == ["anchor", "positive", "negative_1", "negative_2"]
    kept_queries = set(rows.columns["anchor"])
    assert not any(q.endswith((" 1", " 2")) for q in kept_queries)
    # q0, q7, ... have one negative only: dropped, never padded
    assert rows.stats["dropped_short_rows"] > 0 and rows.stats["padded_rows"] == 0
    assert rows.stats["train_rows"] == len(rows.columns["anchor"]) == data.num_rows - rows.stats["dev_rows_excluded"] - rows.stats["dropped_short_rows"]
    # the first negatives are the mined ones, in order
    c = data.dataset.to_dict()
    i = c["query_id"].index("q3")
    j = rows.columns["anchor"].index(c["query"][i])
    assert [rows.columns["negative_1"][j], rows.columns["negative_2"][j]] == c["negatives"][i][:2]


def test_short_rows_are_padded_with_documents_that_are_not_positives(tmp_path):
    folder = make_mined(tmp_path / "m")
    mined_negative_of_q0 = load_mined(folder).columns["negative_ids"][0]
    # qrels know more positives of q0 than its rows; padding must avoid those too
    extra = [f"d{i}" for i in range(1, 40) if f"d{i}" not in mined_negative_of_q0]
    (folder / "qrels.json").write_text(json.dumps({"q0": {"d0": 1, "d40": 2, **{d: 1 for d in extra}}}))
    data = load_mined(folder)
    rows = build_train_rows(data, _cfg("unused", negatives_per_query=3, short_rows="pad"))
    assert rows.stats["padded_rows"] > 0 and rows.stats["dropped_short_rows"] == 0
    full = data.dataset.to_dict()
    text = dict(zip(full["positive_id"], full["positive"]))
    forbidden = {text[d] for d in ("d0", "d40", *extra)}
    q0_rows = [k for k, a in enumerate(rows.columns["anchor"]) if a == data.columns["query"][0]]
    assert len(q0_rows) == 2
    for k in q0_rows:
        negs = [rows.columns[f"negative_{n}"][k] for n in (1, 2, 3)]
        assert negs[0] == full["negatives"][0][0]  # the mined one first
        assert not forbidden & set(negs[1:]) and len(set(negs)) == 3


def test_max_pairs_per_query_keeps_the_highest_grades(tmp_path):
    qrels = {"q0": {"d0": 1, "d40": 2}, "q5": {"d5": 2, "d45": 1}}
    data = load_mined(make_mined(tmp_path / "m", qrels=qrels))
    rows = build_train_rows(data, _cfg("unused", max_pairs_per_query=1, negatives_per_query=1))
    text = dict(zip(data.columns["positive_id"], data.dataset["positive"]))
    assert text["d40"] in rows.columns["positive"] and text["d0"] not in rows.columns["positive"]
    assert text["d5"] in rows.columns["positive"] and text["d45"] not in rows.columns["positive"]
    assert rows.stats["capped_rows"] == 8  # 8 of 40 queries have a second positive


def test_margin_mse_needs_teacher_scores_and_gets_them_as_labels(tmp_path):
    plain = load_mined(make_mined(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="teacher scores"):
        build_train_rows(plain, _cfg("unused", loss={"name": "margin_mse"}))
    data = load_mined(make_mined(tmp_path / "ce", with_ce=True))
    rows = build_train_rows(data, _cfg("unused", loss={"name": "margin_mse"}, negatives_per_query=2))
    assert rows.columns["label"][0] == [5.0, 1.0, 2.0]
    assert rows.stats["dropped_short_rows"] > 0  # no teacher score to pad with
    listwise = build_train_rows(data, _cfg("unused", loss={"name": "listwise_kl"}, negatives_per_query=2))
    assert listwise.columns["label"] == rows.columns["label"]  # the same teacher scores, a different loss
    with pytest.raises(ConfigError, match="teacher scores"):
        build_train_rows(plain, _cfg("unused", loss={"name": "listwise_kl"}))


def test_pairs_jsonl_is_read_when_there_is_no_dataset_folder(tmp_path):
    folder = make_mined(tmp_path / "m", write_dataset=False)
    assert load_mined(folder).num_rows == load_mined(make_mined(tmp_path / "m2")).num_rows


def test_bad_mined_data_names_the_file_line_and_field(tmp_path):
    folder = make_mined(tmp_path / "m", write_dataset=False)
    lines = (folder / "pairs.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    del row["positive_id"]
    lines[2] = json.dumps(row)
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as err:
        load_mined(folder)
    assert err.value.line == 3 and err.value.field == "positive_id" and "pairs.jsonl" in err.value.file
    with pytest.raises(InputError, match="not found"):
        load_mined(tmp_path / "nope")


def test_held_out_dev_queries_are_seeded_and_searched_in_the_full_corpus(tmp_path):
    qrels = {"q3": {"d3": 1, "d77": 1}}
    data = load_mined(make_mined(tmp_path / "m", qrels=qrels))
    a = make_dev_split(data, _cfg("unused", seed=1))
    b = make_dev_split(data, _cfg("unused", seed=1))
    c = make_dev_split(data, _cfg("unused", seed=2))
    assert a.queries == b.queries and a.queries != c.queries
    assert len(a.queries) == 4 == len(a.exclude_query_ids)  # 10% of 40
    assert len(a.corpus) == 100  # the whole BEIR corpus from the mining manifest
    rows = build_train_rows(data, _cfg("unused", seed=1), a.exclude_query_ids)
    assert not set(rows.columns["anchor"]) & set(a.queries.values())
    for qid, relevant in a.relevant.items():
        assert relevant and relevant <= set(a.corpus)
    d = make_dev_split(data, _cfg("unused", dev={"source": None, "corpus_max_docs": 30}, seed=1))
    assert len(d.corpus) == 30 and all(r <= set(d.corpus) for r in d.relevant.values())
    # the query side searches the base model's cached vectors: the whole corpus, whatever corpus_max_docs says
    q = make_dev_split(data, _cfg("unused", dev={"source": None, "corpus_max_docs": 30}, side="query", seed=1))
    assert len(q.corpus) == 100 and q.queries == d.queries


def test_a_benchmark_dev_split_is_used_but_never_the_test_split(tmp_path):
    from helpers import write_beir

    beir = write_beir(tmp_path / "bench", qrels={"test": [("q1", "d1", 1)], "dev": [("q2", "d2", 1), ("q3", "d3", 0)], "train": [("q4", "d6", 1)]})
    data = load_mined(make_mined(tmp_path / "m"))
    dev = make_dev_split(data, _cfg("unused", dev={"source": f"{beir}:dev"}))
    assert dev.queries == {"q2": "salt and blood pressure"} and dev.relevant == {"q2": {"d2"}}
    with pytest.raises(ConfigError, match="test split"):
        make_dev_split(data, _cfg("unused", dev={"source": f"{beir}:test"}))


# --------------------------------------------------------------------------- training runs


def test_train_command_writes_model_manifest_and_curve(tmp_path, trainable_model_dir):
    data = make_mined(tmp_path / "m")
    out = tmp_path / "run"
    args = ["train", "--model", trainable_model_dir, "--mined", str(data), "--out", str(out), "--epochs", "2",
            "--train-batch-size", "8", "--learning-rate", "1e-3", "--num-negatives", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["train_rows"] == 43 and summary["steps"] == 12
    assert 0 <= summary["base_dev_ndcg@10"] <= 1 and 0 <= summary["best_dev_ndcg@10"] <= 1

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "train" and manifest["status"] == "complete"
    assert manifest["config"]["negatives_per_query"] == 2 and manifest["inputs"]["data"]
    assert "sentence-transformers" in manifest["versions"]
    curve = json.loads((out / "training_curve.json").read_text())["rounds"][0]
    assert curve["dev"][0]["step"] == 0 and [p["step"] for p in curve["dev"][1:]] == [3, 6, 9, 12]
    assert curve["loss"] and all(p["loss"] > 0 for p in curve["loss"])
    assert manifest["metrics"]["best_dev_ndcg@10"] == max(p["ndcg@10"] for p in curve["dev"][1:])
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "checkpoints").exists() and not list(out.glob(".tmp-*"))

    from embedtune.models import load_model

    tuned = load_model(str(out / "model"))
    assert list((out / "model").glob("*.safetensors")) and tuned.st.encode(["protein cell"]).shape == (1, 32)
    assert _max_diff(_weights(out / "model"), _weights(trainable_model_dir)) > 0

    again = CliRunner().invoke(app, args)  # same config and inputs: done already
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["best_dev_ndcg@10"] == summary["best_dev_ndcg@10"]
    other = CliRunner().invoke(app, args[:-1] + ["--seed", "7"])
    assert other.exit_code == 7 and "another config" in other.output


@pytest.mark.parametrize(
    "loss",
    [{"name": "cached_mnrl", "mini_batch_size": 3}, {"name": "gist"}, {"name": "margin_mse"}, {"name": "listwise_kl"},
     {"name": "mnrl", "matryoshka_dims": [32, 16]}],
    ids=["cached_mnrl", "gist", "margin_mse", "listwise_kl", "matryoshka"],
)
def test_every_loss_trains(tmp_path, trainable_model_dir, loss):
    from embedtune.training import trainer

    data = make_mined(tmp_path / "m", with_ce=True)
    negatives = 1 if loss["name"] == "gist" else 2  # GISTEmbedLoss takes one hard negative at most
    cfg = _cfg(trainable_model_dir, loss=loss, negatives_per_query=negatives, max_steps=3, dev={"enabled": False}, logging_steps=1)
    built = []
    real = trainer.build_loss
    with mock.patch.object(trainer, "build_loss", side_effect=lambda *a, **k: built.append(real(*a, **k)) or built[-1]):
        manifest = train_model(cfg, data, tmp_path / "run", progress=False)
    expected = {"cached_mnrl": "KnownPositivesCachedMNRL", "gist": "GISTEmbedLoss", "margin_mse": "MarginMSELoss",
                "listwise_kl": "DistillKLDivLoss", "mnrl": "MatryoshkaLoss"}[loss["name"]]
    assert [type(b).__name__ for b in built] == [expected]  # the loss asked for, no silent fallback
    if loss["name"] in KNOWN_POSITIVE_LOSSES:  # the masked count reaches the manifest (also through MatryoshkaLoss)
        assert manifest["metrics"]["rows"]["masked_in_batch_known_positives"] >= 0
    if expected == "MatryoshkaLoss":
        assert type(built[0].loss).__name__ in ("KnownPositivesMNRL", "MultipleNegativesRankingLoss")
        assert list(built[0].matryoshka_dims) == [32, 16]
    losses = [p["loss"] for p in manifest["metrics"]["training_curve"]["rounds"][0]["loss"]]
    assert len(losses) == 3 and all(v == v and v >= 0 for v in losses)  # finite, logged every step
    assert _max_diff(_weights(tmp_path / "run" / "model"), _weights(trainable_model_dir)) > 0


@pytest.mark.parametrize("loss_name", ["margin_mse", "listwise_kl"])
def test_teacher_losses_accumulate_micro_batches_to_the_same_step(tmp_path, trainable_model_dir, loss_name):
    """A teacher loss with loss.mini_batch_size below the batch: the batch is embedded in pieces and
    their losses accumulated -- the first step's loss (before any update) is the whole batch's to
    float precision, and clearly not another batch's. Dropout is off (it draws other masks for
    other piece sizes), and weights after a step are no check (Adam divides by the gradient's own
    size, so float noise in a near-zero gradient flips the sign of an update)."""
    from embedtune.training.trainer import micro_batch

    model = tmp_path / "model"
    shutil.copytree(trainable_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    data = make_mined(tmp_path / "m", with_ce=True, distinct=True, n_queries=16)

    def first_loss(batch, mini, name):
        cfg = _cfg(str(model), loss={"name": loss_name, "mini_batch_size": mini}, batch_size=batch, max_steps=1,
                   sampler="random", dev={"enabled": False}, logging_steps=1, precision="fp32")  # bf16 rounds per piece
        manifest = train_model(cfg, data, tmp_path / name, progress=False)
        return micro_batch(cfg), manifest["metrics"]["training_curve"]["rounds"][0]["loss"][0]["loss"]

    micro, whole = first_loss(8, 8, "whole")
    assert micro == 8
    micro, pieces = first_loss(8, 3, "pieces")  # 3 does not divide 8: four pieces of 2 per step
    assert micro == 2
    _, other = first_loss(4, 4, "other")  # half the rows: another mean
    assert abs(whole - pieces) < 1e-4 * abs(whole) and abs(whole - other) > 100 * abs(whole - pieces)
    assert micro_batch(_cfg("unused", loss={"name": "mnrl", "mini_batch_size": 2}, batch_size=8)) == 8  # coupled rows: never


def test_training_batches_are_padded_to_a_multiple_of_32_tokens_and_embed_the_same(trainable_model_dir):
    """The trainer's collator pads every column to a multiple of PAD_TO_MULTIPLE_OF tokens (few shapes:
    resident memory does not grow with each new length), and the padding changes no embedding."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    from embedtune.training.trainer import PAD_TO_MULTIPLE_OF, pad_to_multiple

    model = SentenceTransformer(trainable_model_dir, device="cpu").eval()
    short, long = " ".join(VOCAB_WORDS[:5]), " ".join((VOCAB_WORDS * 3)[:40])
    batch = pad_to_multiple(SentenceTransformerDataCollator(preprocess_fn=model.preprocess))([{"anchor": short, "positive": long}])
    plain = model.preprocess([short])["input_ids"].shape[1]
    assert PAD_TO_MULTIPLE_OF == 32 and plain < 32
    assert batch["anchor_input_ids"].shape[1] == 32 and batch["positive_input_ids"].shape[1] == 64
    assert int(batch["anchor_attention_mask"].sum()) == plain
    with torch.no_grad():
        padded = model({"input_ids": batch["anchor_input_ids"], "attention_mask": batch["anchor_attention_mask"],
                        "token_type_ids": batch["anchor_token_type_ids"]})["sentence_embedding"][0]
    unpadded = torch.as_tensor(model.encode([short], normalize_embeddings=False))[0]
    assert torch.allclose(padded, unpadded, atol=1e-5) and unpadded.abs().max() > 1e-3


def test_early_stopping_fires_and_the_best_checkpoint_is_the_model(tmp_path, trainable_model_dir):
    """A learning rate too high for the model: dev nDCG@10 stops improving, early stopping ends the
    run before max_steps, and the saved model is the best evaluated checkpoint's weights, not the
    last step's (early stopping fires only after evaluations that were not the best)."""
    data = make_mined(tmp_path / "m")
    cfg = _cfg(trainable_model_dir, max_steps=40, learning_rate=0.05, warmup_ratio=0.0, keep_checkpoints=True,
               dev={"eval_steps": 1, "early_stopping_patience": 2})
    manifest = train_model(cfg, data, tmp_path / "run", progress=False)
    dev = [p for p in manifest["metrics"]["training_curve"]["rounds"][0]["dev"] if p["step"] >= 1]  # step 0: the base
    steps = manifest["metrics"]["steps"]
    best = max(dev, key=lambda p: p["ndcg@10"])
    assert steps < 40 and dev[-1]["step"] == steps  # stopped early
    assert best["step"] < steps and all(p["ndcg@10"] <= best["ndcg@10"] for p in dev if p["step"] > best["step"])
    model = _weights(tmp_path / "run" / "model")
    assert _max_diff(model, _weights(tmp_path / "run" / "checkpoints" / f"checkpoint-{best['step']}")) == 0
    assert _max_diff(model, _weights(tmp_path / "run" / "checkpoints" / f"checkpoint-{steps}")) > 0


def test_prompts_are_applied_to_queries_and_documents(tmp_path, trainable_model_dir):
    from transformers import TrainerCallback

    seen = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            seen["prompts"] = args.prompts

    data = make_mined(tmp_path / "m")
    cfg = _cfg(trainable_model_dir, model={"query_prompt": "query: ", "document_prompt": "passage: "}, max_steps=1, dev={"enabled": False})
    train_model(cfg, data, tmp_path / "run", progress=False, callbacks=[Capture()])
    assert seen["prompts"] == {"anchor": "query: ", "positive": "passage: ", "negative_1": "passage: ", "negative_2": "passage: "}


_KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from transformers import TrainerCallback
    from embedtune.training import TrainConfig, train_model

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[4]):
                os.kill(os.getpid(), signal.SIGKILL)  # a crash right after the checkpoint was written

    cfg = TrainConfig.model_validate(json.loads(sys.argv[3]))
    train_model(cfg, sys.argv[1], sys.argv[2], callbacks=[KillAfterCheckpoint()], progress=False)
    """
)


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path, trainable_model_dir):
    data = make_mined(tmp_path / "m")
    # dropout on: resuming must also restore the RNG state
    cfg = _cfg(trainable_model_dir, max_steps=8, logging_steps=1, dev={"eval_steps": 2, "early_stopping_patience": None})
    straight = train_model(cfg, data, tmp_path / "straight", progress=False)

    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "killed"), cfg.model_dump_json(), "4"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "killed" / "model").exists()
    assert json.loads((tmp_path / "killed" / "manifest.json").read_text())["status"] == "running"

    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "train.yaml"), "--mined", str(data), "--out", str(tmp_path / "killed")])
    assert result.exit_code == 7 and "--resume" in result.output  # never silently restarts over a checkpoint
    # a kill while the next checkpoint was being saved leaves a folder without its trainer state
    ckpts = tmp_path / "killed" / "checkpoints"
    cut_short = ckpts / "checkpoint-6"
    shutil.copytree(ckpts / "checkpoint-4", cut_short)
    (cut_short / "trainer_state.json").unlink()
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1

    resumed = train_model(cfg, data, tmp_path / "killed", resume=True, progress=False, callbacks=[CountSteps()])
    assert CountSteps.steps == 4  # from checkpoint-4 (the cut-short checkpoint-6 is dropped) to step 8, not from 0

    assert _max_diff(_weights(tmp_path / "straight" / "model"), _weights(tmp_path / "killed" / "model")) < 1e-6
    a, b = straight["metrics"]["training_curve"]["rounds"][0], resumed["metrics"]["training_curve"]["rounds"][0]
    assert [p["loss"] for p in a["loss"]] == pytest.approx([p["loss"] for p in b["loss"]], abs=1e-6)
    assert a["dev"] == b["dev"]
    assert straight["metrics"]["best_dev_ndcg@10"] == resumed["metrics"]["best_dev_ndcg@10"]


def test_a_crash_after_the_last_step_resumes_without_training_again(tmp_path, trainable_model_dir):
    """The final checkpoint stays until the manifest says complete: a crash in between (here: the
    curve plot) resumes from it, with no optimizer step and the same model."""
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1

    data = make_mined(tmp_path / "m")
    cfg = _cfg(trainable_model_dir, max_steps=4, dev={"enabled": False}, save_steps=2)
    out = tmp_path / "run"
    with mock.patch("embedtune.training.stage.plot_curve", side_effect=RuntimeError("killed")), pytest.raises(RuntimeError):
        train_model(cfg, data, out, progress=False)
    first = _weights(out / "model")
    assert (out / "checkpoints" / "checkpoint-4").is_dir()

    manifest = train_model(cfg, data, out, resume=True, callbacks=[CountSteps()], progress=False)
    assert CountSteps.steps == 0
    assert manifest["status"] == "complete" and manifest["metrics"]["steps"] == 4
    assert _max_diff(first, _weights(out / "model")) == 0
    assert not (out / "checkpoints").exists()


def test_two_rounds_remine_with_the_tuned_model(tmp_path, trainable_model_dir):
    from embedtune.config import build_config
    from embedtune.run_folder import read_manifest
    from embedtune.mining import MineConfig, mine_hard_negatives
    from embedtune.pipeline import remining

    beir = make_mined(tmp_path / "src", n_queries=30).joinpath("beir")
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    with open(beir / "queries.jsonl", "w") as fh:
        for q in range(30):
            fh.write(json.dumps({"_id": f"q{q}", "text": " ".join(docs[q]["text"].split()[:3])}) + "\n")
    (beir / "qrels").mkdir()
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{q}\t1\n" for q in range(30)))
    mine_cfg = build_config(MineConfig, {
        "pairs": f"{beir}:train", "model": {"name": trainable_model_dir, "precision": "fp32"},
        "cache_dir": str(tmp_path / "cache"), "range_max": 20, "num_negatives": 3,
    })
    mine_hard_negatives(mine_cfg, tmp_path / "mined", show_progress=False)

    cfg = _cfg(trainable_model_dir, rounds=2, max_steps=3, dev={"eval_steps": 3})
    manifest = train_model(cfg, tmp_path / "mined", tmp_path / "run", progress=False, remine=remining(tmp_path / "mined"))
    run = tmp_path / "run"
    remined = read_manifest(run / "round-2" / "mined")
    assert remined["stage"] == "mine" and remined["config"]["model"]["name"] == str(run / "round-1" / "model")
    assert remined["config"]["num_negatives"] == 3 and remined["inputs"]["model"] != read_manifest(tmp_path / "mined")["inputs"]["model"]
    assert [r["round"] for r in manifest["metrics"]["rounds"]] == [1, 2] and manifest["metrics"]["steps"] == 6
    assert len(json.loads((run / "training_curve.json").read_text())["rounds"]) == 2
    assert _max_diff(_weights(run / "model"), _weights(run / "round-1" / "model")) > 0


def test_known_positives_are_masked_in_batch_only_when_asked(tmp_path, trainable_model_dir):
    # q_i is also relevant to d_{i+1}, the positive of q_{i+1}: batches then hold known positives.
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 1}": 1} for i in range(20)}
    data = make_mined(tmp_path / "m", n_queries=20, distinct=True, qrels=qrels)
    stats = {}
    for mask in (True, False):
        cfg = _cfg(trainable_model_dir, loss={"name": "mnrl", "mask_known_positives": mask}, batch_size=20, max_steps=2,
                   dev={"enabled": False})
        manifest = train_model(cfg, data, tmp_path / f"run-{mask}", progress=False)
        stats[mask] = manifest["metrics"]["rows"]
    # every batch holds all 20 rows: 19 queries see their second positive in the batch, each of 2 steps
    assert stats[True]["masked_in_batch_known_positives"] == 2 * 19
    assert "masked_in_batch_known_positives" not in stats[False]


@pytest.mark.parametrize("progress", [True, False])
def test_training_reports_loss_in_embedtune_log_lines_not_raw_dicts(tmp_path, trainable_model_dir, capsys, caplog, progress):
    """One voice: no ``{'loss': ...}`` dicts from transformers on stdout or stderr (with progress
    off it would print them to stdout, breaking --json); with progress, one log line per step."""
    import logging

    data = make_mined(tmp_path / "m")
    cfg = _cfg(trainable_model_dir, max_steps=2, dev={"enabled": False}, logging_steps=1)
    with caplog.at_level(logging.INFO, logger="embedtune"):
        train_model(cfg, data, tmp_path / "run", progress=progress)
    out = capsys.readouterr()
    assert "'loss'" not in out.out and "'loss'" not in out.err
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps == (["step 1/2: " + steps[0].split(": ", 1)[1], "step 2/2: " + steps[1].split(": ", 1)[1]] if progress else [])
    assert not progress or all("loss " in s for s in steps)


def test_attention_dropout_setting_reaches_every_attention_layer(tmp_path, trainable_model_dir):
    """train.attention_dropout: 0 (the default) switches off the dropout on attention probabilities
    (what keeps torch's fused attention from running) in every layer, and the saved config says so;
    null keeps the model's own."""
    data = make_mined(tmp_path / "m")
    own = json.loads((Path(trainable_model_dir) / "config.json").read_text())["attention_probs_dropout_prob"]
    assert own > 0
    for setting, expected in ((None, own), ("default", 0.0)):
        extra = {} if setting == "default" else {"attention_dropout": setting}
        cfg = _cfg(trainable_model_dir, max_steps=1, dev={"enabled": False}, **extra)
        train_model(cfg, data, tmp_path / f"run-{setting}", progress=False)
        saved = json.loads((tmp_path / f"run-{setting}" / "model" / "config.json").read_text())
        assert saved["attention_probs_dropout_prob"] == expected and saved["hidden_dropout_prob"] > 0
    from sentence_transformers import SentenceTransformer

    from embedtune.training.trainer import set_attention_dropout

    model = SentenceTransformer(trainable_model_dir, device="cpu")
    layers = model[0].auto_model.config.num_hidden_layers
    assert set_attention_dropout(model, 0.0) == layers
    assert all(m.dropout.p == 0.0 for m in model.modules() if type(m).__name__.endswith("SelfAttention"))
