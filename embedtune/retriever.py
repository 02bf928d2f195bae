"""The serving side of an index folder (``RUN/index`` or an export's ``index/``): one object that
answers questions with the ranking the evaluation measured -- dense, or BM25 fused with the
dense model using the fusion settings stored with the index (the weight chosen on dev).

    from embedtune.retriever import Retriever

    retriever = Retriever.load("dist/scifact-model/index")
    for hit in retriever.search("does vitamin D prevent fractures?", k=5):
        print(hit["score"], hit["doc_id"], hit["text"][:80])

LangChain and LlamaIndex retrievers built on it are in :mod:`embedtune.integrations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fusion import FusionConfig
from .index import OpenIndex, open_index, query_index


class Retriever:
    """Search an embedtune index folder; hybrid by default when the index has a BM25 part."""

    def __init__(self, index: OpenIndex, *, hybrid: bool | None = None, fusion: FusionConfig | None = None) -> None:
        self.index = index
        self.hybrid = index.lexical is not None if hybrid is None else hybrid
        self.fusion = fusion or index.fusion

    @classmethod
    def load(cls, folder: str | Path, *, hybrid: bool | None = None, fusion: FusionConfig | None = None, model: Any = None) -> "Retriever":
        """Open ``folder`` (checked against its manifest) with its own query model (or ``model``,
        which must have the same weights)."""
        return cls(open_index(folder, model), hybrid=hybrid, fusion=fusion)

    def search(self, query: str, k: int = 10) -> list[dict[str, Any]]:
        """The top ``k`` passages: rank, score, passage_id, doc_id, position, title, text and the
        passage's character span in its document (for citations)."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: list[str], k: int = 10) -> list[list[dict[str, Any]]]:
        results = query_index(self.index, list(queries), k, hybrid=self.hybrid, fusion=self.fusion)
        out = []
        for hits in results:
            rows = []
            for hit in hits:
                row = hit.as_dict()
                stored = self.index.passages.get(hit.passage_id)
                row["char_start"], row["char_end"] = stored.get("char_start"), stored.get("char_end")
                rows.append(row)
            out.append(rows)
        return out

    def describe(self) -> dict[str, Any]:
        """What answers: the model, passage count and, when hybrid, the fusion settings."""
        return {"index": str(self.index.path), "passages": self.index.count, "model": self.index.info.get("model"),
                "hybrid": self.hybrid, "fusion": self.fusion.model_dump(mode="json") if self.hybrid and self.fusion else None}
