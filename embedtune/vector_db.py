"""An index's passages and their vectors, written into an embedded vector database (Qdrant, local mode).

Why Qdrant: of the three embedded databases the RAG stacks integrate (LanceDB, Chroma, Qdrant
local), measured on this machine's registry (eval/results/vector_db.md): qdrant-client adds 6
packages / 27 MB; LanceDB 5 packages / 414 MB (its LlamaIndex store adds pylance and tantivy);
Chroma 32 packages (kubernetes, opentelemetry, uvicorn...). The same client code runs against a
Qdrant server when a collection outgrows one process, and LangChain (``langchain-qdrant``, kept
by Qdrant) and LlamaIndex (``llama-index-vector-stores-qdrant``) both read it. Local mode stores
points with pickle in SQLite: open only databases you wrote (as with any pickle).

The vectors are the index's own (no encoding again). Point ids are the passages' row numbers
(Qdrant accepts only unsigned integers and UUIDs, not ``4983#0``); each payload carries the
passage text and what a citation needs -- ``doc_id``, ``passage_id``, ``position`` and the
character span ``char_start``/``char_end`` in the source document -- both flat (LlamaIndex reads
metadata from the payload's top level) and under ``metadata`` (where LangChain reads it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from .errors import InputError, ModelError
from .io import atomic_write_dir

COLLECTION = "passages"
BATCH = 512
INSTALL = "pip install 'embedtune[rag]'"


def qdrant_available() -> bool:
    return importlib.util.find_spec("qdrant_client") is not None


def write_qdrant(index_dir: str | Path, out_dir: str | Path, *, collection: str = COLLECTION) -> dict[str, Any]:
    """Write every passage of the embedtune index ``index_dir`` with its vector into a Qdrant
    local-mode database at ``out_dir`` (a new or empty folder), built in a temp folder and renamed
    into place. Returns what was written."""
    if not qdrant_available():
        raise ModelError(f"writing a Qdrant database needs qdrant-client ({INSTALL})")
    from qdrant_client import QdrantClient
    from qdrant_client.models import Distance, PointStruct, VectorParams

    from .index import SEARCHER_DIR, PassageStore, read_index_manifest, verify_index_files
    from .search import load_searcher

    index_dir, out_dir = Path(index_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("the vector database folder exists and is not empty; choose a new folder or empty it", file=out_dir)
    manifest = read_index_manifest(index_dir)
    verify_index_files(index_dir, manifest)
    searcher = load_searcher(index_dir / SEARCHER_DIR)
    vectors = searcher.vectors()
    passages = PassageStore(index_dir / "passages.jsonl")
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        client = QdrantClient(path=str(tmp))
        # cosine: the vectors are unit length, so scores equal the index's inner products; and it is
        # the distance LangChain's Qdrant store expects unless told otherwise
        client.create_collection(collection, vectors_config=VectorParams(size=searcher.dim, distance=Distance.COSINE))
        ids = searcher.ids
        for start in range(0, len(ids), BATCH):
            points = []
            for row in range(start, min(start + BATCH, len(ids))):
                p = passages.get(ids[row])
                meta = {"doc_id": p["doc_id"], "passage_id": p["id"], "position": p["position"], "title": p["title"],
                        "char_start": p["char_start"], "char_end": p["char_end"]}
                points.append(PointStruct(id=row, vector=vectors[row].tolist(),
                                          payload={"text": f"{p['title']} {p['text']}".strip(), **meta, "metadata": meta}))
            client.upsert(collection, points=points, wait=True)
        count = client.count(collection).count
        client.close()

    try:
        atomic_write_dir(out_dir, write)
    finally:
        passages.close()
    return {"path": str(out_dir), "kind": "qdrant-local", "collection": collection, "count": count, "dim": searcher.dim,
            "model_sha256": manifest["index"].get("model_sha256")}
