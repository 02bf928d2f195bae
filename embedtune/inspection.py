"""What a dataset holds, before anything is trained on it: counts, token lengths, duplicates,
and what the model would truncate."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import Document, beir_splits, load_corpus, load_pairs, load_qrels, load_queries
from .errors import InputError


def _length_stats(lengths: list[int]) -> dict[str, float]:
    a = np.asarray(lengths, dtype=np.int64)
    return {
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": int(a.max()),
    }


def token_lengths(texts: list[str], tokenizer: Any, batch: int = 1024) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        out.extend(len(ids) for ids in enc)
    return out


def _corpus_summary(docs: dict[str, Document], tokenizer: Any, max_length: int) -> dict[str, Any]:
    texts = [d.full_text for d in docs.values()]
    counts = Counter(texts)
    lengths = token_lengths(texts, tokenizer)
    over = [n for n in lengths if n > max_length]
    empty = [d.id for d in docs.values() if not d.full_text]
    return {
        "documents": len(docs),
        "empty_documents": len(empty),
        "empty_document_ids": empty[:10],
        "duplicate_texts": sum(c - 1 for c in counts.values() if c > 1),
        "tokens": _length_stats(lengths),
        "truncated_at_max_length": len(over),
        "truncated_tokens": int(sum(n - max_length for n in over)),
        "max_length": max_length,
    }


def inspect_path(path: str | Path, tokenizer: Any, max_length: int, *, strict: bool = False) -> dict[str, Any]:
    """Summarise a BEIR folder, a corpus file/folder, or a pairs JSONL (``strict``: an empty
    document is an error)."""
    path = Path(path)
    if not path.exists():
        raise InputError("not found", file=path)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        docs = load_corpus(path, strict=strict)
        summary: dict[str, Any] = {"kind": "beir", "path": str(path), "corpus": _corpus_summary(docs, tokenizer, max_length)}
        queries_path = path / "queries.jsonl"
        if queries_path.is_file() or beir_splits(path):  # qrels without queries is an error
            queries = load_queries(queries_path)
            qlen = token_lengths(list(queries.values()), tokenizer)
            summary["queries"] = {"count": len(queries), "tokens": _length_stats(qlen)}
            splits = {}
            for split in beir_splits(path):
                qrels, _ = load_qrels(path / "qrels" / f"{split}.tsv", query_ids=set(queries), doc_ids=set(docs))
                splits[split] = {
                    "queries": len(qrels),
                    "judgements": sum(len(v) for v in qrels.values()),
                    "relevant_per_query": round(sum(len(v) for v in qrels.values()) / len(qrels), 2),
                    "scores": dict(sorted(Counter(s for v in qrels.values() for s in v.values()).items())),
                }
            summary["splits"] = splits
        return summary
    if path.suffix == ".jsonl":
        # A pairs file has query/positive; anything else is treated as a corpus.
        import json

        with open(path, "rb") as fh:
            first = fh.readline()
        try:
            is_pairs = "positive" in json.loads(first)
        except (ValueError, TypeError):
            is_pairs = False
        if is_pairs:
            pairs = load_pairs(path)
            qlen = token_lengths([p.query for p in pairs], tokenizer)
            plen = token_lengths([p.positive for p in pairs], tokenizer)
            return {
                "kind": "pairs",
                "path": str(path),
                "pairs": len(pairs),
                "unique_queries": len({p.query for p in pairs}),
                "with_negatives": sum(1 for p in pairs if p.negatives),
                "query_tokens": _length_stats(qlen),
                "positive_tokens": _length_stats(plen),
                "positives_truncated_at_max_length": sum(1 for n in plen if n > max_length),
            }
    docs = load_corpus(path, strict=strict)
    return {"kind": "corpus", "path": str(path), "corpus": _corpus_summary(docs, tokenizer, max_length)}
