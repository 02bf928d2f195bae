"""The ``export`` stage: a run folder -> a self-contained folder to ship (see the package doc)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..io import TMP_PREFIX, atomic_write_json, atomic_write_text, sha256_file
from ..run_folder import MANIFEST, read_manifest, same_work, stage_key, write_manifest
from ..models import check_model_folder, model_fingerprint, read_query_side
from .config import STAGE, ExportConfig
from .fast_models import export_int8, export_onnx
from .index_bundle import export_index
from .model_card import render_model_card
from .model_folder import (
    check_same_embeddings,
    copy_model_folder,
    load_sentence_transformer,
    model_source_hash,
    read_prompts,
    store_prompts,
    verify_no_pickles,
)
from .run_parts import RunParts, inside, read_run_folder, run_part, sample_texts
from .usage import render_usage

log = logging.getLogger("embedtune")



def _new_temp_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}.", dir=out_dir.parent))



def _source_inputs(parts: RunParts) -> dict[str, str]:
    """Hashes of everything an export is made from: same hashes and config -> same export."""
    inputs = {"model": model_source_hash(parts.model_dir, parts.root)}
    for name, rel in (("train_manifest", "train/" + MANIFEST), ("mine_manifest", "mine/" + MANIFEST), ("index_manifest", "index/" + MANIFEST), ("eval_metrics", "eval/metrics.json")):
        p = run_part(parts.root, rel)
        if p is not None and p.is_file():
            inputs[name] = sha256_file(p)
    if parts.kind == "train" and (p := run_part(parts.root, MANIFEST)) is not None:
        inputs["train_manifest"] = sha256_file(p)
    return inputs



def _check_out_location(parts: RunParts, out_dir: Path) -> None:
    """``--out`` may sit in the run folder (the pipeline exports to RUN/export) but must not be
    the run folder, contain it, or lie inside a part the export reads."""
    if os.path.realpath(out_dir) == os.path.realpath(parts.root) or inside(out_dir, parts.root):
        raise RunDirError("--out must not be or contain the run folder", file=out_dir)
    for source in (parts.model_dir, parts.index_dir, parts.eval_path.parent if parts.eval_path else None):
        if source is not None and inside(source, out_dir):
            raise RunDirError(f"--out must not be inside the run folder's {source.name}/", file=out_dir)



def _existing_export(out_dir: Path, key: str, overwrite: bool, cfg: ExportConfig, inputs: dict[str, str]) -> dict[str, Any] | None:
    """The manifest of an identical finished export in ``out_dir``; raises when ``out_dir``
    holds anything else (unless ``overwrite``)."""
    if not out_dir.exists() or overwrite:
        return None
    if not out_dir.is_dir():
        raise RunDirError("--out exists and is not a folder", file=out_dir)
    if not any(out_dir.iterdir()):
        return None
    try:
        manifest = read_manifest(out_dir)
    except RunDirError:
        manifest = None
    if manifest and manifest.get("stage") == STAGE and manifest.get("status") == "complete" and same_work(manifest, key, cfg, inputs):
        return manifest
    raise RunDirError("export folder exists and is not empty (another export or other files); choose another --out or pass --overwrite", file=out_dir)



def export_run(run_dir: str | Path, out_dir: str | Path, cfg: ExportConfig | None = None, *, overwrite: bool = False) -> dict[str, Any]:
    """Export ``run_dir`` into ``out_dir`` (see the module docstring). Returns a summary dict.

    The same config and sources with a finished export in ``out_dir`` return at once
    (``skipped: True``); a killed export leaves no half folder (temp folder + rename)."""
    cfg = cfg or ExportConfig()
    t0 = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    parts = read_run_folder(run_dir)
    _check_out_location(parts, out_dir)
    check_model_folder(parts.model_dir)
    inputs = _source_inputs(parts)
    key = stage_key(cfg, inputs)
    existing = _existing_export(out_dir, key, overwrite, cfg, inputs)
    if existing is not None:
        return {**existing["summary"], "skipped": True, "out": str(out_dir)}
    for p in out_dir.parent.glob(f"{TMP_PREFIX}{out_dir.name}.*") if out_dir.parent.is_dir() else []:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)

    tmp = _new_temp_dir(out_dir)
    try:
        summary = _export_into(parts, tmp, cfg)
        summary["timings"] = {"total": time.perf_counter() - t0}
        summary["skipped"] = False
        write_manifest(
            tmp, stage=STAGE, key=key, config=cfg, inputs=inputs,
            models={"exported": {"path": "model", "sha256": summary["model_sha256"]}},
            metrics={"check_min_cosine": summary["check_min_cosine"], **({"onnx_min_cosine": summary["onnx"]["min_cosine"]} if summary.get("onnx") else {})},
            timings=summary["timings"], artifacts=summary["artifacts"],
            extra={"run_dir": str(run_dir.resolve()), "run_kind": parts.kind, "missing": parts.missing, "summary": summary},
        )
        (tmp / MANIFEST).chmod(0o644)
        tmp.chmod(0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}.old.", dir=out_dir.parent))
            os.rmdir(old)
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out"] = str(out_dir)
    return summary



def _export_into(parts: RunParts, out: Path, cfg: ExportConfig) -> dict[str, Any]:
    """Write the export into ``out`` (a temp folder renamed into place afterwards)."""
    model_out = out / "model"
    copied = copy_model_folder(parts.model_dir, model_out, parts.root, out)
    n_weights = verify_no_pickles(model_out)
    source_fingerprint = model_fingerprint(model_out)
    prompts = read_prompts(parts)
    store_prompts(model_out, prompts)
    fingerprint = model_fingerprint(model_out)

    # The exported folder must load with plain sentence-transformers and embed like the source.
    texts = sample_texts(parts, cfg.check_samples)
    source, exported = load_sentence_transformer(parts.model_dir), load_sentence_transformer(model_out)
    min_cos = check_same_embeddings(source, exported, texts, prompts)
    del source

    summary: dict[str, Any] = {
        "run_kind": parts.kind, "model_sha256": fingerprint, "source_model_sha256": source_fingerprint, "weights_files": n_weights,
        "model_files": len(copied.copied), "not_exported": list(copied.skipped), "missing": list(parts.missing),
        "check_min_cosine": min_cos, "dim": exported.get_embedding_dimension(), "max_seq_length": exported.max_seq_length,
        "prompts": prompts,
    }
    query_side = read_query_side(model_out)
    if query_side:
        summary["query_side"] = query_side
    if parts.index_dir is not None:
        summary["index"] = export_index(parts, out / "index", source_fingerprint, fingerprint, summary["not_exported"])
    if cfg.vector_db:
        if "index" not in summary:
            raise RunDirError("--vector-db writes the index's vectors: this run folder has no index (run 'embedtune index build')", file=parts.root)
        from ..vector_db import write_qdrant

        db = write_qdrant(out / "index", out / cfg.vector_db)
        summary["vector_db"] = {**db, "path": cfg.vector_db}
    if parts.eval_metrics is not None:
        atomic_write_json(out / "eval" / "metrics.json", parts.eval_metrics)
    if cfg.onnx:
        summary["onnx"] = export_onnx(exported, model_out, texts, prompts)
    if cfg.int8:
        summary["int8"] = export_int8(exported, out, texts, prompts, cfg)
    del exported

    atomic_write_text(model_out / "README.md", render_model_card(parts, summary))
    atomic_write_text(out / "USAGE.md", render_usage(summary))
    for p in out.rglob("*"):  # temp files are created 0600; an export is meant to be shared
        p.chmod(0o755 if p.is_dir() else 0o644)
    summary["artifacts"] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return summary



