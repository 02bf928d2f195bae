"""Loading corpora, benchmarks and pairs into plain typed data, with strict validation.

Readers follow ``beir.datasets.data_loader.GenericDataLoader`` exactly (title + text, CRLF
qrels, graded integer scores, queries restricted to those with qrels) but validate every line:
a malformed file gives one :class:`InputError` naming file, line and field instead of a
KeyError deep inside a loop. beir's loader itself is not used because it neither validates nor
reports where a problem is.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError

log = logging.getLogger("embedtune")

UTF8_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """What gets embedded: title + " " + text, as BEIR's dense models do."""
        return f"{self.title} {self.text}".strip()


@dataclass(frozen=True)
class Passage:
    """A piece of a document small enough for the model; traceable to its source."""

    id: str
    doc_id: str
    position: int  # index of this passage within its document
    text: str
    title: str = ""
    char_start: int = 0
    char_end: int = 0

    @property
    def full_text(self) -> str:
        return f"{self.title} {self.text}".strip()


@dataclass
class BeirDataset:
    """One split of a BEIR benchmark: corpus, the split's queries, and graded qrels."""

    path: Path
    split: str
    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped_qrels: int = 0  # rows dropped by skip_unknown_ids, reported in summaries


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()


# --------------------------------------------------------------------------- line readers


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 file; BOM and bad bytes are clear errors."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    if not path.is_file():
        raise InputError("not a file", file=path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raise InputError(
                    "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM",
                    file=path, line=1,
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})", file=path, line=lineno) from None
            yield lineno, text.rstrip("\r\n")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSONL file."""
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"malformed JSON ({err.msg} at column {err.colno})", file=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=lineno)
        yield lineno, obj


def _string_field(obj: dict, key: str, path: Path, lineno: int, *, required: bool = True, allow_empty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise InputError("missing", file=path, line=lineno, field=key)
        return ""
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"must be a string, got {type(value).__name__}", file=path, line=lineno, field=key)
    if isinstance(value, int) and key not in ("_id", "id"):
        raise InputError("must be a string, got int", file=path, line=lineno, field=key)
    value = str(value)
    if required and not allow_empty and not value.strip():
        raise InputError("empty", file=path, line=lineno, field=key)
    return value


def report_empty_documents(path: Path, empty: list[str]) -> None:
    """One warning line for the documents with neither title nor text."""
    if empty:
        shown = ", ".join(f"'{d}'" for d in empty[:3]) + (", ..." if len(empty) > 3 else "")
        log.warning("%s: %d empty document(s) (no title, no text: %s) kept for indexing and evaluation, as BEIR does, "
                    "never used as a positive, negative or pseudo-query source", path, len(empty), shown)


def is_empty(doc: Document) -> bool:
    return not doc.full_text


def _records_to_documents(records: Iterator[tuple[int, dict]], path: Path, id_field: str, title_field: str, text_field: str,
                          *, strict: bool = False) -> dict[str, Document]:
    """Documents by id. One with neither title nor text is kept (real collections have them, and
    qrels may point at them) and reported once; ``strict`` makes it an error."""
    docs: dict[str, Document] = {}
    first_line: dict[str, int] = {}
    empty: list[str] = []
    for lineno, obj in records:
        doc_id = _string_field(obj, id_field, path, lineno)
        title = _string_field(obj, title_field, path, lineno, required=False)
        text = _string_field(obj, text_field, path, lineno, required=True, allow_empty=True)
        if not text.strip() and not title.strip():
            if strict:
                raise InputError("empty (no title, no text)", file=path, line=lineno, field=text_field)
            empty.append(doc_id)
            title, text = "", ""
        if doc_id in docs:
            raise InputError(f"duplicate id '{doc_id}' (first on line {first_line[doc_id]})", file=path, line=lineno, field=id_field)
        docs[doc_id] = Document(id=doc_id, text=text, title=title)
        first_line[doc_id] = lineno
    if not docs or len(empty) == len(docs):
        raise InputError("empty corpus: no documents" if not docs else "every document is empty", file=path)
    report_empty_documents(path, empty)
    return docs


# --------------------------------------------------------------------------- BEIR


def load_beir_corpus(path: Path, *, strict: bool = False) -> dict[str, Document]:
    path = Path(path)
    return _records_to_documents(read_jsonl(path), path, "_id", "title", "text", strict=strict)


def load_queries(path: Path) -> dict[str, str]:
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, obj in read_jsonl(path):
        qid = _string_field(obj, "_id", path, lineno)
        text = _string_field(obj, "text", path, lineno)
        if qid in queries:
            raise InputError(f"duplicate id '{qid}'", file=path, line=lineno, field="_id")
        queries[qid] = text
    if not queries:
        raise InputError("no queries", file=path)
    return queries


def load_qrels(
    path: Path,
    *,
    query_ids: set[str] | None = None,
    doc_ids: set[str] | None = None,
    skip_unknown_ids: bool = False,
) -> tuple[dict[str, dict[str, int]], int]:
    """Read a BEIR qrels TSV (header, CRLF allowed). Returns (qrels, rows skipped)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    skipped = 0
    rows = 0
    for lineno, line in _read_lines(path):
        if lineno == 1:
            header = line.split("\t")
            if [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
                raise InputError("header must be 'query-id<TAB>corpus-id<TAB>score'", file=path, line=1)
            continue
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise InputError(f"expected 3 tab-separated columns, got {len(cols)}", file=path, line=lineno)
        qid, did, score_s = (c.strip() for c in cols)
        for name, value in (("query-id", qid), ("corpus-id", did)):
            if not value:
                raise InputError("empty", file=path, line=lineno, field=name)
        try:
            score = int(score_s)
        except ValueError:
            raise InputError(f"must be an integer, got {score_s!r}", file=path, line=lineno, field="score") from None
        if score < 0:
            raise InputError(f"must be >= 0, got {score}", file=path, line=lineno, field="score")
        unknown = None
        if query_ids is not None and qid not in query_ids:
            unknown = ("query-id", f"unknown query id '{qid}' (not in queries.jsonl)")
        elif doc_ids is not None and did not in doc_ids:
            unknown = ("corpus-id", f"unknown document id '{did}' (not in corpus.jsonl)")
        if unknown:
            if skip_unknown_ids:
                skipped += 1
                continue
            raise InputError(unknown[1] + "; pass --skip-unknown-ids to drop such rows", file=path, line=lineno, field=unknown[0])
        qrels.setdefault(qid, {})[did] = score
        rows += 1
    if not qrels:
        raise InputError("no relevance judgements", file=path)
    return qrels, skipped


def beir_splits(path: Path) -> list[str]:
    qdir = Path(path) / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def qrels_file(path: Path, split: str) -> Path:
    """``path/qrels/<split>.tsv``, or a one-line error naming the splits there are."""
    qrels_path = Path(path) / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = ", ".join(beir_splits(Path(path))) or "none"
        raise InputError(f"split '{split}' not found (available: {available})", file=qrels_path)
    return qrels_path


def load_beir(path: str | Path, split: str = "test", *, skip_unknown_ids: bool = False) -> BeirDataset:
    """Load one split of a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError("BEIR dataset folder not found", file=path)
    qrels_path = qrels_file(path, split)
    corpus = load_beir_corpus(path / "corpus.jsonl")
    queries = load_queries(path / "queries.jsonl")
    qrels, skipped = load_qrels(qrels_path, query_ids=set(queries), doc_ids=set(corpus), skip_unknown_ids=skip_unknown_ids)
    # Like GenericDataLoader: keep only the split's queries.
    split_queries = {qid: queries[qid] for qid in qrels}
    return BeirDataset(path=path, split=split, corpus=corpus, queries=split_queries, qrels=qrels, skipped_qrels=skipped)


def parse_benchmark_source(source: str) -> tuple[Path, str]:
    """``DIR:split`` or ``name:split`` (a folder under ./data or ../shared/datasets) -> (folder, split)."""
    folder, _, split = source.rpartition(":") if ":" in source else (source, "", "test")
    folder = folder or source
    split = split or "test"
    candidates = [Path(folder), Path("data") / folder, Path("../shared/datasets") / folder]
    for cand in candidates:
        if (cand / "corpus.jsonl").is_file():
            return cand, split
    raise InputError(f"no BEIR dataset '{folder}' (looked in {', '.join(str(c) for c in candidates)})", file=folder)


# --------------------------------------------------------------------------- domain corpora


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = (text for _, text in _read_lines(path))
    reader = csv.DictReader(lines)
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as err:
        raise InputError(f"malformed CSV ({err})", file=path, line=reader.line_num) from None


def _check_columns(path: Path, columns: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; columns are {columns} (set id_field/title_field/text_field)", file=path, line=1, field=missing[0])


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:
        raise InputError(f"cannot read Parquet ({type(err).__name__}: {str(err).splitlines()[0]})", file=path) from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row  # "line" = row number (1-based) for Parquet


def _load_text_folder(path: Path, *, strict: bool = False) -> dict[str, Document]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".md") and not p.name.startswith("."))
    docs: dict[str, Document] = {}
    empty: list[str] = []
    for f in files:
        text = "\n".join(line for _, line in _read_lines(f))
        if not text.strip():
            if strict:
                raise InputError("empty document", file=f, line=1, field="text")
            empty.append(str(f.relative_to(path)))
            docs[empty[-1]] = Document(id=empty[-1], text="", title="")
            continue
        title = f.stem
        if f.suffix.lower() == ".md":
            for line in text.splitlines():
                if line.startswith("# "):
                    title = line[2:].strip()
                    break
        doc_id = str(f.relative_to(path))
        docs[doc_id] = Document(id=doc_id, text=text, title=title)
    if len(docs) == len(empty):
        raise InputError("empty corpus: no .txt or .md files" if not docs else "every document is empty", file=path)
    report_empty_documents(path, empty)
    return docs


def load_corpus(path: str | Path, *, id_field: str = "_id", title_field: str = "title", text_field: str = "text",
                strict: bool = False) -> dict[str, Document]:
    """Load documents from a BEIR folder, a JSONL/CSV/Parquet file, or a folder of .txt/.md files.
    Empty documents are kept and reported once (``strict``: an error naming the first)."""
    path = Path(path)
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return load_beir_corpus(path / "corpus.jsonl", strict=strict)
        return _load_text_folder(path, strict=strict)
    if not path.exists():
        raise InputError("file not found", file=path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records: Iterator[tuple[int, dict]] = read_jsonl(path)
    elif suffix == ".csv":
        records = _iter_csv(path)
        header = next(iter(_read_lines(path)), (1, ""))[1]
        try:
            columns = next(csv.reader([header]), []) if header else []
        except csv.Error as err:
            raise InputError(f"malformed CSV header ({err})", file=path, line=1) from None
        _check_columns(path, columns, [id_field, text_field])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            columns = pq.read_schema(path).names
        except Exception as err:
            raise InputError(f"cannot read Parquet ({type(err).__name__})", file=path) from None
        _check_columns(path, columns, [id_field, text_field])
        records = _iter_parquet(path)
    else:
        raise InputError(f"unknown corpus format '{suffix}' (use .jsonl, .csv, .parquet, a BEIR folder or a folder of .txt/.md)", file=path)
    return _records_to_documents(records, path, id_field, title_field, text_field, strict=strict)


# --------------------------------------------------------------------------- pairs


def load_pairs(path: str | Path) -> list[Pair]:
    """Read labeled pairs: JSONL with ``query``, ``positive`` and optional ``negatives`` (list of strings)."""
    path = Path(path)
    pairs: list[Pair] = []
    for lineno, obj in read_jsonl(path):
        query = _string_field(obj, "query", path, lineno)
        positive = _string_field(obj, "positive", path, lineno)
        negatives = obj.get("negatives", [])
        if negatives is None:
            negatives = []
        if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
            raise InputError("must be a list of non-empty strings", file=path, line=lineno, field="negatives")
        pairs.append(Pair(query=query, positive=positive, negatives=tuple(negatives)))
    if not pairs:
        raise InputError("no pairs", file=path)
    return pairs


# --------------------------------------------------------------------------- passages


@dataclass
class ChunkReport:
    documents: int = 0
    passages: int = 0
    split_documents: int = 0  # documents that became more than one passage
    truncated_documents: int = 0
    dropped_passages: int = 0  # passages beyond max_passages_per_doc
    truncated_ids: list[str] = field(default_factory=list)


def split_into_passages(
    docs: dict[str, Document],
    tokenizer: Any,
    max_tokens: int,
    overlap: int = 32,
    max_passages_per_doc: int = 2000,
) -> tuple[list[Passage], ChunkReport]:
    """Split documents into passages of at most ``max_tokens`` model tokens (title included).

    A document that fits stays one passage with the document's id, so benchmark qrels still
    match. Longer ones become ``<doc id>#<n>`` passages cut on token boundaries with
    ``overlap`` tokens in common; each keeps its source id, position and character span.
    """
    if overlap >= max_tokens // 2:
        raise InputError(f"chunk overlap ({overlap}) must be less than half of max_tokens ({max_tokens})", field="overlap")
    report = ChunkReport(documents=len(docs))
    passages: list[Passage] = []
    special = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(tokenizer, "num_special_tokens_to_add") else 2
    for doc in docs.values():
        title_tokens = len(tokenizer(doc.title, add_special_tokens=False)["input_ids"]) + 1 if doc.title else 0
        budget = max(8, max_tokens - special - title_tokens)
        enc = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) <= budget:
            passages.append(Passage(doc.id, doc.id, 0, doc.text, doc.title, 0, len(doc.text)))
            continue
        report.split_documents += 1
        step = budget - overlap
        starts = list(range(0, len(offsets), step))
        # drop a last window that only repeats the overlap of the previous one
        if len(starts) > 1 and starts[-1] + overlap >= len(offsets):
            starts.pop()
        if len(starts) > max_passages_per_doc:
            report.truncated_documents += 1
            report.dropped_passages += len(starts) - max_passages_per_doc
            report.truncated_ids.append(doc.id)
            starts = starts[:max_passages_per_doc]
        for pos, start in enumerate(starts):
            end = min(start + budget, len(offsets))
            c0, c1 = offsets[start][0], offsets[end - 1][1]
            passages.append(Passage(f"{doc.id}#{pos}", doc.id, pos, doc.text[c0:c1], doc.title, c0, c1))
    report.passages = len(passages)
    if report.truncated_documents:
        log.warning(
            "%d document(s) longer than %d passages were truncated; %d passage(s) dropped (first: %s)",
            report.truncated_documents, max_passages_per_doc, report.dropped_passages, report.truncated_ids[0],
        )
    return passages, report
