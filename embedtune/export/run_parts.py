"""Reading the run folder an export is made from -- never outside it: paths from manifests that are
absolute or climb out with ``..`` are refused."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..run_folder import MANIFEST
from ..models import ALIASES, resolve_model_path
from .config import SAMPLE_TEXTS


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies in ``root``."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False



def safe_relative(rel: str, *, source: Path, field: str) -> Path:
    """A relative path from a manifest that may neither be absolute nor climb out with ``..``."""
    p = Path(rel)
    if not rel or p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or (len(rel) > 1 and rel[1] == ":"):
        raise RunDirError(f"refusing path '{rel}': export paths must stay inside the folder (no absolute paths, no '..')", file=source, field=field)
    return p



@dataclass
class RunParts:
    root: Path
    kind: str  # "pipeline" | "train" | "model"
    model_dir: Path
    train_manifest: dict[str, Any] | None = None
    mine_manifest: dict[str, Any] | None = None
    index_dir: Path | None = None
    index_manifest: dict[str, Any] | None = None
    eval_metrics: dict[str, Any] | None = None
    eval_path: Path | None = None
    selection: dict[str, Any] | None = None  # select/selection.json: which weights ship and why
    missing: list[str] = field(default_factory=list)



def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{what} is not valid JSON", file=path) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{what} must be a JSON object", file=path)
    return data



def run_part(root: Path, rel: str) -> Path | None:
    """``root/rel`` if it exists and does not lead outside ``root`` through a symlink."""
    p = root / rel
    if not (p.exists() or p.is_symlink()):
        return None
    if not inside(root, p):
        raise RunDirError(f"'{rel}' is a symlink pointing outside the run folder; refusing to follow it", file=p)
    return p



def _is_model_folder(p: Path) -> bool:
    return (p / "modules.json").is_file() or (p / "config.json").is_file()



def read_run_folder(run_dir: str | Path) -> RunParts:
    """Find the model, manifests, index and evaluation in ``run_dir`` and say what is missing."""
    root = Path(run_dir)
    if not root.is_dir() and str(run_dir) in ALIASES:  # `embedtune export minilm`, as other commands accept it
        root = resolve_model_path(str(run_dir))
    if not root.is_dir():
        raise RunDirError("run folder not found", file=root)
    if (m := run_part(root, "train/model")) is not None and m.is_dir():
        # a pipeline ships what its select stage chose (base, tuned or merged), when it ran
        chosen = run_part(root, "select/model")
        parts = RunParts(root=root, kind="pipeline", model_dir=chosen if chosen is not None and chosen.is_dir() else m)
        selection = run_part(root, "select/selection.json")
        parts.selection = read_json(selection, "selection") if selection else None
        train = run_part(root, "train/" + MANIFEST)
        parts.train_manifest = read_json(train, "train manifest") if train else None
        if train is None:
            parts.missing.append("train/manifest.json (training settings)")
        mine = run_part(root, "mine/" + MANIFEST)
        parts.mine_manifest = read_json(mine, "mine manifest") if mine else None
        if mine is None:
            parts.missing.append("mine/manifest.json (mining settings)")
        index = run_part(root, "index")
        if index is not None and (index / MANIFEST).is_file():
            parts.index_dir = index
            parts.index_manifest = read_json(run_part(root, "index/" + MANIFEST), "index manifest")
        else:
            parts.missing.append("index/ (no index built)")
        metrics = run_part(root, "eval/metrics.json")
        if metrics is not None:
            parts.eval_path = metrics
            parts.eval_metrics = read_json(metrics, "evaluation metrics")
        else:
            parts.missing.append("eval/metrics.json (no evaluation)")
        return parts
    if (m := run_part(root, "model")) is not None and m.is_dir() and _is_model_folder(m):
        parts = RunParts(root=root, kind="train", model_dir=m)
        manifest = run_part(root, MANIFEST)
        parts.train_manifest = read_json(manifest, "train manifest") if manifest else None
        parts.missing += ["mine manifest", "index", "evaluation"] + ([] if manifest else ["train manifest"])
        return parts
    if _is_model_folder(root):
        return RunParts(root=root, kind="model", model_dir=root, missing=["train manifest", "mine manifest", "index", "evaluation"])
    raise RunDirError("no trained model here: expected train/model/ (pipeline run), model/ (train --out) or a sentence-transformers folder", file=root)



def sample_texts(parts: RunParts, n: int) -> list[str]:
    """Real passages of the run's index when there is one (what the model will embed), plus a
    few fixed texts of other lengths."""
    texts: list[str] = []
    store = parts.index_dir / "passages.jsonl" if parts.index_dir is not None else None
    if store is not None and store.is_file() and inside(parts.root, store):
        with open(store, encoding="utf-8") as fh:
            for line in fh:
                if len(texts) >= n:
                    break
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                texts.append(f"{row.get('title', '')} {row.get('text', '')}".strip())
    return texts + list(SAMPLE_TEXTS)
