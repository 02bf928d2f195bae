"""Texts -> L2-normalised float32 vectors, and the on-disk cache of corpus embeddings.

Encoding goes through ``SentenceTransformer.encode`` (which already sorts each call's texts by
length so that batches carry little padding). What this module adds:

- precision: ``bf16`` runs a bfloat16 copy of the model (CPUs with AVX-512-BF16/AMX, CUDA),
  ``fp16`` a float16 copy (CUDA only); ``auto`` picks the measured default (``AUTO_PRECISION``);
- the embedding cache: corpus embeddings are stored as ``.npy`` under a key made of the model's
  weights fingerprint, the document prompt, the max sequence length, the precision and a hash of
  the corpus ids and texts. Anything that changes the vectors changes the key, so a stale entry is
  never read; entries are written atomically (temp + rename), so a killed run leaves none half
  written. Evaluation, mining and indexing share it: the base model's corpus is encoded once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .config import ModelConfig
from .io import atomic_save_npy, atomic_write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("embedtune")

CACHE_FORMAT = 1
# precision="auto" on CPU. bf16 must cost less than 0.002 nDCG@10 to become the default
# (measured by eval/bench_encoding.py; see eval/results/encoding.md).
AUTO_PRECISION_CPU = "fp32"
AUTO_PRECISION_CUDA = "fp16"


def default_cache_dir() -> Path:
    env = os.environ.get("EMBEDTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "embedtune" / "embeddings"


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    return AUTO_PRECISION_CUDA if device.startswith("cuda") else AUTO_PRECISION_CPU


def _model_device(model: "SentenceTransformer") -> str:
    return str(getattr(model, "device", "cpu"))


def _model_for_precision(model: "SentenceTransformer", precision: str) -> "SentenceTransformer":
    """The model itself for fp32; a half-precision copy (cached on the model) otherwise."""
    if precision == "fp32":
        return model
    import torch

    if precision == "fp16" and not _model_device(model).startswith("cuda"):
        from .errors import ConfigError

        raise ConfigError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU", field="precision")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    copies = model.__dict__.setdefault("_embedtune_precision_copies", {})
    if precision not in copies:
        copies[precision] = copy.deepcopy(model).to(dtype)
    return copies[precision]


def encode_texts(
    model: "SentenceTransformer",
    texts: Sequence[str],
    *,
    prompt: str = "",
    batch_size: int = 64,
    precision: str = "auto",
    show_progress: bool = True,
) -> np.ndarray:
    """Encode ``texts`` (with ``prompt`` prepended) into an (n, dim) float32 array of unit vectors."""
    dim = model.get_embedding_dimension()
    if len(texts) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    precision = resolve_precision(precision, _model_device(model))
    runner = _model_for_precision(model, precision)
    vectors = runner.encode(
        list(texts),
        prompt=prompt or None,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def corpus_hash(ids: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        h.update(doc_id.encode("utf-8"))
        h.update(b"\x00")
        h.update(text.encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()


def cache_key(model: "SentenceTransformer", model_cfg: ModelConfig, ids: Sequence[str], texts: Sequence[str]) -> str:
    fingerprint = getattr(model, "embedtune_fingerprint", None)
    if fingerprint is None:
        raise ValueError("model was not loaded with embedtune.models.load_model (no fingerprint)")
    parts = {
        "format": CACHE_FORMAT,
        "model": fingerprint,
        "prompt": model_cfg.document_prompt,
        "max_seq_length": model.max_seq_length,
        "precision": resolve_precision(model_cfg.precision, _model_device(model)),
        "corpus": corpus_hash(ids, texts),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def encode_corpus(
    model: "SentenceTransformer",
    model_cfg: ModelConfig,
    ids: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Corpus embeddings (float32, unit length, memory-mapped) from the cache, or encoded and cached."""
    key = cache_key(model, model_cfg, ids, texts)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    path = folder / key[:2] / f"{key}.npy"
    dim = model.get_embedding_dimension()
    if path.is_file():
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
            if vectors.shape == (len(ids), dim) and vectors.dtype == np.float32:
                log.info("corpus embeddings from cache (%d x %d): %s", len(ids), dim, path)
                return vectors
        except (ValueError, OSError):
            pass
        log.warning("ignoring unreadable cache entry %s", path)
    vectors = encode_texts(
        model, texts, prompt=model_cfg.document_prompt, batch_size=model_cfg.batch_size,
        precision=model_cfg.precision, show_progress=show_progress,
    )
    atomic_save_npy(path, vectors)
    atomic_write_json(path.with_suffix(".json"), {"count": len(ids), "dim": dim, "model": getattr(model, "embedtune_path", None)})
    return np.load(path, mmap_mode="r", allow_pickle=False)
