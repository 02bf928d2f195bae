"""Run folders: every stage writes its artifacts plus a ``manifest.json`` that says how they
were made (config, inputs' hashes, package versions, models, metrics, timings, peak memory); a
pipeline run folder (:class:`RunFolder`) holds one such folder per stage and the pipeline's state.
Artifacts are written atomically through :func:`embedtune.io.atomic_write_dir` (folders) and the
``atomic_write_*`` helpers (files).

The manifest's ``key`` is a hash of the stage's config and inputs. A stage whose key matches a
completed manifest in its folder is skipped; a folder holding another config's results is an
error (unless the user asks to overwrite), so results from two configs never mix. A folder made
before a release added a setting has another key but the same work when the new setting is at
its default: :func:`same_work` tells them apart from the manifest's recorded config.
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
from .peak_memory import peak_rss_mb

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


def _leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """A nested settings dict as {path: value}; lists and empty dicts are values."""
    if isinstance(value, dict) and value:
        return {p: v for key, item in value.items() for p, v in _leaves(item, (*path, key)).items()}
    return {path: value}


def same_work(manifest: dict[str, Any], key: str, config: BaseModel, inputs: dict[str, str], ignore: tuple[str, ...] = ()) -> bool:
    """Whether a manifest records the work of ``config`` on ``inputs``: the same key, or a key
    that differs only by settings added since the manifest was written.

    The key hashes every setting, defaults included, so a release that adds a setting changes
    the key of every folder made before it. Hashing only the settings the user chose would hide
    a changed default instead. So the recorded config decides: every setting it holds must have
    the same value now (a changed default is other work), and a setting it lacks -- added since --
    must be at its default (the behaviour the folder was made with). Settings in ``ignore`` (a
    cache folder, a chunk size) do not change results.
    """
    if manifest.get("key") == key:
        return True
    recorded = manifest.get("config")
    if not isinstance(recorded, dict) or manifest.get("inputs") != inputs:
        return False
    before = {p: v for p, v in _leaves(recorded).items() if p[0] not in ignore}
    now = {p: v for p, v in _leaves(config.model_dump(mode="json")).items() if p[0] not in ignore}
    chosen = _leaves(config.model_dump(mode="json", exclude_defaults=True))
    if any(p not in now or now[p] != v for p, v in before.items()):
        return False
    return not any(p in chosen for p in now.keys() - before.keys())


def prepare_run_folder(folder: str | Path, stage: str, key: str, *, config: BaseModel, inputs: dict[str, str],
                       ignore: tuple[str, ...] = (), overwrite: bool = False) -> bool:
    """Make ``folder`` ready for ``stage``. Returns True when the same work is already complete.

    Raises :class:`RunDirError` when the folder holds another stage's or another config's
    results, unless ``overwrite``. A folder whose key differs only by settings added since it was
    made (at their defaults) is the same work (:func:`same_work`); its manifest is left as it is,
    so later stages see no change.
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
    if not same_work(manifest, key, config, inputs, ignore):
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
        "peak_rss_mb": peak_rss_mb(),  # since the stage started, when a pipeline runs it
        "versions": package_versions(),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------- a pipeline's run folder

STATE = "pipeline.json"
# What each stage leaves in RUN/<stage>/ (the report lists them; the stage functions write them)
STAGE_ARTIFACTS = {
    "mine": "mined rows (`dataset/`, `pairs.jsonl`, see embedtune.mined), report.md + plots",
    "train": "tuned model (`model/`), checkpoints while running, training curve",
    "select": "the model that ships (`model/`) and why (`selection.json`)",
    "index": "search index, id map, passage store (+ `bm25/` and the fusion weight)",
    "eval": "metrics.json, report.md, plots, per-query runs",
    "export": "model for your RAG stack, model card, USAGE.md",
}


class RunFolder:
    """The layout of a pipeline run folder ``RUN``: ``RUN/<stage>/`` per stage (each with its
    manifest) and ``RUN/pipeline.json``, the pipeline's state (config and, per stage, the upstream
    hash it ran on, wall time, peak memory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    @property
    def tuned_model(self) -> Path:
        return self.root / "train" / "model"

    @property
    def shipped_model(self) -> Path:
        return self.root / "select" / "model"

    @property
    def state_path(self) -> Path:
        return self.root / STATE

    def read_state(self) -> dict[str, Any]:
        import json

        if not self.state_path.is_file():
            return {}
        try:
            return json.loads(self.state_path.read_text())
        except ValueError:
            raise RunDirError("pipeline state is corrupt; delete the run folder or pass --overwrite", file=self.state_path) from None

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, state)

    def start_run(self, chosen: dict[str, Any], config: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
        """The state of this run: refused when the folder holds a run of other ``chosen``
        settings (unless ``overwrite``), else kept, so unchanged stages are skipped."""
        key = sha256_json(chosen)
        state = self.read_state()
        if state and state.get("config_key") != key and not overwrite:
            raise RunDirError("run folder holds a run of another config; choose another run_dir or pass --overwrite", file=self.state_path, field="config_key")
        if overwrite:
            state = {}
        self.root.mkdir(parents=True, exist_ok=True)
        state.setdefault("stages", {})
        state.update({"config_key": key, "config": config})
        self.write_state(state)
        return state

    def manifest_hash(self, stage: str) -> str | None:
        path = self.stage_dir(stage) / MANIFEST
        return sha256_file(path) if path.is_file() else None

    def upstream_hash(self, stages: tuple[str, ...]) -> str:
        """Hash of these stages' manifests: it changes when any of them re-ran."""
        return sha256_json({s: self.manifest_hash(s) for s in stages})

    def shipped(self) -> str:
        """'base', 'tuned' or 'merged(alpha=...)': what the select stage chose."""
        import json

        path = self.stage_dir("select") / "selection.json"
        return json.loads(path.read_text())["shipped"] if path.is_file() else "tuned"
