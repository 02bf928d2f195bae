"""A LangChain retriever over an embedtune index (dense or hybrid, as the index is set up).

    from embedtune.integrations.langchain import EmbedtuneRetriever

    retriever = EmbedtuneRetriever.from_index("dist/scifact-model/index", k=5)
    docs = retriever.invoke("does vitamin D prevent fractures?")   # Documents with id, score, span
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import missing_extra

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_extra("LangChain", "langchain-core") from err

from ..retriever import Retriever


class EmbedtuneRetriever(BaseRetriever):
    """Passages as ``Document``s: ``page_content`` is the passage text, ``metadata`` holds the
    passage and document ids, its position, character span, title and the (fused) score."""

    retriever: Any  # embedtune.retriever.Retriever (not a pydantic type)
    k: int = 4

    @classmethod
    def from_index(cls, folder: str | Path, *, k: int = 4, hybrid: bool | None = None) -> "EmbedtuneRetriever":
        return cls(retriever=Retriever.load(folder, hybrid=hybrid), k=k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=hit.pop("text"), id=hit["passage_id"], metadata=hit)
            for hit in self.retriever.search(query, self.k)
        ]
