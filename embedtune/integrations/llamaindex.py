"""A LlamaIndex retriever over an embedtune index (dense or hybrid, as the index is set up).

    from embedtune.integrations.llamaindex import EmbedtuneRetriever

    retriever = EmbedtuneRetriever.from_index("dist/scifact-model/index", similarity_top_k=5)
    nodes = retriever.retrieve("does vitamin D prevent fractures?")   # NodeWithScore, ids and spans kept
"""

from __future__ import annotations

from pathlib import Path

from . import missing_extra

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_extra("LlamaIndex", "llama-index-core") from err

from ..retriever import Retriever


class EmbedtuneRetriever(BaseRetriever):
    """Passages as ``TextNode``s (id = passage id, metadata: document id, position, title, span),
    scored by the index's own ranking."""

    def __init__(self, retriever: Retriever, similarity_top_k: int = 4) -> None:
        super().__init__()
        self._retriever = retriever
        self._top_k = similarity_top_k

    @classmethod
    def from_index(cls, folder: str | Path, *, similarity_top_k: int = 4, hybrid: bool | None = None) -> "EmbedtuneRetriever":
        return cls(Retriever.load(folder, hybrid=hybrid), similarity_top_k)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        out = []
        for hit in self._retriever.search(query_bundle.query_str, self._top_k):
            node = TextNode(
                id_=hit["passage_id"], text=hit["text"],
                metadata={k: hit[k] for k in ("doc_id", "position", "title", "char_start", "char_end")},
                start_char_idx=hit["char_start"], end_char_idx=hit["char_end"],
            )
            out.append(NodeWithScore(node=node, score=hit["score"]))
        return out
