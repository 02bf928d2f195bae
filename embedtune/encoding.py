"""Texts -> L2-normalised float32 vectors, and the on-disk cache of corpus embeddings.

Encoding goes through ``SentenceTransformer.encode`` (which already sorts each call's texts by
length so that batches carry little padding). What this module adds:

- precision: ``bf16`` runs a bfloat16 copy of the model (CPUs with AVX-512-BF16/AMX, CUDA),
  ``fp16`` a float16 copy (CUDA only), ``int8`` the transformer as a dynamically quantised ONNX
  graph in onnxruntime (CPU; :mod:`embedtune.onnx_model`); ``auto`` picks the measured default
  (``AUTO_PRECISION_CPU`` / ``AUTO_PRECISION_CUDA``). On a CPU without native bf16 instructions
  bf16 falls back to fp32 (emulated bf16 is slower than fp32), with a log line;
- the embedding cache: embeddings are stored as ``.npy`` under a key made of the model's
  weights fingerprint, the prompt, the max sequence length, the precision actually used and a hash
  of the ids and texts. Anything that changes the vectors changes the key, so a stale entry is
  never read; entries are written atomically (temp + rename), so a killed run leaves none half
  written. Evaluation, mining and indexing share it: the base model's corpus is encoded once.
  Evaluation caches its query embeddings the same way (:func:`encode_queries`), so re-running an
  evaluation encodes nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import progress
from .config import ModelConfig
from .io import TMP_PREFIX, atomic_save_npy, atomic_write_json
from .models import LoadedModel
from .precision import resolve_precision

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("embedtune")

CACHE_FORMAT = 1
# A temp file of the cache older than this is left by a killed run: an entry is written in
# seconds (after the encoding, not during it), so no live writer owns such a file.
STALE_TEMP_SECONDS = 3600


def default_cache_dir() -> Path:
    env = os.environ.get("EMBEDTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "embedtune" / "embeddings"


def _model_for_precision(model: "SentenceTransformer", precision: str) -> "SentenceTransformer":
    """The model itself for fp32; its int8 ONNX twin for int8; a fresh half-precision copy otherwise.

    A cast copy ran 2.5x faster than fp32 on this Zen 5 CPU, torch.autocast only 1.8x. The copy
    is not kept: a copy cached on the model would go stale when the model is trained further.
    """
    if precision == "fp32":
        return model
    if precision == "int8":
        from .onnx_model import onnx_encoder

        if not str(model.device).startswith("cpu"):
            from .errors import ConfigError

            raise ConfigError("precision 'int8' runs on the CPU (onnxruntime); use 'fp16' on CUDA", field="precision")
        return onnx_encoder(model, default_cache_dir() / "onnx")
    import torch

    if precision == "fp16" and not str(model.device).startswith("cuda"):
        from .errors import ConfigError

        raise ConfigError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU", field="precision")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return copy.deepcopy(model).to(dtype)


ENCODE_SLICE_BATCHES = 16  # batches per call to encode(): the bar advances this often


def _text_length(text: str) -> int:
    """The length sentence-transformers sorts by (``BaseModel._input_length`` of a string)."""
    return len(text)


def encode_texts(
    model: "LoadedModel | SentenceTransformer",
    texts: Sequence[str],
    *,
    prompt: str = "",
    batch_size: int = 64,
    precision: str = "auto",
    show_progress: bool = True,
    task: str = "document",
) -> np.ndarray:
    """Encode ``texts`` (with ``prompt`` prepended) into an (n, dim) float32 array of unit vectors.

    ``task`` ("query" or "document") picks the route of an asymmetric model (a query-side model
    of :mod:`embedtune.query_side`); an ordinary model ignores it. ``model`` is a loaded model, or
    a bare sentence-transformers model being trained (nothing is cached, so no identity is needed).
    """
    st = model.st if isinstance(model, LoadedModel) else model
    dim = st.get_embedding_dimension()
    if len(texts) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    precision = resolve_precision(precision, str(st.device))
    runner = _model_for_precision(st, precision)
    # Longest first, in slices of whole batches, as sentence-transformers sorts inside encode():
    # the batches are the ones one encode() call makes, and the slices advance embedtune's bar
    # (sentence-transformers' own "Batches" bar stays off).
    order = np.argsort([-_text_length(t) for t in texts], kind="stable")
    vectors = np.empty((len(texts), dim), dtype=np.float32)
    slice_size = batch_size * ENCODE_SLICE_BATCHES
    with progress.step(f"Encoding {task}s", len(texts), enabled=show_progress) as bar:
        for start in range(0, len(texts), slice_size):
            part = order[start:start + slice_size]
            vectors[part] = runner.encode(
                [texts[i] for i in part],
                prompt=prompt or None,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                task=task,
            )
            bar.advance(len(part))
    if precision != "fp32":
        # normalised by the half-precision (or int8) model (about 3 significant digits): unit length again
        # in float32, so that inner products are cosines as exact as fp32 vectors give them
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def corpus_hash(ids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        h.update(doc_id.encode("utf-8"))
        h.update(b"\x00")
        h.update(text.encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()


def task_prompt(model_cfg: ModelConfig, task: str) -> str:
    """The prompt of ``task`` texts: the document prompt for "document", else the query prompt."""
    return model_cfg.document_prompt if task == "document" else model_cfg.query_prompt


def cache_key(model: LoadedModel, model_cfg: ModelConfig, ids: Sequence[str], texts: Sequence[str], *,
              task: str = "document") -> str:
    """Hash of everything that decides the vectors of ``task`` ("document" or "query") texts.

    Documents are keyed by the document encoder's fingerprint: a query-side model shares its
    base model's cached corpus vectors (they are the same vectors), so it never re-encodes them.
    """
    parts = {
        "format": CACHE_FORMAT,
        "model": model.document_fingerprint if task == "document" else model.fingerprint,
        "prompt": task_prompt(model_cfg, task),
        "max_seq_length": model.max_seq_length,
        "precision": resolve_precision(model_cfg.precision, model.device),
        "corpus": corpus_hash(ids, texts),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(
    model: LoadedModel, model_cfg: ModelConfig, ids: Sequence[str], texts: Sequence[str],
    cache_dir: str | Path | None = None, *, task: str = "document",
) -> Path:
    """Where the embeddings of these texts (a corpus, or ``task="query"`` queries) under this
    model and settings are (or would be) cached."""
    key = cache_key(model, model_cfg, ids, texts, task=task)
    return (Path(cache_dir) if cache_dir else default_cache_dir()) / key[:2] / f"{key}.npy"


def encode_corpus(
    model: LoadedModel,
    model_cfg: ModelConfig,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Corpus embeddings (float32, unit length, memory-mapped) from the cache, or encoded and cached."""
    return _encode_cached(model, model_cfg, ids, texts, "document", cache_dir, show_progress)


def encode_queries(
    model: LoadedModel,
    model_cfg: ModelConfig,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Query embeddings (with the query prompt) through the same cache as :func:`encode_corpus`.

    For fixed benchmark queries (evaluation): re-running an evaluation then encodes nothing.
    """
    return _encode_cached(model, model_cfg, ids, texts, "query", cache_dir, show_progress)


def _encode_cached(
    model: LoadedModel, model_cfg: ModelConfig, ids: Sequence[str], texts: Sequence[str],
    task: str, cache_dir: str | Path | None, show_progress: bool,
) -> np.ndarray:
    what = "corpus" if task == "document" else "query"
    prompt = task_prompt(model_cfg, task)
    path = cache_path(model, model_cfg, ids, texts, cache_dir, task=task)
    dim = model.dim
    if path.is_file():
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
            if vectors.shape == (len(ids), dim) and vectors.dtype == np.float32:
                log.info("%s embeddings from cache (%d x %d): %s", what, len(ids), dim, path)
                return vectors
        except (ValueError, OSError):
            pass
        log.warning("ignoring unreadable cache entry %s", path)
    vectors = encode_texts(
        model, texts, prompt=prompt, batch_size=model_cfg.batch_size,
        precision=model_cfg.precision, show_progress=show_progress, task=task,
    )
    _remove_stale_temp_files(path.parent)
    atomic_save_npy(path, vectors)
    atomic_write_json(path.with_suffix(".json"), {
        "what": what, "count": len(ids), "dim": dim, "model": str(model.path),
        "prompt": prompt, "max_seq_length": model.max_seq_length,
        "precision": resolve_precision(model_cfg.precision, model.device),
    })
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files a killed run left in this cache folder (see :data:`STALE_TEMP_SECONDS`)."""
    if not folder.is_dir():
        return
    cutoff = time.time() - STALE_TEMP_SECONDS
    for p in folder.glob(TMP_PREFIX + "*"):
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
        except FileNotFoundError:
            pass
