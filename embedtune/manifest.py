"""Run folders: every stage writes its artifacts plus a ``manifest.json`` that says how they
were made (config, inputs' hashes, package versions, models, metrics, timings).

The manifest's ``key`` is a hash of the stage's config and inputs. A stage whose key matches a
completed manifest in its folder is skipped; a folder holding another config's results is an
error (unless the user asks to overwrite), so results from two configs never mix.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .errors import RunDirError
from .io import atomic_write_json, sha256_file, sha256_json

MANIFEST = "manifest.json"
TRACKED_PACKAGES = (
    "embedtune", "torch", "sentence-transformers", "transformers", "faiss-cpu", "faiss-gpu",
    "numba", "numpy", "beir", "bm25s", "datasets", "accelerate",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def hash_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names + contents), for manifests."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        parts = {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".tmp-")}
        return sha256_json(parts)
    return "missing"


def config_dict(config: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)


def stage_key(config: BaseModel | dict[str, Any], inputs: dict[str, str]) -> str:
    """Identity of a stage's work: same config and same input hashes -> same results."""
    return sha256_json({"config": config_dict(config), "inputs": inputs})


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    import json

    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError("manifest is corrupt (not valid JSON); delete the folder or pass --overwrite", file=path) from None


def prepare_run_folder(folder: str | Path, stage: str, key: str, *, overwrite: bool = False) -> bool:
    """Make ``folder`` ready for ``stage``. Returns True when the same work is already complete.

    Raises :class:`RunDirError` when the folder holds another stage's or another config's
    results, unless ``overwrite``.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        folder.mkdir(parents=True, exist_ok=True)
        return False
    if overwrite:
        return False
    if manifest.get("stage") != stage:
        raise RunDirError(f"folder holds a '{manifest.get('stage')}' run, not '{stage}'; choose another --out or pass --overwrite", file=folder / MANIFEST)
    if manifest.get("key") != key:
        raise RunDirError("folder holds results of another config or other inputs; choose another --out or pass --overwrite", file=folder / MANIFEST, field="key")
    return manifest.get("status") == "complete"


def write_manifest(
    folder: str | Path,
    *,
    stage: str,
    key: str,
    config: BaseModel | dict[str, Any],
    inputs: dict[str, str],
    models: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    artifacts: list[str] | None = None,
    status: str = "complete",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    manifest = {
        "stage": stage,
        "status": status,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "config": config_dict(config),
        "inputs": inputs,
        "models": models or {},
        "metrics": metrics or {},
        "timings": timings or {},
        "artifacts": artifacts or [],
        "versions": package_versions(),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest
