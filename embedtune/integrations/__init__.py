"""Retrievers for RAG frameworks built on :class:`embedtune.retriever.Retriever`, so a LangChain or
LlamaIndex application gets the ranking embedtune measured -- the tuned model, and BM25 fused with it
using the weight chosen on dev -- instead of re-embedding the corpus with default weights.
Install with ``pip install 'embedtune[rag]'``; each module imports only its own framework."""


def missing_extra(framework: str, module: str) -> ImportError:
    return ImportError(f"{framework} is not installed ({module}); install it with: pip install 'embedtune[rag]'")
