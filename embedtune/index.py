"""The index stage: a corpus split into passages, encoded, and stored as a searchable folder.

An index folder holds

- ``searcher/``        the vector index and its id map (``searcher/ids.json``: row ``i`` holds
                       passage ``ids[i]``), written by :meth:`embedtune.search.Searcher.save`;
- ``passages.jsonl``   the passage store, in corpus order: id, text, title, source document id, position in the
                       document, character span, and the sha256 of the embedded text;
- ``bm25/``            with ``--hybrid``: a BM25 index (bm25s) of the same passages, row ``i`` =
                       passage ``bm25/ids.json[i]``, rebuilt with the passages on every update;
- ``fusion.json``      with ``--hybrid``: how the two rankings are fused (:class:`FusionConfig`),
                       a setting rather than data -- ``embedtune run`` rewrites it with the weight
                       it chose on dev, ``embedtune index fusion`` by hand -- so it is not hashed;
- ``manifest.json``    written last: how it was built (model id + weights fingerprint, prompts,
                       max_seq_length, dim, metric, count, backend, chunking) and the sha256 of
                       every file above, checked whenever the index is opened.

Vectors are L2-normalised and searched by inner product, i.e. cosine similarity.

A build or an update writes a complete new folder next to the target (``.tmp-<name>.*`` in the
same parent) and renames it into place, so a killed run leaves the old index or none, never half
of one. :func:`update_index` re-encodes only passages that are new or whose text changed
(content hash) and removes deleted ones, so the result equals a fresh build on the new corpus.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from .config import ChunkingConfig, CorpusConfig, ModelConfig, StrictModel
from .corpus import Passage, load_corpus, split_into_passages
from .errors import IndexMismatchError, RunDirError, first_line
from .io import TMP_PREFIX, atomic_write_jsonl, sha256_file, sha256_text
from .run_folder import MANIFEST, hash_path, stage_key, write_manifest
from .models import LoadedModel, load_model, model_info
from .fusion import FusionConfig, fuse_scores
from .search import BackendName

if TYPE_CHECKING:
    from .search import Searcher

log = logging.getLogger("embedtune")

STAGE = "index"
SEARCHER_DIR = "searcher"
PASSAGES_FILE = "passages.jsonl"
BM25_DIR = "bm25"
FUSION_FILE = "fusion.json"
METRIC = "ip"  # inner product on L2-normalised vectors = cosine similarity



class IndexConfig(StrictModel):
    """How a corpus becomes an index."""

    model: ModelConfig = ModelConfig()
    corpus: CorpusConfig
    backend: BackendName = Field("auto", description="Vector search backend (see embedtune.search.make_searcher).")
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="Backend options: faiss-ivf nlist/nprobe, faiss-hnsw M/efConstruction/efSearch, exact-numba dtype.",
    )
    cache_dir: str | None = Field(None, description="Embedding cache folder; default: the encoding module's.")
    hybrid: bool = Field(False, description="Also write a BM25 index of the same passages, for hybrid search.")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Fusion settings a hybrid index starts with.")


# --------------------------------------------------------------------------- passage store


def passage_record(p: Passage) -> dict[str, Any]:
    """One line of ``passages.jsonl``. ``sha256`` is of the text that gets embedded (title + text)."""
    return {
        "id": p.id,
        "doc_id": p.doc_id,
        "position": p.position,
        "title": p.title,
        "text": p.text,
        "char_start": p.char_start,
        "char_end": p.char_end,
        "sha256": sha256_text(p.full_text),
    }


class PassageStore:
    """Read access to ``passages.jsonl`` by passage id without holding every text in memory:
    one pass records each line's byte offset; texts are read back on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offsets: dict[str, int] = {}
        self._hashes: dict[str, str] = {}
        self._sources: dict[str, tuple[str, int]] = {}  # id -> (doc_id, position): cheap hits without text
        offset = 0
        with open(self.path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    row = json.loads(raw)
                    pid, digest = row["id"], row["sha256"]
                    self._sources[pid] = (row["doc_id"], int(row["position"]))
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                    raise IndexMismatchError("corrupt passage store line", file=self.path, line=lineno) from None
                self._offsets[pid] = offset
                self._hashes[pid] = digest
                offset += len(raw)
        self._fh = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __contains__(self, pid: str) -> bool:
        return pid in self._offsets

    @property
    def hashes(self) -> dict[str, str]:
        """passage id -> sha256 of its embedded text, in store order."""
        return self._hashes

    def source(self, pid: str) -> tuple[str, int]:
        """(source document id, position in it)."""
        return self._sources[pid]

    def get(self, pid: str) -> dict[str, Any]:
        if self._fh is None:
            self._fh = open(self.path, "rb")
        self._fh.seek(self._offsets[pid])
        return json.loads(self._fh.readline())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------- opening an index


@dataclass
class Hit:
    rank: int
    score: float
    passage_id: str
    doc_id: str
    position: int
    title: str
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "score": self.score, "passage_id": self.passage_id, "doc_id": self.doc_id,
            "position": self.position, "title": self.title, "text": self.text,
        }


@dataclass
class OpenIndex:
    """An index folder checked against its manifest, with the model that queries it."""

    path: Path
    manifest: dict[str, Any]
    searcher: "Searcher"
    passages: PassageStore
    model: "LoadedModel | None"
    model_cfg: ModelConfig
    info: dict[str, Any] = field(default_factory=dict)  # manifest["index"]
    lexical: Any = None  # the bm25s retriever of a hybrid index
    lexical_ids: list[str] = field(default_factory=list)  # row i of the BM25 index holds passage lexical_ids[i]
    fusion: FusionConfig | None = None  # fusion.json of a hybrid index
    last_timings: dict[str, float] = field(default_factory=dict)  # encode_s / search_s of the last query_index call

    @property
    def count(self) -> int:
        return len(self.searcher)


def _mismatch(message: str, index_dir: Path, field: str | None = None) -> IndexMismatchError:
    return IndexMismatchError(message, file=index_dir / MANIFEST, field=field)


def read_index_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete index folder, or a one-line :class:`IndexMismatchError`."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir():
        raise IndexMismatchError("index folder not found; build one with 'embedtune index build'", file=index_dir)
    if not path.is_file():
        raise IndexMismatchError("not an index folder (no manifest.json); build one with 'embedtune index build'", file=index_dir)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IndexMismatchError("manifest is corrupt (not valid JSON); rebuild the index", file=path) from None
    if not isinstance(manifest, dict) or manifest.get("stage") != STAGE:
        stage = manifest.get("stage") if isinstance(manifest, dict) else None
        raise _mismatch(f"folder holds a '{stage}' run, not an index", index_dir, "stage")
    if manifest.get("status") != "complete":
        raise _mismatch("index build did not complete; rebuild it", index_dir, "status")
    for key in ("index", "files"):
        if not isinstance(manifest.get(key), dict):
            raise _mismatch("manifest lacks this field; rebuild the index", index_dir, key)
    return manifest


def verify_index_files(index_dir: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists must exist with the recorded size and sha256."""
    for rel, expected in manifest["files"].items():
        path = index_dir / rel
        if not _inside(index_dir, path) or not path.is_file():
            raise IndexMismatchError("index file listed in the manifest is missing; rebuild the index", file=path)
        if path.stat().st_size != expected.get("bytes") or sha256_file(path) != expected.get("sha256"):
            raise IndexMismatchError("index file is corrupt or was changed after the build (sha256 differs from manifest.json); rebuild the index", file=path)


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def index_model_config(index_dir: Path, manifest: dict[str, Any], model: str | ModelConfig | None = None) -> ModelConfig:
    """The model config a query must use: the manifest's prompts and length, with ``model``
    (a name/folder) or by default the manifest's model. A relative model path in the manifest
    is relative to the index folder (exports write ``../model``)."""
    info = manifest["index"]
    recorded = dict(manifest.get("config", {}).get("model", {}))
    recorded.update(query_prompt=info.get("query_prompt", ""), document_prompt=info.get("document_prompt", ""))
    recorded["max_seq_length"] = info.get("max_seq_length")
    if isinstance(model, ModelConfig):
        return model.model_copy(update={k: recorded[k] for k in ("query_prompt", "document_prompt", "max_seq_length")})
    if model is None:
        model = _default_model_name(index_dir, info)
    recorded["name"] = str(model)
    return ModelConfig.model_validate(recorded)


def _default_model_name(index_dir: Path, info: dict[str, Any]) -> str:
    path = info.get("model_path")
    if path:
        candidate = Path(path) if Path(path).is_absolute() else index_dir / path
        if candidate.is_dir():
            return str(candidate.resolve())
    return str(info.get("model"))


def check_model_matches(index_dir: Path, manifest: dict[str, Any], model: LoadedModel, name: str) -> None:
    """Dimension first (the clearer message), then the weights fingerprint."""
    info = manifest["index"]
    dim = model.dim
    if dim != info.get("dim"):
        raise _mismatch(f"model '{name}' gives {dim}-dim vectors but the index holds {info.get('dim')}-dim vectors", index_dir, "index.dim")
    documents = info.get("document_encoder_sha256") or info.get("model_sha256")  # older manifests: one model
    if model.query_side:
        # a query-side model serves any index of the document encoder it was trained against
        if model.document_fingerprint != documents:
            raise _mismatch(
                f"query-side model '{name}' was trained against the document encoder with fingerprint "
                f"{model.document_fingerprint[:12]}, but this index's vectors come from '{info.get('model')}' "
                f"(fingerprint {str(documents)[:12]}): rebuild the index with that encoder or train against this one",
                index_dir, "index.document_encoder_sha256",
            )
        return
    fingerprint = model.fingerprint
    if fingerprint not in (info.get("model_sha256"), documents):
        raise _mismatch(
            f"model '{name}' (weights fingerprint {str(fingerprint)[:12]}) is not the model the index was built with "
            f"('{info.get('model')}', fingerprint {str(info.get('model_sha256'))[:12]})",
            index_dir, "index.model_sha256",
        )


def open_index(
    index_dir: str | Path,
    model: "str | ModelConfig | LoadedModel | None" = None,
    *,
    load_query_model: bool = True,
) -> OpenIndex:
    """Open an index folder for searching.

    Checks the manifest, every file's sha256, the searcher's size and dimension, and that the
    query model (``model``, default: the manifest's) has the dimension and weights fingerprint
    the index was built with. Any difference is an :class:`IndexMismatchError`.
    """
    from .search import load_searcher

    index_dir = Path(index_dir)
    manifest = read_index_manifest(index_dir)
    verify_index_files(index_dir, manifest)
    info = manifest["index"]
    try:
        searcher = load_searcher(index_dir / SEARCHER_DIR)
    except IndexMismatchError:
        raise
    except Exception as err:  # a library's own message for a file it cannot parse
        msg = first_line(err)
        raise IndexMismatchError(f"cannot load the vector index ({msg})", file=index_dir / SEARCHER_DIR) from None
    if len(searcher) != info.get("count"):
        raise _mismatch(f"vector index holds {len(searcher)} vectors but the manifest says {info.get('count')}", index_dir, "index.count")
    if searcher.dim != info.get("dim"):
        raise _mismatch(f"vector index has dimension {searcher.dim} but the manifest says {info.get('dim')}", index_dir, "index.dim")
    passages = PassageStore(index_dir / PASSAGES_FILE)
    if len(passages) != len(searcher) or any(pid not in passages for pid in searcher.ids):
        raise _mismatch(f"passage store ({len(passages)} passages) does not match the vector index's id map", index_dir, "index.count")

    lexical, lexical_ids, fusion = None, [], None
    if (index_dir / BM25_DIR).is_dir():
        lexical, lexical_ids = _open_bm25(index_dir, passages)
        fusion = read_fusion(index_dir)
    loaded = None
    if isinstance(model, LoadedModel):
        loaded = model
        cfg = index_model_config(index_dir, manifest, str(model.path or "model"))
    else:
        cfg = index_model_config(index_dir, manifest, model)
        if load_query_model:
            loaded = load_model(cfg)
    if loaded is not None:
        check_model_matches(index_dir, manifest, loaded, cfg.name)
        loaded.st.max_seq_length = info.get("max_seq_length") or loaded.max_seq_length
    return OpenIndex(path=index_dir, manifest=manifest, searcher=searcher, passages=passages, model=loaded, model_cfg=cfg,
                     info=info, lexical=lexical, lexical_ids=lexical_ids, fusion=fusion)


def _open_bm25(index_dir: Path, passages: PassageStore) -> tuple[Any, list[str]]:
    from .lexical import load_bm25

    try:
        ids = json.loads((index_dir / BM25_DIR / "ids.json").read_text(encoding="utf-8"))
        retriever = load_bm25(index_dir / BM25_DIR)
    except Exception as err:  # a library's own message for a file it cannot parse
        msg = first_line(err)
        raise IndexMismatchError(f"cannot load the BM25 index ({msg}); rebuild with --hybrid", file=index_dir / BM25_DIR) from None
    if len(ids) != len(passages) or int(retriever.scores["num_docs"]) != len(ids) or any(pid not in passages for pid in ids):
        raise _mismatch("BM25 index does not match the passage store; rebuild with --hybrid", index_dir, "bm25")
    return retriever, ids


def missing_bm25_error(index_dir: Path) -> IndexMismatchError:
    return IndexMismatchError("index has no BM25 part for hybrid search; rebuild it with 'embedtune index build --hybrid' "
                              "(the passages' embeddings come from the cache)", file=index_dir)


def read_fusion(index_dir: str | Path) -> FusionConfig:
    """The fusion settings of a hybrid index (``fusion.json``)."""
    from .config import build_config

    path = Path(index_dir) / FUSION_FILE
    if not path.is_file():
        return FusionConfig()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IndexMismatchError("fusion settings are not valid JSON; rewrite them with 'embedtune index fusion'", file=path) from None
    return build_config(FusionConfig, data.get("fusion", data) if isinstance(data, dict) else data, source=str(path))


def write_fusion(index_dir: str | Path, fusion: FusionConfig, *, chosen_on: dict[str, Any] | None = None) -> Path:
    """Store the fusion settings of a hybrid index (atomically); ``chosen_on`` says where they
    come from (the dev signal and its curve)."""
    from .io import atomic_write_json

    index_dir = Path(index_dir)
    if not (index_dir / BM25_DIR).is_dir():
        raise missing_bm25_error(index_dir)
    path = index_dir / FUSION_FILE
    atomic_write_json(path, {"fusion": fusion.model_dump(mode="json"), "chosen_on": chosen_on or {"source": "default"}})
    return path


def query_index(
    index: OpenIndex,
    queries: list[str],
    k: int = 10,
    *,
    with_text: bool = True,
    show_progress: bool = False,
    hybrid: bool = False,
    fusion: FusionConfig | None = None,
) -> list[list[Hit]]:
    """Top-``k`` passages for each query (encoded with the index's query prompt), best first.

    ``hybrid``: the dense and BM25 top ``fusion.depth`` are fused (``fusion`` default: the
    index's ``fusion.json``); a hit's score is then the fused score.
    """
    from . import encoding

    if index.model is None:
        raise IndexMismatchError("index was opened without a query model", file=index.path)
    if hybrid and index.lexical is None:
        raise missing_bm25_error(index.path)
    if not queries:
        return []
    k = max(1, min(int(k), index.count))
    fusion = fusion or index.fusion or FusionConfig()
    t0 = time.perf_counter()
    vectors = encoding.encode_texts(
        index.model, list(queries), prompt=index.model_cfg.query_prompt, batch_size=index.model_cfg.batch_size,
        precision=index.model_cfg.precision, show_progress=show_progress, task="query",
    )
    t1 = time.perf_counter()
    ranked = ranked_search(index.searcher, vectors, k, lexical=(index.lexical, index.lexical_ids, list(queries)) if hybrid else None,
                           fusion=fusion, timings=index.last_timings)
    index.last_timings.update({"encode_s": t1 - t0, "search_s": time.perf_counter() - t1})
    results: list[list[Hit]] = []
    for q_ranked in ranked:
        hits = []
        for rank, (pid, score) in enumerate(q_ranked, start=1):  # an ANN backend may return fewer than k
            if with_text:
                row = index.passages.get(pid)
                hits.append(Hit(rank, score, pid, row["doc_id"], row["position"], row["title"], row["text"]))
            else:
                doc_id, position = index.passages.source(pid)
                hits.append(Hit(rank, score, pid, doc_id, position, "", ""))
        results.append(hits)
    return results


def ranked_search(
    searcher: "Searcher",
    vectors: Any,
    k: int,
    *,
    lexical: tuple[Any, list[str], list[str]] | None = None,
    fusion: FusionConfig | None = None,
    timings: dict[str, float] | None = None,
) -> list[list[tuple[str, float]]]:
    """(passage id, score) of the top ``k`` per query vector, best first; with ``lexical`` =
    (bm25s retriever, its row ids, the query texts), BM25 fused with the dense ranking."""
    fusion = fusion or FusionConfig()
    count = len(searcher)
    scores, found = searcher.search(vectors, min(max(k, fusion.depth), count) if lexical else min(k, count))
    ranked = [[(pid, float(s)) for s, pid in zip(q_scores, q_ids) if pid] for q_scores, q_ids in zip(scores, found)]
    if lexical is None:
        return ranked
    from .lexical import bm25_retrieve

    retriever, ids, texts = lexical
    t0 = time.perf_counter()
    bm25 = bm25_retrieve(retriever, texts, min(fusion.depth, count))
    if timings is not None:
        timings["bm25_s"] = time.perf_counter() - t0
    return [
        sorted(fuse_scores(dict(dense), {ids[r]: float(s) for r, s in zip(rows, row_scores)}, fusion).items(),
               key=lambda kv: (-kv[1], kv[0]))[:k]
        for dense, (rows, row_scores) in zip(ranked, bm25)
    ]


# --------------------------------------------------------------------------- building


def _chunk(cfg: IndexConfig, model: LoadedModel) -> tuple[dict, list[Passage], Any, int]:
    c = cfg.corpus
    docs = load_corpus(c.path, id_field=c.id_field, title_field=c.title_field, text_field=c.text_field)
    max_tokens = c.chunking.max_tokens or model.max_seq_length
    passages, report = split_into_passages(
        docs, model.st.tokenizer, max_tokens, overlap=c.chunking.overlap, max_passages_per_doc=c.chunking.max_passages_per_doc,
    )
    return docs, passages, report, max_tokens


def _index_info(cfg: IndexConfig, model: LoadedModel, backend: str, count: int, max_tokens: int) -> dict[str, Any]:

    mi = model_info(cfg.model, model)
    return {
        "model": cfg.model.name,
        "model_path": mi["path"],
        "model_sha256": mi["sha256"],
        # where the vectors come from: the model itself, or the base encoder of a query-side model
        "document_encoder_sha256": model.document_fingerprint,
        "query_side": bool(model.query_side),
        "query_prompt": cfg.model.query_prompt,
        "document_prompt": cfg.model.document_prompt,
        "max_seq_length": mi["max_seq_length"],
        "precision": model.precision,
        "dim": mi["dim"],
        "metric": METRIC,
        "normalized": True,
        "count": count,
        "backend": backend,
        "chunking": {**cfg.corpus.chunking.model_dump(mode="json"), "effective_max_tokens": max_tokens},
    }


def _inputs(cfg: IndexConfig, fingerprint: str) -> dict[str, str]:
    return {"corpus": hash_path(cfg.corpus.path), "model": fingerprint}


def _new_temp_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}.build-", dir=out_dir.parent))


def _remove_stale_builds(out_dir: Path) -> None:
    """Temp folders of killed builds of this index (never another index's)."""
    # Match the exact shape of our temp names (mkdtemp adds 8 characters), so that the build of
    # a sibling index such as "idx.v2" (".tmp-idx.v2.build-...") is never taken for ours.
    ours = re.compile(rf"{re.escape(TMP_PREFIX + out_dir.name)}\.(build|old)-[a-z0-9_]{{8}}")
    if out_dir.parent.is_dir():
        for p in out_dir.parent.glob(f"{TMP_PREFIX}{out_dir.name}.*"):
            if ours.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp folder over ``out_dir``. A folder cannot be atomically
    renamed over a non-empty one, so the old index is first renamed aside (a ``.tmp-`` name
    that the next build removes) -- at every instant ``out_dir`` is complete or absent."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_index_folder(
    tmp: Path,
    searcher: "Searcher",
    passages: list[dict[str, Any]],
    *,
    cfg: IndexConfig,
    key: str,
    inputs: dict[str, str],
    model: LoadedModel,
    info: dict[str, Any],
    metrics: dict[str, Any],
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
    hybrid: bool = False,
    fusion: FusionConfig | None = None,
) -> dict[str, Any]:
    searcher.save(tmp / SEARCHER_DIR)
    atomic_write_jsonl(tmp / PASSAGES_FILE, passages)
    if hybrid:
        _write_bm25(tmp, passages)
        info = {**info, "hybrid": True}
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        rel = path.relative_to(tmp).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = write_manifest(
        tmp, stage=STAGE, key=key, config=cfg, inputs=inputs, models={"embedding": model_info(cfg.model, model)},
        metrics=metrics, timings=timings, artifacts=sorted(files), extra={"index": info, "files": files, **(extra or {})},
    )
    if hybrid:  # after the manifest: a setting, not hashed (see the module docstring)
        write_fusion(tmp, fusion or FusionConfig())
    return manifest


def _write_bm25(folder: Path, passages: list[dict[str, Any]]) -> None:
    """BM25 over the same passage texts the vectors were made of (title + text), in store order."""
    from .io import atomic_write_json
    from .lexical import bm25_index, save_bm25

    texts = [f"{p['title']} {p['text']}".strip() for p in passages]  # Passage.full_text
    save_bm25(bm25_index(texts), folder / BM25_DIR)
    atomic_write_json(folder / BM25_DIR / "ids.json", [p["id"] for p in passages])


def _prepare(out_dir: Path, key: str, overwrite: bool, cfg: IndexConfig, inputs: dict[str, str]) -> dict[str, Any] | None:
    """The existing complete manifest when this exact build is already there; raises when the
    folder holds something else (unless ``overwrite``)."""
    from .run_folder import read_manifest, same_work

    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise RunDirError("--out exists and is not a folder", file=out_dir)
    try:
        manifest = read_manifest(out_dir)
    except RunDirError:
        if overwrite:
            return None
        raise
    if manifest is None:
        if any(out_dir.iterdir()) and not overwrite:
            raise RunDirError("folder is not empty and holds no index; choose another --out or pass --overwrite", file=out_dir)
        return None
    if overwrite:
        return None
    if manifest.get("stage") != STAGE:
        raise RunDirError(f"folder holds a '{manifest.get('stage')}' run, not an index; choose another --out", file=out_dir / MANIFEST)
    if not same_work(manifest, key, cfg, inputs):
        raise RunDirError(
            "folder holds an index of another config, model or corpus; pass --overwrite to rebuild it, or 'embedtune index update' for a changed corpus",
            file=out_dir / MANIFEST, field="key",
        )
    return manifest if manifest.get("status") == "complete" else None


def build_index(
    cfg: IndexConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    model: "LoadedModel | None" = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Load, chunk and encode ``cfg.corpus`` and write a complete index folder at ``out_dir``.

    Returns a summary dict (counts, timings, docs/s). An identical finished build in
    ``out_dir`` (same config, corpus and model) is kept and reported with ``skipped: True``.
    """
    from . import encoding
    from .search import check_backend, make_searcher

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    backend = check_backend(cfg.backend)  # before the model loads: a missing GPU fails fast
    if model is None:
        model = load_model(cfg.model)
    elif cfg.model.max_seq_length:
        model.st.max_seq_length = cfg.model.max_seq_length
    fingerprint = model.fingerprint
    inputs = _inputs(cfg, fingerprint)
    key = stage_key(cfg, inputs)
    existing = _prepare(out_dir, key, overwrite, cfg, inputs)
    if existing is not None:
        return _summary(out_dir, existing, skipped=True)
    _remove_stale_builds(out_dir)
    t_load = time.perf_counter()
    docs, passages, report, max_tokens = _chunk(cfg, model)
    t_chunk = time.perf_counter()
    ids = [p.id for p in passages]
    vectors = encoding.encode_corpus(model, cfg.model, ids, [p.full_text for p in passages], cache_dir=cfg.cache_dir, show_progress=show_progress)
    t_encode = time.perf_counter()
    searcher = make_searcher(backend=backend, dim=vectors.shape[1], **cfg.backend_options)
    searcher.add(ids, vectors)
    t_index = time.perf_counter()
    info = _index_info(cfg, model, getattr(searcher, "backend", backend), len(ids), max_tokens)
    metrics = {
        "documents": len(docs), "passages": len(ids), "split_documents": report.split_documents,
        "truncated_documents": report.truncated_documents, "dropped_passages": report.dropped_passages,
    }
    timings = {
        "model_load": t_load - t0, "load_and_chunk": t_chunk - t_load, "encode": t_encode - t_chunk,
        "add_to_index": t_index - t_encode,
    }
    tmp = _new_temp_dir(out_dir)
    try:
        timings["total"] = time.perf_counter() - t0
        timings["docs_per_s"] = len(docs) / max(timings["total"] - timings["model_load"], 1e-9)
        manifest = _write_index_folder(
            tmp, searcher, [passage_record(p) for p in passages], cfg=cfg, key=key, inputs=inputs, model=model,
            info=info, metrics=metrics, timings=timings, hybrid=cfg.hybrid, fusion=cfg.fusion,
        )
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(out_dir, manifest, skipped=False)


def _summary(out_dir: Path, manifest: dict[str, Any], *, skipped: bool) -> dict[str, Any]:
    info = manifest["index"]
    return {
        "index": str(out_dir),
        "skipped": skipped,
        "model": info["model"],
        "model_sha256": info["model_sha256"],
        "backend": info["backend"],
        "hybrid": bool(info.get("hybrid")),
        "dim": info["dim"],
        "count": info["count"],
        **manifest.get("metrics", {}),
        **({"update": manifest["update"]} if "update" in manifest else {}),
        "timings": manifest.get("timings", {}),
    }


# --------------------------------------------------------------------------- incremental update


def update_index(
    index_dir: str | Path,
    corpus: str | Path | CorpusConfig,
    *,
    model: "str | LoadedModel | None" = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Bring an index up to date with a new version of its corpus.

    Passages are compared by id and content hash: new and changed ones are encoded (and
    only those), deleted and changed ones are removed from the vector index, unchanged ones
    keep their vectors. The corpus is chunked with the index's own chunking settings and the
    passage store and id map are rewritten in the new corpus' order, so the folder equals a
    fresh build on the new corpus. Counts (added / changed / removed / unchanged) go into the
    summary and the manifest.
    """
    from . import encoding

    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    index = open_index(index_dir, model)
    manifest, info = index.manifest, index.info
    old_cfg = IndexConfig.model_validate(manifest["config"])
    if isinstance(corpus, CorpusConfig):
        corpus_cfg = corpus.model_copy(update={"chunking": old_cfg.corpus.chunking})
    else:
        corpus_cfg = old_cfg.corpus.model_copy(update={"path": str(corpus)})
    # The model is the manifest's (checked by open_index); keep its recorded name so the key
    # of an updated index equals the key of a fresh build with the same command.
    cfg = old_cfg.model_copy(update={"corpus": corpus_cfg})
    loaded = index.model
    t_open = time.perf_counter()
    chunk_cfg = cfg.model_copy(update={"corpus": corpus_cfg.model_copy(update={"chunking": ChunkingConfig(
        **{**corpus_cfg.chunking.model_dump(), "max_tokens": info["chunking"]["effective_max_tokens"]})})})
    docs, passages, report, max_tokens = _chunk(chunk_cfg, loaded)
    t_chunk = time.perf_counter()

    old_hashes = index.passages.hashes
    records = [passage_record(p) for p in passages]
    new_hashes = {r["id"]: r["sha256"] for r in records}
    added = [r for r in records if r["id"] not in old_hashes]
    changed = [r for r in records if r["id"] in old_hashes and old_hashes[r["id"]] != r["sha256"]]
    removed = [pid for pid in old_hashes if pid not in new_hashes]
    unchanged = len(records) - len(added) - len(changed)
    to_encode = added + changed
    full_texts = {p.id: p.full_text for p in passages}
    searcher = index.searcher
    if removed or changed:
        searcher.remove(removed + [r["id"] for r in changed])
    if to_encode:
        vectors = encoding.encode_texts(
            loaded, [full_texts[r["id"]] for r in to_encode], prompt=index.model_cfg.document_prompt,
            batch_size=index.model_cfg.batch_size, precision=info.get("precision", "auto"), show_progress=show_progress,
        )
        searcher.add([r["id"] for r in to_encode], vectors)
    index.passages.close()
    t_encode = time.perf_counter()

    counts = {"added": len(added), "changed": len(changed), "removed": len(removed), "unchanged": unchanged, "encoded": len(to_encode)}
    new_info = {**info, "count": len(records)}
    metrics = {
        "documents": len(docs), "passages": len(records), "split_documents": report.split_documents,
        "truncated_documents": report.truncated_documents, "dropped_passages": report.dropped_passages,
    }
    timings = {"open": t_open - t0, "load_and_chunk": t_chunk - t_open, "encode_and_update": t_encode - t_chunk}
    inputs = _inputs(cfg, info["model_sha256"])
    history = list(manifest.get("update_history", [])) + [{"corpus": corpus_cfg.path, **counts, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    tmp = _new_temp_dir(index_dir)
    try:
        timings["total"] = time.perf_counter() - t0
        new_manifest = _write_index_folder(
            tmp, searcher, records, cfg=cfg, key=stage_key(cfg, inputs), inputs=inputs, model=loaded, info=new_info,
            metrics=metrics, timings=timings, extra={"update": counts, "update_history": history},
            hybrid=index.lexical is not None, fusion=index.fusion,
        )
        _swap_into_place(tmp, index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(index_dir, new_manifest, skipped=False)


__all__ = ["IndexConfig", "Hit", "OpenIndex", "PassageStore", "build_index", "update_index", "open_index", "query_index", "read_index_manifest"]
