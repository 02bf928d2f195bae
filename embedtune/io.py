"""Atomic file writes and content hashes.

Every artifact is written to a temporary file in the same folder and then renamed over the
target (``os.replace`` is atomic on POSIX), so a killed run leaves either the old file or the
new one, never half of one. Temp files carry a ``.tmp-`` prefix so they can be found and removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

TMP_PREFIX = ".tmp-"


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    def write_synced(tmp: Path) -> None:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write_with(path, write_synced)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _atomic(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    def write(fh):
        for row in rows:
            fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    return _atomic(path, write, "wb")


def atomic_save_npy(path: Path, array: np.ndarray) -> Path:
    return _atomic(path, lambda fh: np.save(fh, array, allow_pickle=False), "wb")


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> Path:
    """Let ``writer`` write to a temp path (for libraries that want a filename), then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_dir(target: Path, writer: Callable[[Path], None]) -> Path:
    """Let ``writer`` fill a temp folder beside ``target`` (``.tmp-<name>-*``), then put it in
    ``target``'s place: a killed run leaves a temp folder, never a half-written ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    try:
        writer(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp files a killed run left behind; returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.rglob(TMP_PREFIX + "*"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def save_model_atomically(model: Any, model_dir: Path) -> None:
    """Save into a temp folder next to ``model_dir``, then swap it in with renames. ``model``: a
    sentence-transformers model, or a loaded model (its query-side record is saved beside it)."""
    from .models import LoadedModel

    record = model.query_side if isinstance(model, LoadedModel) else None
    model = model.st if isinstance(model, LoadedModel) else model
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f"{TMP_PREFIX}{model_dir.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(str(tmp), safe_serialization=True)
    if record:  # sentence-transformers saves its modules only
        from .models import QUERY_SIDE_FILE

        atomic_write_json(tmp / QUERY_SIDE_FILE, record)
    old = None
    if model_dir.exists():
        old = model_dir.parent / f"{TMP_PREFIX}{model_dir.name}-old-{os.getpid()}"
        os.replace(model_dir, old)
    os.replace(tmp, model_dir)
    if old is not None:
        shutil.rmtree(old)
