"""The run's index, copied into the export with its manifest pointing at the exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import IndexMismatchError, RunDirError
from ..io import atomic_write_json, sha256_file
from ..run_folder import MANIFEST
from .model_folder import CopyLog, copy_file
from .run_parts import RunParts, inside, read_json, safe_relative


def export_index(parts: RunParts, dst: Path, fingerprint: str, exported_fingerprint: str, skipped: list[str]) -> dict[str, Any]:
    """Copy the files the index manifest lists (checking their sha256 on the way) and write its
    manifest with the model path and fingerprint of the exported model (``fingerprint`` is the
    run's model's: the one the index was built with)."""
    manifest = dict(parts.index_manifest or {})
    src = parts.index_dir
    source = src / MANIFEST
    info = manifest.get("index")
    files = manifest.get("files")
    if manifest.get("stage") != "index" or not isinstance(info, dict) or not isinstance(files, dict):
        raise IndexMismatchError("not a complete index manifest", file=source)
    if info.get("model_sha256") != fingerprint:
        raise RunDirError(
            f"the run's index was built with another model (fingerprint {str(info.get('model_sha256'))[:12]}, "
            f"trained model {fingerprint[:12]}); rebuild it with 'embedtune index build --model <run>/train/model'",
            file=source, field="index.model_sha256",
        )
    log_ = CopyLog()
    for rel, expected in files.items():
        relp = safe_relative(rel, source=source, field="files")
        s, d = src / relp, dst / relp
        if not inside(parts.root, s):
            raise RunDirError(f"index file '{rel}' leads outside the run folder (symlink); refusing to copy it", file=s)
        if not copy_file(s, d, parts.root, dst.parent, log_, rel):
            raise IndexMismatchError("index file missing", file=s)
        if sha256_file(d) != expected.get("sha256"):
            raise IndexMismatchError("index file differs from its manifest (corrupt or changed after the build)", file=s)
    skipped.extend(f"index/{s}" for s in log_.skipped)
    fusion = None
    if (src / "bm25").is_dir():
        from ..index import read_fusion, write_fusion

        # the fusion settings are not hashed (a setting): validated here, then written afresh
        fusion = read_fusion(src)
        chosen_on = read_json(src / "fusion.json", "fusion settings").get("chosen_on") if (src / "fusion.json").is_file() else None
        write_fusion(dst, fusion, chosen_on=chosen_on)
    # same vectors: the exported model differs from the run's only by the prompts written into its config
    info = {**info, "model": "../model", "model_path": "../model", "model_sha256": exported_fingerprint}
    if info.get("document_encoder_sha256") == fingerprint:
        info["document_encoder_sha256"] = exported_fingerprint
    manifest["index"] = info
    config = manifest.get("config")
    if isinstance(config, dict) and isinstance(config.get("model"), dict):  # no path of the machine it was built on
        manifest["config"] = {**config, "model": {**config["model"], "name": "../model"}}
    if isinstance(manifest.get("models"), dict) and isinstance(manifest["models"].get("embedding"), dict):
        manifest["models"] = {**manifest["models"], "embedding": {**manifest["models"]["embedding"], "path": "../model"}}
    atomic_write_json(dst / MANIFEST, manifest)
    out = {"count": info.get("count"), "backend": info.get("backend"), "dim": info.get("dim"), "files": len(log_.copied),
           "precision": info.get("precision")}
    if fusion is not None:
        out["fusion"] = fusion.model_dump(mode="json")
    return out
