"""The exported model folder: safetensors and config files copied (no pickles, no symlinks out of the
run), prompts stored, and the copy checked to give the source model's embeddings."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError, RunDirError, first_line
from ..io import atomic_write_json, sha256_file, sha256_json
from ..models import PICKLE_SUFFIXES
from .config import MIN_COSINE
from .run_parts import RunParts, inside, read_json

# What a sentence-transformers folder needs: weights, configs, tokenizer files (vocab.txt,
# merges.txt, sentencepiece .model, tiktoken), and code files of trust_remote_code models.
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".py")



PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")



@dataclass
class CopyLog:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path (why)"



def copy_file(src: Path, dst: Path, run_root: Path, out_root: Path, log_: CopyLog, rel: str) -> bool:
    """Copy one regular file's bytes; a symlink is followed only when its target is inside RUN_DIR."""
    if src.is_symlink() and not inside(run_root, src):
        log_.skipped.append(f"{rel} (symlink pointing outside the run folder, not followed)")
        return False
    if not src.is_file():
        log_.skipped.append(f"{rel} (not a regular file)")
        return False
    if not inside(out_root, dst.parent):
        raise RunDirError(f"refusing to write outside the export folder: {rel}", file=dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst, follow_symlinks=True)
    log_.copied.append(rel)
    return True



def model_files(src: Path, run_root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The files of a sentence-transformers folder worth exporting, as (relative path, source):
    weights (safetensors), configs and tokenizer files, plus "path (why)" for everything left
    out: pickles (``*.bin``, ``*.pt``, ``training_args.bin``...), trainer checkpoints, the
    source's README, symlinks leading outside the run folder, symlinked folders."""
    files: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        here = Path(dirpath)
        for d in sorted(dirnames):
            full = here / d
            if full.is_symlink():
                skipped.append(f"{full.relative_to(src).as_posix()}/ (symlinked folder, not followed)")
                dirnames.remove(d)
            elif d.startswith((".", "checkpoint")) or d in ("onnx", "openvino", "__pycache__"):
                skipped.append(f"{full.relative_to(src).as_posix()}/ (not part of the model)")
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            full = here / name
            rel = full.relative_to(src).as_posix()
            if name.lower() == "readme.md" and here == src:
                continue  # replaced by the generated model card
            if name.startswith(".") or full.suffix not in MODEL_SUFFIXES:
                skipped.append(f"{rel} ({'pickle, never exported' if full.suffix in PICKLE_SUFFIXES else 'not a model file'})")
            elif full.is_symlink() and not inside(run_root, full):
                skipped.append(f"{rel} (symlink pointing outside the run folder, not followed)")
            elif not full.is_file():
                skipped.append(f"{rel} (not a regular file)")
            else:
                files.append((rel, full))
    return files, skipped



def copy_model_folder(src: Path, dst: Path, run_root: Path, out_root: Path) -> CopyLog:
    """Copy what :func:`model_files` selects from ``src`` to ``dst``."""
    files, skipped = model_files(src, run_root)
    log_ = CopyLog(skipped=skipped)
    for rel, full in files:
        copy_file(full, dst / rel, run_root, out_root, log_, rel)
    return log_



def model_source_hash(src: Path, run_root: Path) -> str:
    """Identity of the model an export would copy (the selected files' names and contents)."""
    files, _ = model_files(src, run_root)
    return sha256_json({rel: sha256_file(full) for rel, full in files})



def verify_no_pickles(folder: Path) -> int:
    """No pickle file anywhere (by suffix or magic bytes); every safetensors file parses.
    Returns the number of safetensors files."""
    from safetensors import safe_open

    n = 0
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix in PICKLE_SUFFIXES:
            raise ModelError("exported folder holds a pickle file", file=p)
        if p.suffix == ".safetensors":
            try:
                with safe_open(str(p), framework="np") as fh:
                    list(fh.keys())
            except Exception as err:
                raise ModelError(f"not a valid safetensors file ({type(err).__name__})", file=p) from None
            n += 1
            continue
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head.startswith(PICKLE_MAGIC):
            raise ModelError("exported file looks like a pickle or torch zip archive", file=p)
    if n == 0:
        raise ModelError("exported model has no safetensors weights", file=folder)
    return n



def load_sentence_transformer(path: Path):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device="cpu", local_files_only=True, model_kwargs={"use_safetensors": True})
    except Exception as err:
        msg = first_line(err)
        raise ModelError(f"cannot load model: {msg}", file=path) from None



def check_same_embeddings(source, exported, texts: list[str], prompts: dict[str, str]) -> float:
    """Min cosine between the run's and the exported model's vectors (documents and queries)."""
    cos, _ = embedding_cosines(source, exported, texts, prompts)
    if cos < MIN_COSINE:
        raise ModelError(f"exported model gives other embeddings than the run's model (min cosine {cos:.6f})")
    return cos



def embedding_cosines(source, other, texts: list[str], prompts: dict[str, str]) -> tuple[float, float]:
    """Min and mean cosine between two models' vectors of ``texts``, as documents and as queries
    (the two differ for a query-side model)."""
    cos = []
    for task in ("document", "query"):
        prompt = prompts[task] or None
        a = source.encode(texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True, task=task)
        b = other.encode(texts, prompt=prompt, normalize_embeddings=True, convert_to_numpy=True, task=task)
        a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        cos.append(np.sum(a * b, axis=1))
    allc = np.concatenate(cos)
    return float(allc.min()), float(allc.mean())



def read_prompts(parts: RunParts) -> dict[str, str]:
    """Query/document prompts the model was trained and indexed with (index manifest first)."""
    if parts.index_manifest and isinstance(parts.index_manifest.get("index"), dict):
        info = parts.index_manifest["index"]
        return {"query": info.get("query_prompt", ""), "document": info.get("document_prompt", "")}
    model_cfg = ((parts.train_manifest or {}).get("config") or {}).get("model") or {}
    return {"query": model_cfg.get("query_prompt", "") or "", "document": model_cfg.get("document_prompt", "") or ""}



def store_prompts(model_dir: Path, prompts: dict[str, str]) -> None:
    """Write the query/document prompts into the model's ``config_sentence_transformers.json``, so
    that every loader (``encode_query`` / ``encode_document``, ``prompt_name="query"``) applies them."""
    path = model_dir / "config_sentence_transformers.json"
    config = read_json(path, "sentence-transformers config") if path.is_file() else {}
    stored = {k: v for k, v in (config.get("prompts") or {}).items() if v}
    wanted = {k: v for k, v in prompts.items() if v}
    if stored != wanted:
        atomic_write_json(path, {**config, "prompts": {**(config.get("prompts") or {}), **prompts}})
