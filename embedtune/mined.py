"""The mined-data contract between ``mine`` and ``train``: one row per (query, positive) with
its hard negatives -- the columns, the writer and the validating reader both sides use.

A mined folder ``MINED`` holds ``dataset/`` (datasets ``save_to_disk``) and ``pairs.jsonl`` (the
same rows; a user may also hand-write only this file), ``qrels.json`` when the pairs came from a
BEIR source (graded judgements: training masks every known positive) and the mining manifest.

Row columns: ``query_id``, ``query``, ``positive_id``, ``positive``, ``negative_ids``,
``negatives`` (required); ``positive_score``, ``negative_scores``, ``negative_ranks`` (the mining
model's cosines and ranks); ``teacher_positive_score``, ``teacher_negative_scores`` (when a
teacher scored the rows: MarginMSE / distillation targets).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import read_jsonl
from .errors import InputError
from .io import atomic_write_dir, atomic_write_json, atomic_write_jsonl
from .run_folder import read_manifest

REQUIRED_COLUMNS = ("query_id", "query", "positive_id", "positive", "negative_ids", "negatives")
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


def write_mined(folder: str | Path, rows: list[dict[str, Any]], *, with_teacher: bool,
                qrels: dict[str, dict[str, int]] | None = None) -> list[str]:
    """Write the rows as ``dataset/`` (datasets ``save_to_disk``) and ``pairs.jsonl`` (same rows),
    plus the source's ``qrels.json``; each atomically (a killed run leaves no half dataset).
    Returns the artifacts written."""
    import datasets

    folder = Path(folder)
    features = {
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "positive_id": datasets.Value("string"),
        "positive": datasets.Value("string"),
        "positive_score": datasets.Value("float32"),
        "negative_ids": datasets.Sequence(datasets.Value("string")),
        "negatives": datasets.Sequence(datasets.Value("string")),
        "negative_scores": datasets.Sequence(datasets.Value("float32")),
        "negative_ranks": datasets.Sequence(datasets.Value("int32")),
    }
    if with_teacher:
        features["teacher_positive_score"] = datasets.Value("float32")
        features["teacher_negative_scores"] = datasets.Sequence(datasets.Value("float32"))
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    atomic_write_dir(folder / "dataset", lambda tmp: ds.save_to_disk(str(tmp)))
    atomic_write_jsonl(folder / "pairs.jsonl", rows)
    if qrels is None:
        return ["dataset", "pairs.jsonl"]
    atomic_write_json(folder / "qrels.json", qrels)
    return ["dataset", "pairs.jsonl", "qrels.json"]


