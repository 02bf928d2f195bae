"""Fine-tune an embedding model on mined (query, positive, hard negatives) rows.

Built on sentence-transformers' ``SentenceTransformerTrainer`` (which is the transformers
``Trainer``): its losses, its no-duplicates batch sampler, its ``InformationRetrievalEvaluator``
for dev nDCG@10 at each evaluation step, its checkpoints and resume. This module adds what the
trainer lacks for a retrieval pipeline: turning mined rows into trainer columns (``anchor``,
``positive``, ``negative_1..n``), a dev split that never touches the test split (a BEIR dev split,
or a seeded held-out slice of the training queries evaluated against the full corpus), the run
folder (manifest, ``training_curve.json`` + PNG, the final model saved atomically into
``DIR/model``), and iterative re-mining (ANCE-style ``rounds``).

Run folder ``DIR``::

    DIR/manifest.json          stage "train": config, input hashes, versions, best dev score, curve
    DIR/model/                 the tuned sentence-transformers folder (safetensors), written atomically
    DIR/checkpoints/           the trainer's checkpoints (resume after a crash with --resume)
    DIR/training_curve.json    training loss and dev nDCG@10 per logged / evaluation step
    DIR/training_curve.png
    DIR/round-<r>/             with rounds > 1: the re-mined data and checkpoints of round r

Multi-GPU (data parallel, DDP) -- launch the same command under torchrun or accelerate::

    torchrun --nproc_per_node 4 -m embedtune train --model minilm --data MINED --out DIR
    accelerate launch --num_processes 4 -m embedtune train --model minilm --data MINED --out DIR

``batch_size`` is per device (global batch = batch_size x processes). With ``loss.
gather_across_devices`` (default) every device's queries are scored against the documents of the
whole global batch, so in-batch negatives grow with the number of devices and the loss equals a
single-process run with the global batch (checked on CPU with gloo in ``tests/test_ddp.py``).
Only rank 0 writes the manifest, the curve and the final model. On CPU the gloo backend is used.
The CUDA path (device placement, bf16/fp16 autocast, larger batches) is written but has not been
run on a GPU here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .config import ModelConfig, Precision, StrictModel
from .corpus import load_beir, load_corpus, parse_benchmark_source, read_jsonl
from .errors import ConfigError, InputError, RunDirError
from .io import TMP_PREFIX, atomic_write_json, atomic_write_with, save_model_atomically
from .encoding import cpu_has_bf16
from .losses import LossConfig, build_loss
from .manifest import hash_path, prepare_run_folder, read_manifest, stage_key, write_manifest

log = logging.getLogger("embedtune")

STAGE = "train"
DEV_NAME = "dev"
NDCG_KEY = f"eval_{DEV_NAME}_cosine_ndcg@10"  # what InformationRetrievalEvaluator logs, see _dev_evaluator
REQUIRED_COLUMNS = ("query_id", "query", "positive_id", "positive", "negative_ids", "negatives")


class DevConfig(StrictModel):
    """Evaluation during training: never on the test split."""

    enabled: bool = True
    source: str | None = Field(
        None,
        description="A BEIR dev split such as 'nfcorpus:dev'. Unset: hold out a seeded slice of the training queries.",
    )
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of training query ids held out when no source.")
    max_queries: int | None = Field(None, gt=0, description="Evaluate at most this many dev queries (seeded sample).")
    corpus_max_docs: int | None = Field(
        None, gt=0,
        description="Evaluate against a seeded sample of the corpus (always keeping the dev queries' relevant and "
        "mined negative documents) to make each evaluation cheaper. Unset: the full corpus.",
    )
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps. Unset: 'evaluations' times per run.")
    evaluations: int = Field(4, gt=0, description="How many evaluations over the run when eval_steps is unset.")
    early_stopping_patience: int | None = Field(
        3, gt=0, description="Stop after this many evaluations without a better dev nDCG@10. Unset: never."
    )


class TrainConfig(StrictModel):
    """The train stage: model, loss, data shaping, optimisation, dev evaluation."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    negatives_per_query: int = Field(1, ge=0, le=64, description="Hard negatives per row fed to the loss.")
    short_rows: Literal["pad", "drop"] = Field(
        "pad",
        description="Rows with fewer mined negatives than negatives_per_query: 'pad' with random documents from "
        "other rows (never a known positive of the query), or 'drop' them. margin_mse always drops.",
    )
    max_pairs_per_query: int | None = Field(
        None, gt=0, description="Keep at most N positives per query, highest relevance grade first (e.g. NFCorpus)."
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, gt=0, description="Rows per step per device (in-batch negatives come from these).")
    learning_rate: float = Field(2e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup", "polynomial"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, ~30% slower.")
    precision: Precision = Field(
        "auto", description="Training autocast: 'auto' = bf16/fp16 on CUDA, see AUTO_CPU_PRECISION for CPU."
    )
    sampler: Literal["no_duplicates", "random"] = Field(
        "no_duplicates", description="no_duplicates: a text never appears twice in a batch (no false in-batch negatives)."
    )
    seed: int = 42
    dev: DevConfig = DevConfig()
    save_steps: int | None = Field(None, gt=0, description="Checkpoint interval without dev evaluation (default: 100).")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept (plus the best one).")
    keep_checkpoints: bool = Field(False, description="Keep DIR/checkpoints after the final model is saved.")
    logging_steps: int = Field(10, gt=0)
    rounds: int = Field(1, ge=1, le=5, description="ANCE-style: re-mine negatives with the tuned model and train again.")
    side: Literal["both", "query"] = Field(
        "both", description="both: fine-tune the encoder (documents must be re-encoded). query: train a linear adapter on "
        "the query embedding only; documents keep the base model's vectors, so existing indexes stay valid "
        "(embedtune.query_side; loss mnrl over the whole corpus, best epoch on dev).",
    )
    query_side: Literal["adapter", "encoder"] = Field(
        "adapter", description="side query: adapter = a linear map on the query embedding (seconds; try learning_rate "
        "1e-3); encoder = a trainable copy of the encoder for queries only (minutes; learning_rate ~3e-5).",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.loss.name == "margin_mse" and self.negatives_per_query < 1:
            raise ValueError("loss margin_mse needs negatives_per_query >= 1")
        if self.loss.name == "gist" and self.negatives_per_query > 1:
            raise ValueError("loss gist takes (query, positive) pairs or one hard negative: set negatives_per_query to 0 or 1")
        if self.side == "query" and (self.loss.name != "mnrl" or self.rounds > 1 or self.loss.matryoshka_dims):
            raise ValueError("side 'query' trains a query adapter with loss mnrl, one round, no matryoshka_dims")
        if self.precision == "fp16":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        return self


# precision="auto" for training on CPU (where the CPU has native bf16; otherwise fp32). bf16
# autocast is 2.2x faster per step on this Zen 5 CPU (eval/results/training_precision.json) and
# trains models as good as fp32: the full SciFact recipe (configs/scifact.yaml) gave tuned nDCG@10
# 0.7092 in bf16 vs 0.7083 in fp32 (train 20 vs 34 min), the demo recipe 0.6948 vs 0.6945.
AUTO_CPU_PRECISION = "bf16"


# --------------------------------------------------------------------------- mined data


LIGHT_COLUMNS = ("query_id", "query", "positive_id", "negative_ids")  # read whole; document texts only per selected row


@dataclass
class MinedData:
    """A mined dataset folder: ids and queries in memory, document texts read per selected row
    (NFCorpus mines 110k rows x 8 negatives; most are never trained on)."""

    folder: Path
    columns: dict[str, list]  # LIGHT_COLUMNS, one value per row
    dataset: Any  # datasets.Dataset with every column
    manifest: dict[str, Any] | None
    qrels: dict[str, dict[str, int]] | None  # graded judgements mining copied from a BEIR source
    source: Path  # the file or folder the rows came from (for error messages and hashes)

    @property
    def num_rows(self) -> int:
        return len(self.columns["query_id"])

    @property
    def has_teacher_scores(self) -> bool:
        return "teacher_positive_score" in self.dataset.column_names

    def texts(self, indices: list[int]) -> dict[str, list]:
        """``positive``, ``negatives`` (+ teacher scores) of the rows ``indices``, checked."""
        names = ["positive", "negatives"] + (["teacher_positive_score", "teacher_negative_scores"] if self.has_teacher_scores else [])
        part = self.dataset.select(indices).select_columns(names).to_dict()
        for k, i in enumerate(indices):
            try:
                _check_texts(part, k, len(self.columns["negative_ids"][i]))
            except InputError as err:
                raise InputError(f"row {i + 1}: {err.message}", file=self.source, field=err.field) from None
        return part


def load_mined(folder: str | Path) -> MinedData:
    """Read ``MINED/dataset`` (or ``MINED/pairs.jsonl``) and check the contract's columns."""
    from datasets import Dataset, load_from_disk

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("mined data folder not found (run 'embedtune mine' first)", file=folder)
    ds_dir = folder / "dataset"
    if ds_dir.is_dir():
        source = ds_dir
        try:
            dataset = load_from_disk(str(ds_dir))
        except Exception as err:
            raise InputError(f"cannot read the saved dataset ({type(err).__name__})", file=ds_dir) from None
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
        if missing:
            raise InputError(f"missing column(s) {missing}; columns are {dataset.column_names}", file=ds_dir, field=missing[0])
        columns = dataset.select_columns(list(LIGHT_COLUMNS)).to_dict()
        for i in range(len(columns["query_id"])):
            try:
                _check_ids(columns, i)
            except InputError as err:
                raise InputError(f"row {i + 1}: {err.message}", file=ds_dir, field=err.field) from None
    elif (folder / "pairs.jsonl").is_file():
        source = folder / "pairs.jsonl"
        everything = _read_pairs_jsonl(source)
        dataset = Dataset.from_dict(everything)
        columns = {name: everything[name] for name in LIGHT_COLUMNS}
    else:
        raise InputError("neither dataset/ nor pairs.jsonl found in the mined data folder", file=folder)
    if not columns["query_id"]:
        raise InputError("no rows", file=source)
    qrels = None
    if (folder / "qrels.json").is_file():
        try:
            raw = json.loads((folder / "qrels.json").read_text(encoding="utf-8"))
            qrels = {str(q): {str(d): int(s) for d, s in docs.items()} for q, docs in raw.items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise InputError("expected {query id: {doc id: grade}}", file=folder / "qrels.json") from None
    return MinedData(folder=folder, columns=columns, dataset=dataset, manifest=read_manifest(folder), qrels=qrels, source=source)


def _read_pairs_jsonl(path: Path) -> dict[str, list]:
    columns: dict[str, list] = {c: [] for c in REQUIRED_COLUMNS}
    has_teacher = None
    for lineno, obj in read_jsonl(path):
        for name in REQUIRED_COLUMNS:
            if name not in obj:
                raise InputError("missing", file=path, line=lineno, field=name)
            columns[name].append(obj[name])
        row_has_teacher = "teacher_positive_score" in obj
        if has_teacher is None:
            has_teacher = row_has_teacher
            if has_teacher:
                columns["teacher_positive_score"], columns["teacher_negative_scores"] = [], []
        if row_has_teacher != has_teacher:
            raise InputError("teacher_positive_score present on some rows only", file=path, line=lineno, field="teacher_positive_score")
        if has_teacher:
            columns["teacher_positive_score"].append(obj["teacher_positive_score"])
            columns["teacher_negative_scores"].append(obj.get("teacher_negative_scores"))
        i = len(columns["query_id"]) - 1
        try:
            _check_ids(columns, i)
            _check_texts(columns, i, len(columns["negative_ids"][i]))
        except InputError as err:
            raise InputError(err.message, file=path, line=lineno, field=err.field) from None
    return columns


def _check_ids(columns: dict[str, list], i: int) -> None:
    for name in ("query_id", "query", "positive_id"):
        value = columns[name][i]
        if not isinstance(value, str) or not value.strip():
            raise InputError("must be a non-empty string", field=name)
    ids = columns["negative_ids"][i]
    if not isinstance(ids, list) or not all(isinstance(d, str) and d for d in ids):
        raise InputError("must be a list of document ids", field="negative_ids")


def _check_texts(columns: dict[str, list], i: int, n_negatives: int) -> None:
    positive, texts = columns["positive"][i], columns["negatives"][i]
    if not isinstance(positive, str) or not positive.strip():
        raise InputError("must be a non-empty string", field="positive")
    if not isinstance(texts, list) or len(texts) != n_negatives:
        raise InputError("negatives and negative_ids must be lists of the same length", field="negatives")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise InputError("must be a list of non-empty strings", field="negatives")
    if "teacher_negative_scores" in columns:
        ce = columns["teacher_negative_scores"][i]
        if not isinstance(ce, list) or len(ce) != n_negatives:
            raise InputError("must be a list with one score per negative", field="teacher_negative_scores")


# --------------------------------------------------------------------------- dev split


@dataclass
class DevSplit:
    """Dev queries, their relevant documents and the corpus they are searched in."""

    queries: dict[str, str]
    relevant: dict[str, set[str]]
    corpus: dict[str, str]
    description: str
    exclude_query_ids: set[str] = field(default_factory=set)  # rows of these queries are not trained on


def make_dev_split(data: MinedData, cfg: TrainConfig) -> DevSplit | None:
    """A BEIR dev split (``dev.source``) or a seeded held-out slice of the training queries."""
    dev = cfg.dev
    if not dev.enabled:
        return None
    rng = random.Random(cfg.seed)
    if dev.source:
        folder, split = parse_benchmark_source(dev.source)
        if split == "test":
            raise ConfigError("the dev split must not be the test split (choose e.g. 'nfcorpus:dev')", field="dev.source")
        beir = load_beir(folder, split)
        queries = dict(beir.queries)
        relevant = {q: {d for d, s in docs.items() if s > 0} for q, docs in beir.qrels.items()}
        corpus = {doc_id: doc.full_text for doc_id, doc in beir.corpus.items()}
        description = f"{folder}:{split}"
        exclude = set(queries)
    else:
        qids = sorted(set(data.columns["query_id"]))
        if len(qids) < 2:
            raise ConfigError("holding out dev queries needs at least 2 distinct queries; set dev.enabled: false", field="dev")
        n_hold = max(1, min(len(qids) - 1, round(dev.holdout_fraction * len(qids))))
        held = set(rng.sample(qids, n_hold))
        queries, relevant = {}, {}
        for qid, query, pid in zip(data.columns["query_id"], data.columns["query"], data.columns["positive_id"]):
            if qid in held:
                queries[qid] = query
                relevant.setdefault(qid, set()).add(pid)
        if data.qrels:  # all graded positives mining knew of, not only the rows it kept
            for qid in held:
                relevant[qid] |= {d for d, s in data.qrels.get(qid, {}).items() if s > 0}
        corpus, corpus_desc = _mined_corpus(data)
        description = f"{n_hold} held-out training queries ({dev.holdout_fraction:.0%}, seed {cfg.seed}) against {corpus_desc}"
        exclude = held
    relevant = {q: r for q, r in relevant.items() if q in queries and r}
    if dev.max_queries and len(relevant) > dev.max_queries:
        keep = set(rng.sample(sorted(relevant), dev.max_queries))
        relevant = {q: r for q, r in relevant.items() if q in keep}
        description += f", {dev.max_queries} sampled"
    queries = {q: queries[q] for q in relevant}
    missing = {d for r in relevant.values() for d in r} - set(corpus)
    if missing:
        raise InputError(f"{len(missing)} relevant document id(s) of dev queries are not in the corpus (e.g. '{sorted(missing)[0]}')", field="positive_id")
    if dev.corpus_max_docs and len(corpus) > dev.corpus_max_docs:
        corpus = _sample_corpus(corpus, relevant, data, queries, dev.corpus_max_docs, rng)
        description += f", corpus sampled to {len(corpus)} docs"
    return DevSplit(queries=queries, relevant=relevant, corpus=corpus, description=description, exclude_query_ids=exclude)


def _mined_corpus(data: MinedData) -> tuple[dict[str, str], str]:
    """The corpus mining searched (``config.corpus`` of its manifest), plus any mined text it lacks."""
    corpus: dict[str, str] = {}
    desc = "the mined documents only (no corpus in the mining manifest)"
    mine_cfg = (data.manifest or {}).get("config", {})
    if mine_cfg.get("corpus"):
        path = Path(mine_cfg["corpus"])
        if not path.exists():
            path = parse_benchmark_source(mine_cfg["corpus"])[0]
        docs = load_corpus(
            path, id_field=mine_cfg.get("id_field", "_id"), title_field=mine_cfg.get("title_field", "title"),
            text_field=mine_cfg.get("text_field", "text"),
        )
        corpus = {doc_id: doc.full_text for doc_id, doc in docs.items()}
        desc = f"the full corpus {path} ({len(corpus):,} docs)"
    # Mined documents the corpus lacks (positives given as text in a pairs file) keep their mined text.
    c = data.columns
    wanted = set(c["positive_id"]).union(*map(set, c["negative_ids"])) - set(corpus)
    if wanted:
        rows = [i for i, (pid, negs) in enumerate(zip(c["positive_id"], c["negative_ids"])) if pid in wanted or wanted & set(negs)]
        texts = data.texts(rows)
        for k, i in enumerate(rows):
            corpus.setdefault(c["positive_id"][i], texts["positive"][k])
            for doc_id, text in zip(c["negative_ids"][i], texts["negatives"][k]):
                corpus.setdefault(doc_id, text)
    return corpus, desc


def _query_positives(data: MinedData, exclude: set[str], corpus: dict[str, str]) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Training queries and the ids of every document judged relevant to each (rows mining kept +
    graded qrels), the ``exclude`` (dev) queries left out: what the query side trains on."""
    c = data.columns
    queries: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for qid, query, pid in zip(c["query_id"], c["query"], c["positive_id"]):
        if qid not in exclude:
            queries.setdefault(qid, query)
            relevant.setdefault(qid, set()).add(pid)
    for qid, docs in (data.qrels or {}).items():
        if qid in relevant:
            relevant[qid] |= {d for d, s in docs.items() if s > 0}
    missing = sorted({d for r in relevant.values() for d in r} - set(corpus))
    if missing:
        raise InputError(f"{len(missing)} positive document id(s) are not in the mined corpus (e.g. '{missing[0]}')",
                         file=data.source, field="positive_id")
    return queries, relevant


def _sample_corpus(corpus, relevant, data: MinedData, queries, max_docs: int, rng: random.Random) -> dict[str, str]:
    keep = {d for r in relevant.values() for d in r}
    for qid, neg_ids in zip(data.columns["query_id"], data.columns["negative_ids"]):
        if qid in queries:
            keep.update(d for d in neg_ids if d in corpus)
    others = sorted(set(corpus) - keep)
    keep.update(rng.sample(others, max(0, min(len(others), max_docs - len(keep)))))
    return {d: corpus[d] for d in corpus if d in keep}


# --------------------------------------------------------------------------- trainer columns


@dataclass
class TrainRows:
    columns: dict[str, list]  # anchor, positive, negative_1..n, [label]
    stats: dict[str, int]
    query_ids: list[str] = field(default_factory=list)  # per row
    doc_ids: list[list[str]] = field(default_factory=list)  # per row: positive, negative_1..n
    known_positives: dict[str, set[str]] = field(default_factory=dict)  # query id -> relevant document ids


def build_train_rows(data: MinedData, cfg: TrainConfig, exclude_query_ids: set[str] = frozenset()) -> TrainRows:
    """Mined rows -> trainer columns ``anchor, positive, negative_1..n`` (+ ``label`` for margin_mse).

    Rows of ``exclude_query_ids`` (dev queries) are left out; ``max_pairs_per_query`` keeps the
    highest-graded positives of each query; rows with fewer than ``negatives_per_query`` negatives
    are padded with random documents from other rows or dropped (``short_rows``).
    """
    c = data.columns
    rng = random.Random(cfg.seed)
    n_neg = cfg.negatives_per_query
    use_teacher = cfg.loss.name == "margin_mse"
    if use_teacher and not data.has_teacher_scores:
        raise ConfigError(
            "loss margin_mse needs teacher scores (teacher_positive_score, teacher_negative_scores) in the mined data; "
            "mine with a teacher (mine.cross_encoder or mine.hybrid_teacher) or choose another loss", field="loss.name",
        )
    stats = {"mined_rows": data.num_rows, "dev_rows_excluded": 0, "capped_rows": 0, "padded_rows": 0, "dropped_short_rows": 0}

    by_query: dict[str, list[int]] = {}
    for i, qid in enumerate(c["query_id"]):
        if qid in exclude_query_ids:
            stats["dev_rows_excluded"] += 1
            continue
        by_query.setdefault(qid, []).append(i)
    if cfg.max_pairs_per_query:
        grades = data.qrels or {}
        for qid, rows in by_query.items():
            if len(rows) > cfg.max_pairs_per_query:
                rng.shuffle(rows)  # ties among equal grades are broken at random (seeded)
                rows.sort(key=lambda i: -grades.get(qid, {}).get(c["positive_id"][i], 1))
                stats["capped_rows"] += len(rows) - cfg.max_pairs_per_query
                del rows[cfg.max_pairs_per_query:]
    selected = sorted(i for rows in by_query.values() for i in rows)

    texts = data.texts(selected)  # document texts of the selected rows only
    known_positives: dict[str, set[str]] = {}
    for i in selected:
        known_positives.setdefault(c["query_id"][i], set()).add(c["positive_id"][i])
    for qid, docs in (data.qrels or {}).items():
        known_positives.setdefault(qid, set()).update(d for d, s in docs.items() if s > 0)
    pool_text: dict[str, str] = {}  # padding candidates: the positives of the training rows
    for k, i in enumerate(selected):
        pool_text.setdefault(c["positive_id"][i], texts["positive"][k])
    pool_ids = list(pool_text)

    out: dict[str, list] = {"anchor": [], "positive": []}
    row_query_ids: list[str] = []
    row_doc_ids: list[list[str]] = []
    for n in range(1, n_neg + 1):
        out[f"negative_{n}"] = []
    if use_teacher:
        out["label"] = []
    for k, i in enumerate(selected):
        qid = c["query_id"][i]
        negs = list(zip(c["negative_ids"][i], texts["negatives"][k]))[:n_neg]
        if len(negs) < n_neg:
            padding = None if use_teacher or cfg.short_rows == "drop" else _padding(
                pool_ids, {d for d, _ in negs} | known_positives.get(qid, set()), n_neg - len(negs), rng
            )
            if padding is None:
                stats["dropped_short_rows"] += 1
                continue
            negs += [(d, pool_text[d]) for d in padding]
            stats["padded_rows"] += 1
        out["anchor"].append(c["query"][i])
        out["positive"].append(texts["positive"][k])
        row_query_ids.append(qid)
        row_doc_ids.append([c["positive_id"][i]] + [d for d, _ in negs])
        for n, (_, text) in enumerate(negs, start=1):
            out[f"negative_{n}"].append(text)
        if use_teacher:
            scores = texts["teacher_negative_scores"][k][:n_neg]
            out["label"].append([float(texts["teacher_positive_score"][k])] + [float(v) for v in scores])
    stats["train_rows"] = len(out["anchor"])
    if not out["anchor"]:
        raise InputError("no training rows left after holding out dev queries and dropping short rows", file=data.source)
    return TrainRows(columns=out, stats=stats, query_ids=row_query_ids, doc_ids=row_doc_ids, known_positives=known_positives)


def _padding(pool: list[str], taken: set[str], n: int, rng: random.Random) -> list[str] | None:
    """``n`` distinct random ids from ``pool`` that are not in ``taken`` (None if there are not enough)."""
    chosen: list[str] = []
    for _ in range(20 * n):  # rejection sampling: the pool is large next to what a query excludes
        d = pool[rng.randrange(len(pool))]
        if d not in taken and d not in chosen:
            chosen.append(d)
            if len(chosen) == n:
                return chosen
    rest = [d for d in pool if d not in taken and d not in chosen]  # small pools: draw from what is left
    if len(rest) < n - len(chosen):
        return None
    return chosen + rng.sample(rest, n - len(chosen))


# --------------------------------------------------------------------------- training


def resolve_precision(precision: str) -> str:
    """'auto' -> what was measured to be best for training on this device."""
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if AUTO_CPU_PRECISION == "bf16" and not cpu_has_bf16():
        return "fp32"
    return AUTO_CPU_PRECISION


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def steps_per_epoch(num_rows: int, batch_size: int, world: int) -> int:
    """Optimizer steps in one pass (the trainer drops the last uneven batch under DDP only)."""
    global_batch = batch_size * world
    return num_rows // global_batch if world > 1 else math.ceil(num_rows / global_batch)


def _dev_evaluator(dev: DevSplit, model_cfg: ModelConfig, precision: str):
    import torch
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    class AutocastIREvaluator(InformationRetrievalEvaluator):
        """Encodes dev queries and corpus in the training precision: the trainer's autocast does
        not cover evaluators, and in fp32 each evaluation of a CPU run costs as much as ~3x more."""

        def __call__(self, model, *args, **kwargs):
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            with torch.autocast(device_type=model.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                return super().__call__(model, *args, **kwargs)

    return AutocastIREvaluator(
        queries=dev.queries, corpus=dev.corpus, relevant_docs=dev.relevant, name=DEV_NAME,
        batch_size=model_cfg.batch_size, score_functions={"cosine": cos_sim}, main_score_function="cosine",
        query_prompt=model_cfg.query_prompt or None, corpus_prompt=model_cfg.document_prompt or None,
        write_csv=False, show_progress_bar=False,
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100], map_at_k=[100],
    )


def _prompts(columns: list[str], model_cfg: ModelConfig) -> dict[str, str] | None:
    if not (model_cfg.query_prompt or model_cfg.document_prompt):
        return None
    return {col: model_cfg.query_prompt if col == "anchor" else model_cfg.document_prompt for col in columns if col != "label"}


def _training_args(cfg: TrainConfig, ckpt_dir: Path, *, num_rows: int, dev: bool, progress: bool, prompts: dict[str, str] | None):
    import torch
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import SentenceTransformerTrainingArguments

    world = world_size()
    per_epoch = steps_per_epoch(num_rows, cfg.batch_size, world)
    if per_epoch < 1:
        raise ConfigError(f"{num_rows} training rows are fewer than one global batch ({cfg.batch_size} x {world})", field="batch_size")
    total = cfg.max_steps or math.ceil(per_epoch * cfg.epochs)
    eval_steps = cfg.dev.eval_steps or max(1, total // cfg.dev.evaluations)
    save_steps = eval_steps if dev else (cfg.save_steps or 100)  # load_best_model_at_end needs save == eval steps
    precision = resolve_precision(cfg.precision)
    cuda = torch.cuda.is_available()
    return SentenceTransformerTrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # transformers >= 5: a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        max_grad_norm=cfg.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        batch_sampler=BatchSamplers.NO_DUPLICATES if cfg.sampler == "no_duplicates" else BatchSamplers.BATCH_SAMPLER,
        prompts=prompts,  # the data collator prefixes each column's texts
        eval_strategy="steps" if dev else "no",
        eval_steps=eval_steps if dev else None,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=dev,
        metric_for_best_model=NDCG_KEY if dev else None,
        greater_is_better=True if dev else None,
        # Early stopping's patience counter lives in a callback: restore it so a resumed run stops
        # where the uninterrupted one would.
        restore_callback_states_from_checkpoint=True,
        logging_steps=min(cfg.logging_steps, eval_steps),
        logging_first_step=True,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,  # also what makes accelerate run multi-process CPU training (gloo) as DDP
        ddp_backend=("nccl" if cuda else "gloo") if world > 1 else None,
        dataloader_drop_last=world > 1,
        disable_tqdm=not progress,
    )


@dataclass
class RoundResult:
    model_dir: Path
    best_dev: float | None
    base_dev: float | None
    curve: dict[str, list]
    steps: int
    stats: dict[str, int]
    dev_description: str | None
    seconds: float


def _trainer_state(checkpoint: str | Path) -> dict[str, Any] | None:
    """A checkpoint's trainer state, or None when the checkpoint is incomplete. The trainer writes
    trainer_state.json last (after weights, optimizer, scheduler and RNG states), with a plain
    open/write: a missing or cut-short state file means the run died while saving."""
    try:
        return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_final_step(state: dict[str, Any]) -> bool:
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def _last_checkpoint(ckpt_dir: Path, *, drop_incomplete: bool = False) -> str | None:
    """The newest complete checkpoint in ``ckpt_dir``. transformers' ``get_last_checkpoint`` takes
    the newest folder even when a kill cut its saving short, and resuming from it then fails; with
    ``drop_incomplete`` such folders are removed so the trainer saves them afresh."""
    if not ckpt_dir.is_dir():
        return None
    steps = []
    for path in ckpt_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        if _trainer_state(path) is not None:
            return str(path)
        if drop_incomplete:
            log.warning("%s was cut short while being saved: removed, resuming from the one before", path)
            shutil.rmtree(path)
    return None


def _log_in_one_voice(trainer, progress: bool) -> None:
    """transformers' own loss reporting -- a tqdm bar with raw ``{'loss': ...}`` dicts written under
    it, or ``print(dict)`` to stdout when the bar is off -- replaced by one embedtune log line per
    logging step (when ``progress``), through the same rich handler as every other stage."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    class LossLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                log.info("step %d/%d: loss %.4f, learning rate %.3g", state.global_step, state.max_steps,
                         float(logs["loss"]), float(logs.get("learning_rate", 0.0)))

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(LossLines())


def train_round(
    model_name: str,
    data: MinedData,
    cfg: TrainConfig,
    work_dir: Path,
    model_dir: Path,
    *,
    resume: bool,
    callbacks: list | None = None,
    progress: bool = True,
) -> RoundResult:
    """One training run: ``model_name`` on ``data``; checkpoints in ``work_dir/checkpoints``,
    the final (best-on-dev) model saved atomically into ``model_dir``."""
    import torch
    import transformers
    from datasets import Dataset
    from sentence_transformers.sentence_transformer import SentenceTransformerTrainer
    from transformers import EarlyStoppingCallback

    from .models import load_model

    started = time.time()
    transformers.set_seed(cfg.seed)  # python, numpy, torch (model init of new heads, dropout)
    dev = make_dev_split(data, cfg)
    rows = build_train_rows(data, cfg, dev.exclude_query_ids if dev else set())
    known = None
    if cfg.loss.name == "mnrl" and cfg.loss.mask_known_positives:
        from .masked_mnrl import KnownPositives

        known = KnownPositives.from_ids(rows.query_ids, rows.doc_ids, rows.known_positives)
        rows.columns["label"] = list(range(len(rows.query_ids)))  # row index: the loss looks its ids up
    train_ds = Dataset.from_dict(rows.columns)

    model_cfg = cfg.model.model_copy(update={"name": model_name})
    model = load_model(model_cfg)
    guide = load_model(model_cfg) if cfg.loss.name == "gist" else None
    loss = build_loss(model, cfg.loss, guide=guide, distributed=world_size() > 1, known_positives=known)

    ckpt_dir = work_dir / "checkpoints"
    checkpoint = _last_checkpoint(ckpt_dir, drop_incomplete=True) if resume else None
    if resume and checkpoint is None:
        log.info("no checkpoint in %s: starting from the beginning", ckpt_dir)
    elif not resume and _last_checkpoint(ckpt_dir):
        raise RunDirError("holds checkpoints of an interrupted run: pass --resume to continue it or --overwrite to start over", file=ckpt_dir)
    args = _training_args(
        cfg, ckpt_dir, num_rows=len(train_ds), dev=dev is not None, progress=progress,
        prompts=_prompts(train_ds.column_names, cfg.model),
    )
    evaluator = _dev_evaluator(dev, cfg.model, resolve_precision(cfg.precision)) if dev else None
    all_callbacks = list(callbacks or [])
    if dev and cfg.dev.early_stopping_patience:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.dev.early_stopping_patience))
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train_ds, loss=loss, evaluator=evaluator, callbacks=all_callbacks,
    )
    _log_in_one_voice(trainer, progress)
    log.info(
        "training on %s rows (%s negatives each), %s; dev: %s",
        f"{len(train_ds):,}", cfg.negatives_per_query, _describe_steps(args), dev.description if dev else "none",
    )
    base = _base_dev_score(evaluator, model, work_dir, fresh=checkpoint is None) if dev else None
    if checkpoint and _is_final_step(_trainer_state(checkpoint) or {}):
        # transformers resumes a run whose last checkpoint is its final step with one step too many
        # (it checks max_steps only after a step): finish from the checkpoint instead of training
        from transformers import TrainerState

        log.info("%s is the final step: finishing the round from it", checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        keep = trainer.state.best_model_checkpoint if args.load_best_model_at_end else None
        weights_dir = keep if keep and Path(keep).is_dir() else checkpoint
        loaded = type(trainer.model)(str(weights_dir), device="cpu", local_files_only=True)
        trainer.model.load_state_dict(loaded.state_dict())
        del loaded
    else:
        # The trainer prints its log dicts on stdout; keep stdout for the --json line.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train(resume_from_checkpoint=checkpoint)
    trainer.accelerator.wait_for_everyone()

    curve = training_curve(trainer.state.log_history, base_dev=base)
    best = trainer.state.best_metric if dev else None
    if best is not None and base is not None and best <= base:
        log.warning("training did not improve dev nDCG@10 over the base model (%.4f -> best %.4f)", base, best)
    if trainer.is_world_process_zero():
        save_model_atomically(trainer.model, model_dir)
    trainer.accelerator.wait_for_everyone()
    masked = getattr(getattr(loss, "loss", loss), "masked_candidates", None)  # MatryoshkaLoss wraps it in .loss
    if masked is not None:  # steps run by this process since its start (a resumed run counts from there)
        rows.stats["masked_in_batch_known_positives"] = masked
        log.info("in-batch documents masked as known positives of their query: %s", f"{masked:,}")
    del trainer, loss, guide
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return RoundResult(
        model_dir=model_dir, best_dev=best, base_dev=base, curve=curve, steps=curve["steps"], stats=rows.stats,
        dev_description=dev.description if dev else None, seconds=time.time() - started,
    )


def _describe_steps(args) -> str:
    if args.max_steps and args.max_steps > 0:
        return f"{args.max_steps} steps"
    return f"{args.num_train_epochs:g} epoch(s)"


def _base_dev_score(evaluator, model, work_dir: Path, *, fresh: bool) -> float:
    """The untrained model's dev nDCG@10 (step 0 of the curve), kept in ``dev_base.json`` so a
    resumed run does not recompute it. Evaluated outside the trainer so that step 0 never counts
    as the "best checkpoint" (there is no checkpoint of it to load at the end)."""
    path = work_dir / "dev_base.json"
    if not fresh and path.is_file():
        return float(json.loads(path.read_text())["ndcg@10"])
    with contextlib.redirect_stdout(sys.stderr):
        metrics = evaluator(model)
    score = float(metrics[f"{DEV_NAME}_cosine_ndcg@10"])
    if is_main_process():
        atomic_write_json(path, {"ndcg@10": score})
    return score


def training_curve(log_history: list[dict], base_dev: float | None = None) -> dict[str, Any]:
    """Loss and dev nDCG@10 per step from the trainer's log history (step 0: the base model)."""
    loss = [{"step": e["step"], "loss": e["loss"], "learning_rate": e.get("learning_rate")} for e in log_history if "loss" in e]
    dev = [{"step": 0, "ndcg@10": base_dev}] if base_dev is not None else []
    dev += [{"step": e["step"], "ndcg@10": e[NDCG_KEY]} for e in log_history if NDCG_KEY in e]
    steps = max((e.get("step", 0) for e in log_history), default=0)
    return {"steps": steps, "loss": loss, "dev": dev}


def plot_curve(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss (left axis) and dev nDCG@10 (right axis) per step, rounds one after the
    other (dotted lines where a round starts), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twinx()
    offset = 0
    for r, curve in enumerate(rounds):
        if r:
            ax.axvline(offset, color="grey", linestyle=":")
        if curve["loss"]:
            ax.plot([offset + p["step"] for p in curve["loss"]], [p["loss"] for p in curve["loss"]], color="tab:blue")
        if curve["dev"]:
            ax2.plot([offset + p["step"] for p in curve["dev"]], [p["ndcg@10"] for p in curve["dev"]], "o-", color="tab:orange")
        offset += curve["steps"]
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2.set_ylabel("dev nDCG@10", color="tab:orange")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


# --------------------------------------------------------------------------- the stage


def train_model(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg.model`` on the mined data in ``data_dir``; results in ``out_dir`` (see module doc).

    Returns the manifest (``metrics`` holds the best dev nDCG@10 and the curve). The same config
    and inputs with a complete manifest in ``out_dir`` return at once. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects (progress hooks, tests).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # saving a model card must never reach the hub
    from .models import model_fingerprint, model_info, resolve_model_path

    started = time.time()
    out = Path(out_dir)
    data = load_mined(data_dir)
    base_path = resolve_model_path(cfg.model.name)
    inputs = {"data": hash_path(data.source), "model": model_fingerprint(base_path)}
    if cfg.dev.enabled and cfg.dev.source:
        folder, split = parse_benchmark_source(cfg.dev.source)
        inputs["dev_qrels"] = hash_path(folder / "qrels" / f"{split}.tsv")
    key = stage_key(cfg, inputs)
    if prepare_run_folder(out, STAGE, key, overwrite=overwrite) and (out / "model").is_dir():
        log.info("%s already holds this training run (same config and inputs): nothing to do", out)
        return read_manifest(out)
    if overwrite:
        for stale in [out / "checkpoints", out / "model", *out.glob("round-*")]:
            if stale.exists():
                shutil.rmtree(stale)
    elif not resume and (out / "manifest.json").is_file() and any(out.glob("round-*/model")):
        raise RunDirError("holds rounds of an interrupted run: pass --resume to continue it or --overwrite to start over", file=out)
    if is_main_process():
        for leftover in out.glob(f"{TMP_PREFIX}*"):  # half-saved models of a killed run
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        write_manifest(out, stage=STAGE, key=key, config=cfg, inputs=inputs, status="running")

    rounds: list[dict[str, Any]] = []
    model_name, round_data = str(base_path), data
    result: RoundResult | None = None
    work = out
    if cfg.side == "query":
        from .query_side import train_query_side

        dev = make_dev_split(data, cfg)
        corpus, _ = _mined_corpus(data)
        queries, relevant = _query_positives(data, dev.exclude_query_ids if dev else set(), corpus)
        trained = train_query_side(cfg, corpus, queries, relevant, dev.queries if dev else None, dev.relevant if dev else None,
                                   out / "model", precision=resolve_precision(cfg.precision), progress=progress)
        stats = {"mined_rows": data.num_rows, "train_queries": len(queries), "train_rows": len(queries),
                 "corpus_documents": len(corpus), "best_step": trained["best_step"], "documents_encoded_by_new_model": 0}
        result = RoundResult(model_dir=out / "model", best_dev=trained["best_dev"], base_dev=trained["base_dev"],
                             curve=trained["curve"], steps=trained["steps"], stats=stats,
                             dev_description=dev.description if dev else None, seconds=trained["seconds"])
        rounds.append({"round": 1, "model": str(out / "model"), "best_dev_ndcg@10": result.best_dev,
                       "base_dev_ndcg@10": result.base_dev, "steps": result.steps, "rows": result.stats,
                       "seconds": round(result.seconds, 1), "curve": result.curve})
    for r in range(1, cfg.rounds + 1 if cfg.side == "both" else 1):
        last = r == cfg.rounds
        work = out if r == 1 else out / f"round-{r}"
        model_dir = out / "model" if last else out / f"round-{r}" / "model"
        if r > 1:
            round_data = remine(data, model_name, work / "mined", cfg)
        if not last and (model_dir / "modules.json").is_file() and resume:
            log.info("round %d already trained: %s", r, model_dir)
            prev = json.loads((work / "round.json").read_text())
            rounds.append(prev)
            model_name = str(model_dir)
            continue
        result = train_round(model_name, round_data, cfg, work, model_dir, resume=resume, callbacks=callbacks, progress=progress)
        summary = {
            "round": r, "model": str(model_dir), "best_dev_ndcg@10": result.best_dev, "base_dev_ndcg@10": result.base_dev,
            "steps": result.steps, "rows": result.stats, "seconds": round(result.seconds, 1), "curve": result.curve,
        }
        rounds.append(summary)
        if is_main_process():
            if cfg.rounds > 1:  # lets a resumed multi-round run skip this round
                atomic_write_json(work / "round.json", summary)
            if not last:
                _drop_checkpoints(work, cfg)
        model_name = str(model_dir)

    assert result is not None
    if not is_main_process():
        return {}
    curve = {"rounds": [{"round": rnd["round"], **rnd["curve"]} for rnd in rounds]}
    atomic_write_json(out / "training_curve.json", curve)
    plot_curve([rnd["curve"] for rnd in rounds], out / "training_curve.png", f"embedtune train: {Path(str(data_dir)).name}")
    metrics = {
        "best_dev_ndcg@10": rounds[-1]["best_dev_ndcg@10"],
        "base_dev_ndcg@10": rounds[0]["base_dev_ndcg@10"],
        "dev": result.dev_description,
        "steps": sum(s["steps"] for s in rounds),
        "train_rows": rounds[-1]["rows"]["train_rows"],
        "rows": rounds[-1]["rows"],
        "rounds": [{k: v for k, v in s.items() if k != "curve"} for s in rounds],
        "training_curve": curve,
    }
    models = {
        "base": model_info(cfg.model.model_copy(update={"name": str(base_path)})),
        "tuned": {"path": str(out / "model"), "sha256": model_fingerprint(out / "model")},
    }
    models["base"]["name"] = cfg.model.name
    manifest = write_manifest(
        out, stage=STAGE, key=key, config=cfg, inputs=inputs, models=models, metrics=metrics,
        timings={"total_s": round(time.time() - started, 1)},
        artifacts=["model", "training_curve.json", "training_curve.png"],
    )
    # only now: a kill before the manifest says complete resumes from the final checkpoint
    # instead of training the last round again
    _drop_checkpoints(work, cfg)
    return manifest


def _drop_checkpoints(work: Path, cfg: TrainConfig) -> None:
    if not cfg.keep_checkpoints and (work / "checkpoints").is_dir():
        shutil.rmtree(work / "checkpoints")


def remine(data: MinedData, model_name: str, out_dir: Path, cfg: TrainConfig) -> MinedData:
    """Round r > 1 (ANCE): mine new hard negatives for the same pairs with the tuned model, with
    the settings of the original mining run (its manifest's config)."""
    from .config import build_config
    from .mining import MineConfig, mine_hard_negatives

    mine_cfg = (data.manifest or {}).get("config")
    if not mine_cfg or (data.manifest or {}).get("stage") != "mine":
        raise ConfigError("rounds > 1 re-mine with the settings of the mining run, but the data folder has no mining manifest", file=data.folder, field="rounds")
    mine_cfg = dict(mine_cfg)
    mine_cfg["model"] = {**mine_cfg.get("model", {}), "name": model_name}
    summary = mine_hard_negatives(build_config(MineConfig, mine_cfg, source=str(data.folder / "manifest.json")), out_dir)
    log.info("re-mined with %s: %s rows, %s negatives", model_name, summary.get("pairs"), summary.get("negatives"))
    return load_mined(out_dir)
