"""The export stage: a pipeline run folder -> a self-contained folder to ship.

``RUN_DIR`` is a pipeline run folder (``train/model`` + ``train/manifest.json``, and when they
exist ``index/``, ``eval/metrics.json``, ``mine/manifest.json``), a ``train --out`` folder
(``model/`` + ``manifest.json``) or a bare sentence-transformers folder. The export holds::

    OUT/model/             the tuned model: a plain sentence-transformers folder, safetensors only,
                           with a model card README.md (settings and evaluation read from the
                           run's manifests and metrics) and, with --onnx, onnx/model.onnx
    OUT/index/             the run's index (searcher, id map, passage store, manifest), its
                           manifest pointing at ../model
    OUT/eval/metrics.json  the evaluation the model card quotes
    OUT/USAGE.md           snippets for sentence-transformers, LangChain and LlamaIndex
    OUT/manifest.json      stage "export": sources, what was missing, checks

Nothing outside OUT is written and nothing outside RUN_DIR is read: paths from manifests that
are absolute or climb out with ``..`` are refused, symlinks whose target lies outside RUN_DIR are
neither followed nor copied. Only weight files in safetensors format are copied; the exported
model is loaded back and must give the source model's embeddings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .config import StrictModel
from .errors import IndexMismatchError, ModelError, RunDirError, first_line
from .io import TMP_PREFIX, atomic_write_json, atomic_write_text, atomic_write_with, sha256_file, sha256_json
from .manifest import MANIFEST, read_manifest, stage_key, write_manifest
from .models import ALIASES, PICKLE_SUFFIXES, check_model_folder, model_fingerprint, read_query_side, resolve_model_path

log = logging.getLogger("embedtune")

STAGE = "export"
# What a sentence-transformers folder needs: weights, configs, tokenizer files (vocab.txt,
# merges.txt, sentencepiece .model, tiktoken), and code files of trust_remote_code models.
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken", ".py")
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
MIN_COSINE = 0.9999
# int8 vectors are close to fp32, not equal (MiniLM: mean cosine 0.995, min 0.99, eval/results/encoding.md);
# below this the quantised model is broken, not approximate
INT8_MIN_COSINE = 0.95
INT8_DIR = "model-int8"
SAMPLE_TEXTS = (
    "What does this model do?",
    "A longer passage of text that the model turns into one vector, so that similar passages end up close together.",
    "short",
)


class ExportConfig(StrictModel):
    onnx: bool = Field(False, description="Also export the transformer to ONNX (model/onnx/model.onnx), checked against torch.")
    int8: bool = Field(False, description="Also write model-int8/: the model with its transformer as an int8 ONNX graph (CPU serving).")
    check_samples: int = Field(64, gt=0, description="Texts (passages of the index when there is one) used to check the exported model.")
    benchmark: str | None = Field(None, description="BEIR folder[:split] to measure the int8 model's nDCG@10 against the torch model on.")
    benchmark_queries: int = Field(200, gt=0, description="Queries of the benchmark sampled for the int8 check.")
    vector_db: Literal["qdrant"] | None = Field(None, description="Also write the index's passages and vectors into this embedded vector database (OUT/qdrant/).")


# --------------------------------------------------------------------------- paths that stay inside


def _inside(root: Path, path: Path) -> bool:
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
class CopyLog:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path (why)"


def _copy_file(src: Path, dst: Path, run_root: Path, out_root: Path, log_: CopyLog, rel: str) -> bool:
    """Copy one regular file's bytes; a symlink is followed only when its target is inside RUN_DIR."""
    if src.is_symlink() and not _inside(run_root, src):
        log_.skipped.append(f"{rel} (symlink pointing outside the run folder, not followed)")
        return False
    if not src.is_file():
        log_.skipped.append(f"{rel} (not a regular file)")
        return False
    if not _inside(out_root, dst.parent):
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
            elif full.is_symlink() and not _inside(run_root, full):
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
        _copy_file(full, dst / rel, run_root, out_root, log_, rel)
    return log_


def _model_source_hash(src: Path, run_root: Path) -> str:
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


# --------------------------------------------------------------------------- reading the run folder


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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{what} is not valid JSON", file=path) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{what} must be a JSON object", file=path)
    return data


def _part(root: Path, rel: str) -> Path | None:
    """``root/rel`` if it exists and does not lead outside ``root`` through a symlink."""
    p = root / rel
    if not (p.exists() or p.is_symlink()):
        return None
    if not _inside(root, p):
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
    if (m := _part(root, "train/model")) is not None and m.is_dir():
        # a pipeline ships what its select stage chose (base, tuned or merged), when it ran
        chosen = _part(root, "select/model")
        parts = RunParts(root=root, kind="pipeline", model_dir=chosen if chosen is not None and chosen.is_dir() else m)
        selection = _part(root, "select/selection.json")
        parts.selection = _read_json(selection, "selection") if selection else None
        train = _part(root, "train/" + MANIFEST)
        parts.train_manifest = _read_json(train, "train manifest") if train else None
        if train is None:
            parts.missing.append("train/manifest.json (training settings)")
        mine = _part(root, "mine/" + MANIFEST)
        parts.mine_manifest = _read_json(mine, "mine manifest") if mine else None
        if mine is None:
            parts.missing.append("mine/manifest.json (mining settings)")
        index = _part(root, "index")
        if index is not None and (index / MANIFEST).is_file():
            parts.index_dir = index
            parts.index_manifest = _read_json(_part(root, "index/" + MANIFEST), "index manifest")
        else:
            parts.missing.append("index/ (no index built)")
        metrics = _part(root, "eval/metrics.json")
        if metrics is not None:
            parts.eval_path = metrics
            parts.eval_metrics = _read_json(metrics, "evaluation metrics")
        else:
            parts.missing.append("eval/metrics.json (no evaluation)")
        return parts
    if (m := _part(root, "model")) is not None and m.is_dir() and _is_model_folder(m):
        parts = RunParts(root=root, kind="train", model_dir=m)
        manifest = _part(root, MANIFEST)
        parts.train_manifest = _read_json(manifest, "train manifest") if manifest else None
        parts.missing += ["mine manifest", "index", "evaluation"] + ([] if manifest else ["train manifest"])
        return parts
    if _is_model_folder(root):
        return RunParts(root=root, kind="model", model_dir=root, missing=["train manifest", "mine manifest", "index", "evaluation"])
    raise RunDirError("no trained model here: expected train/model/ (pipeline run), model/ (train --out) or a sentence-transformers folder", file=root)


# --------------------------------------------------------------------------- the export


def _new_temp_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out_dir.name}.", dir=out_dir.parent))


def _sample_texts(parts: RunParts, n: int) -> list[str]:
    """Real passages of the run's index when there is one (what the model will embed), plus a
    few fixed texts of other lengths."""
    texts: list[str] = []
    store = parts.index_dir / "passages.jsonl" if parts.index_dir is not None else None
    if store is not None and store.is_file() and _inside(parts.root, store):
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


def _load_st(path: Path):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device="cpu", local_files_only=True, model_kwargs={"use_safetensors": True})
    except Exception as err:
        msg = first_line(err)
        raise ModelError(f"cannot load model: {msg}", file=path) from None


def _check_same_embeddings(source, exported, texts: list[str], prompts: dict[str, str]) -> float:
    """Min cosine between the run's and the exported model's vectors (documents and queries)."""
    cos, _ = embedding_cosines(source, exported, texts, prompts)
    if cos < MIN_COSINE:
        raise ModelError(f"exported model gives other embeddings than the run's model (min cosine {cos:.6f})")
    return cos


def _source_inputs(parts: RunParts) -> dict[str, str]:
    """Hashes of everything an export is made from: same hashes and config -> same export."""
    inputs = {"model": _model_source_hash(parts.model_dir, parts.root)}
    for name, rel in (("train_manifest", "train/" + MANIFEST), ("mine_manifest", "mine/" + MANIFEST), ("index_manifest", "index/" + MANIFEST), ("eval_metrics", "eval/metrics.json")):
        p = _part(parts.root, rel)
        if p is not None and p.is_file():
            inputs[name] = sha256_file(p)
    if parts.kind == "train" and (p := _part(parts.root, MANIFEST)) is not None:
        inputs["train_manifest"] = sha256_file(p)
    return inputs


def _check_out_location(parts: RunParts, out_dir: Path) -> None:
    """``--out`` may sit in the run folder (the pipeline exports to RUN/export) but must not be
    the run folder, contain it, or lie inside a part the export reads."""
    if os.path.realpath(out_dir) == os.path.realpath(parts.root) or _inside(out_dir, parts.root):
        raise RunDirError("--out must not be or contain the run folder", file=out_dir)
    for source in (parts.model_dir, parts.index_dir, parts.eval_path.parent if parts.eval_path else None):
        if source is not None and _inside(source, out_dir):
            raise RunDirError(f"--out must not be inside the run folder's {source.name}/", file=out_dir)


def _existing_export(out_dir: Path, key: str, overwrite: bool) -> dict[str, Any] | None:
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
    if manifest and manifest.get("stage") == STAGE and manifest.get("key") == key and manifest.get("status") == "complete":
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
    existing = _existing_export(out_dir, key, overwrite)
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
    prompts = _prompts(parts)
    _store_prompts(model_out, prompts)
    fingerprint = model_fingerprint(model_out)

    # The exported folder must load with plain sentence-transformers and embed like the source.
    texts = _sample_texts(parts, cfg.check_samples)
    source, exported = _load_st(parts.model_dir), _load_st(model_out)
    min_cos = _check_same_embeddings(source, exported, texts, prompts)
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
        summary["index"] = _export_index(parts, out / "index", source_fingerprint, fingerprint, summary["not_exported"])
    if cfg.vector_db:
        if "index" not in summary:
            raise RunDirError("--vector-db writes the index's vectors: this run folder has no index (run 'embedtune index build')", file=parts.root)
        from .vector_db import write_qdrant

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


# --------------------------------------------------------------------------- ONNX


def export_onnx(model, model_dir: Path, texts: list[str], prompts: dict[str, str]) -> dict[str, Any]:
    """``model_dir/onnx/model.onnx``: the transformer as a fused fp32 ONNX graph
    (:mod:`embedtune.onnx_model`; token tensors in, ``last_hidden_state`` out: the layout optimum
    writes, so ``SentenceTransformer(path, backend="onnx")`` runs it where optimum is installed).
    Checked by running it in onnxruntime against the torch model: min cosine >= ``MIN_COSINE``."""
    from .onnx_model import FP32_FILE, export_graph, onnx_twin, require_onnx

    require_onnx("--onnx")
    t0 = time.perf_counter()
    onnx_path = model_dir / FP32_FILE
    names: list[str] = []
    try:
        atomic_write_with(onnx_path, lambda tmp: names.extend(export_graph(model, tmp)))
    except ModelError:
        raise
    except Exception as err:
        raise ModelError(f"ONNX export failed: {first_line(err)}", file=model_dir) from None
    export_s = time.perf_counter() - t0
    min_cos, _ = embedding_cosines(model, onnx_twin(model, model_dir, FP32_FILE), texts, prompts)
    if min_cos < MIN_COSINE:
        onnx_path.unlink()
        raise ModelError(f"ONNX embeddings differ from torch (min cosine {min_cos:.6f} < {MIN_COSINE}); ONNX file removed", file=onnx_path)
    return {"path": f"model/{FP32_FILE}", "inputs": names, "min_cosine": min_cos, "texts": len(texts),
            "bytes": onnx_path.stat().st_size, "export_s": round(export_s, 2)}


def export_int8(model, out: Path, texts: list[str], prompts: dict[str, str], cfg: ExportConfig) -> dict[str, Any]:
    """``out/model-int8``: the model with its transformer as an int8 ONNX graph, loaded back the way
    USAGE.md says (``SentenceTransformer(path, trust_remote_code=True)``) and compared with the
    torch model: cosines on the check texts, and nDCG@10 on a sample of ``cfg.benchmark``."""
    from sentence_transformers import SentenceTransformer

    from .onnx_model import write_onnx_model

    info = write_onnx_model(model, out / INT8_DIR)
    try:
        int8 = SentenceTransformer(str(out / INT8_DIR), device="cpu", local_files_only=True, trust_remote_code=True)
    except Exception as err:
        raise ModelError(f"the int8 model does not load back: {first_line(err)}", file=out / INT8_DIR) from None
    min_cos, mean_cos = embedding_cosines(model, int8, texts, prompts)
    if min_cos < INT8_MIN_COSINE:
        raise ModelError(f"the int8 model's embeddings are too far from torch's (min cosine {min_cos:.4f} < {INT8_MIN_COSINE}): "
                         "this model does not quantise well; export without --int8")
    summary = {"path": INT8_DIR, "onnx_file": info["onnx_file"], "bytes": info["bytes"], "export_s": info["seconds"],
               "min_cosine": min_cos, "mean_cosine": mean_cos, "texts": len(texts)}
    if cfg.benchmark:
        from .evaluation import sampled_precision_check

        summary["benchmark"] = sampled_precision_check(model, int8, cfg.benchmark, prompts, queries=cfg.benchmark_queries)
    bench = summary.get("benchmark")
    atomic_write_text(out / INT8_DIR / "README.md", "\n".join([  # in place of sentence-transformers' generated card
        "# int8 version of ../model (CPU serving)", "",
        "The model in `../model/` with its transformer as a dynamically quantised int8 ONNX graph "
        f"(`{info['onnx_file']}`) run by onnxruntime; tokenizer, prompts, pooling and normalisation as in `../model/`. "
        "Its model card (training, evaluation) is `../model/README.md`.", "",
        "```python", "from sentence_transformers import SentenceTransformer", "",
        "# the transformer module is embedtune.onnx_model.OnnxTransformer (pip install 'embedtune[onnx]')",
        "model = SentenceTransformer(\"path/to/model-int8\", trust_remote_code=True)", "```", "",
        f"Checked at export against the torch model: cosine mean {mean_cos:.4f}, min {min_cos:.4f} on {len(texts)} texts"
        + (f"; nDCG@10 {bench['ndcg@10_int8']:.4f} vs {bench['ndcg@10_torch']:.4f} on {bench['queries']} queries of {bench['dataset']}." if bench else "."),
        ""]))
    return summary


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


def _prompts(parts: RunParts) -> dict[str, str]:
    """Query/document prompts the model was trained and indexed with (index manifest first)."""
    if parts.index_manifest and isinstance(parts.index_manifest.get("index"), dict):
        info = parts.index_manifest["index"]
        return {"query": info.get("query_prompt", ""), "document": info.get("document_prompt", "")}
    model_cfg = ((parts.train_manifest or {}).get("config") or {}).get("model") or {}
    return {"query": model_cfg.get("query_prompt", "") or "", "document": model_cfg.get("document_prompt", "") or ""}


def _store_prompts(model_dir: Path, prompts: dict[str, str]) -> None:
    """Write the query/document prompts into the model's ``config_sentence_transformers.json``, so
    that every loader (``encode_query`` / ``encode_document``, ``prompt_name="query"``) applies them."""
    path = model_dir / "config_sentence_transformers.json"
    config = _read_json(path, "sentence-transformers config") if path.is_file() else {}
    stored = {k: v for k, v in (config.get("prompts") or {}).items() if v}
    wanted = {k: v for k, v in prompts.items() if v}
    if stored != wanted:
        atomic_write_json(path, {**config, "prompts": {**(config.get("prompts") or {}), **prompts}})


def _export_index(parts: RunParts, dst: Path, fingerprint: str, exported_fingerprint: str, skipped: list[str]) -> dict[str, Any]:
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
        if not _inside(parts.root, s):
            raise RunDirError(f"index file '{rel}' leads outside the run folder (symlink); refusing to copy it", file=s)
        if not _copy_file(s, d, parts.root, dst.parent, log_, rel):
            raise IndexMismatchError("index file missing", file=s)
        if sha256_file(d) != expected.get("sha256"):
            raise IndexMismatchError("index file differs from its manifest (corrupt or changed after the build)", file=s)
    skipped.extend(f"index/{s}" for s in log_.skipped)
    fusion = None
    if (src / "bm25").is_dir():
        from .index import read_fusion, write_fusion

        # the fusion settings are not hashed (a setting): validated here, then written afresh
        fusion = read_fusion(src)
        chosen_on = _read_json(src / "fusion.json", "fusion settings").get("chosen_on") if (src / "fusion.json").is_file() else None
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


# --------------------------------------------------------------------------- model card and USAGE.md


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value) if value else "(none)"
    elif value is None or value == "":
        text = "(none)" if value == "" else "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        rows.append((prefix, obj))
    return rows


def _settings_table(config: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    for key, value in _flatten(config):
        if not key.startswith(skip):
            lines.append(f"| `{key}` | {_cell(value)} |")
    return lines


def _base_model(parts: RunParts) -> str | None:
    train = parts.train_manifest or {}
    base = (train.get("models") or {}).get("base") or {}
    return base.get("name") or ((train.get("config") or {}).get("model") or {}).get("name")


def _query_side_note(s: dict[str, Any]) -> list[str]:
    """What a user of a query-side model must know: which encoder makes its documents."""
    record = s.get("query_side")
    if not record:
        return []
    enc = record["document_encoder"]
    return [
        "## Query side only", "",
        f"Only the query side of this model was tuned (a {record.get('kind', 'query')} on the query embedding). Documents "
        f"are embedded by the base encoder unchanged (fingerprint `{enc['sha256'][:12]}`): document vectors you already "
        "stored with that encoder stay valid -- keep them, and embed only the queries with this model. Encode queries "
        "with `encode_query` and documents with `encode_document` (plain `encode` is the document side).", "",
    ]


def render_model_card(parts: RunParts, s: dict[str, Any]) -> str:
    """A sentence-transformers style README: every value comes from the run's files."""
    base = _base_model(parts)
    train = parts.train_manifest or {}
    mine = parts.mine_manifest or {}
    tcfg, mcfg = train.get("config") or {}, mine.get("config") or {}
    tags = ["sentence-transformers", "feature-extraction", "sentence-similarity", "embedtune"]
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"] + [f"- {t}" for t in tags]
    if base and not Path(base).is_absolute() and not base.startswith("."):
        front.append(f"base_model: {json.dumps(base)}")
    front.append("---")
    lines = front + ["", f"# Fine-tuned embedding model{f' (from {base})' if base else ''}", ""]
    lines += [
        "A [sentence-transformers](https://www.sbert.net) model tuned for retrieval with embedtune. "
        "It maps text to normalised vectors; compare them with cosine similarity (= inner product).", "",
        "| | |", "|---|---|",
        f"| Base model | {_cell(base or 'unknown (no train manifest)')} |",
        f"| Embedding dimension | {s['dim']} |",
        f"| Max sequence length | {s['max_seq_length']} tokens |",
        "| Similarity | cosine (L2-normalised vectors, inner product) |",
        f"| Query prompt | `{s['prompts']['query']}` |" if s["prompts"]["query"] else "| Query prompt | (none) |",
        f"| Document prompt | `{s['prompts']['document']}` |" if s["prompts"]["document"] else "| Document prompt | (none) |",
        f"| Weights fingerprint (sha256) | `{s['model_sha256']}` |",
        "",
    ]
    lines += _query_side_note(s)
    lines += ["## Training data", ""]
    if mcfg or train:
        data_rows = [("pairs", mcfg.get("pairs")), ("corpus (negatives mined from)", mcfg.get("corpus")),
                     ("mined data hash", (train.get("inputs") or {}).get("data"))]
        rows = (train.get("metrics") or {}).get("train_rows")
        if isinstance(rows, dict):
            data_rows += [(f"training rows: {k}", v) for k, v in rows.items()]
        elif rows is not None:
            data_rows.append(("training rows", rows))
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in data_rows if v is not None] + [""]
    else:
        lines += ["Not recorded (the export was made from a model folder without run manifests).", ""]
    if mcfg:
        lines += ["## Hard-negative mining", "", f"Settings of the mining run (`mine/manifest.json`, created {mine.get('created', '?')}):", ""]
        lines += _settings_table(mcfg) + [""]
    if tcfg:
        lines += ["## Training", "", f"Loss and optimisation settings (`train/manifest.json`, created {train.get('created', '?')}):", ""]
        lines += _settings_table(tcfg) + [""]
        tm = train.get("metrics") or {}
        if tm.get("best_dev_ndcg@10") is not None:
            lines += [f"Dev nDCG@10 during training: {_cell(tm.get('base_dev_ndcg@10'))} (base) -> {_cell(tm.get('best_dev_ndcg@10'))} (best checkpoint); dev set: {_cell(tm.get('dev'))}.", ""]
    if parts.selection:
        sel = parts.selection
        lines += ["## Which weights ship", "", f"**{sel.get('shipped')}** (merge weight alpha = {_cell(sel.get('alpha'))}: "
                  f"0 = the base model, 1 = the tuned model): {sel.get('why')}. Dev set: {_cell(sel.get('dev'))}.", ""]
        cands = sel.get("candidates") or []
        if cands:
            guards = sorted({g for c in cands for g in (c.get("guards") or {})})
            lines += ["| candidate | alpha | dev nDCG@10 | " + "".join(f"{g} nDCG@10 | " for g in guards) + "qualified |",
                      "|---|---:|---:|" + "---:|" * len(guards) + "---|"]
            for c in cands:
                gcells = "".join(f"{_cell(c['guards'][g]['ndcg@10'])} (p {c['guards'][g]['p_value']:.3f}) | " for g in guards)
                lines.append(f"| {c['name']} | {c['alpha']:g} | {_cell(c['dev_ndcg@10'])} | {gcells}{'yes' if c.get('qualified') else 'no'} |")
            lines.append("")
    lines += ["## Evaluation", ""] + render_eval_table(parts.eval_metrics, s["source_model_sha256"]) + [""]
    lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("path/to/this/folder")',
              f"query_vectors = model.encode_query([\"your question\"]{_prompt_arg(s['prompts']['query'])})",
              f"doc_vectors = model.encode_document([\"a passage\"]{_prompt_arg(s['prompts']['document'])})",
              "print(model.similarity(query_vectors, doc_vectors))", "```", "",
              "See USAGE.md next to this folder for LangChain and LlamaIndex."]
    if s.get("int8"):
        q = s["int8"]
        bench = q.get("benchmark")
        lines += ["", f"An int8 version for CPU serving is in `../{q['path']}/` (the transformer as a dynamically quantised ONNX graph "
                  f"run by onnxruntime; load it with `SentenceTransformer(path, trust_remote_code=True)` where embedtune is installed): "
                  f"cosine to this model mean {q['mean_cosine']:.4f}, min {q['min_cosine']:.4f}"
                  + (f"; nDCG@10 {bench['ndcg@10_int8']:.4f} vs {bench['ndcg@10_torch']:.4f} on {bench['queries']} queries of {bench['dataset']}." if bench else ".")]
    if s.get("onnx"):
        lines += ["", f"An ONNX export of the transformer is in `onnx/model.onnx` (checked against torch: min cosine {s['onnx']['min_cosine']:.6f} on {s['onnx']['texts']} texts)."]
    versions = train.get("versions") or {}
    if versions:
        lines += ["", "## Framework versions", ""] + [f"- {k}: {v}" for k, v in versions.items()]
    return "\n".join(lines) + "\n"


def _prompt_arg(prompt: str) -> str:
    return f", prompt={json.dumps(prompt)}" if prompt else ""


CARD_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@10")


def render_eval_table(metrics: dict[str, Any] | None, fingerprint: str = "") -> list[str]:
    """The evaluation of ``embedtune eval`` (``metrics.json``): mean metrics per system, then
    each system's deltas against the baseline with 95% CI and paired-test p-value. The system
    whose weights fingerprint is the exported model's is marked."""
    if not metrics:
        return ["No evaluation in the run folder (run `embedtune eval` and export again)."]
    systems = metrics.get("systems")
    if not isinstance(systems, list) or not systems or not all(isinstance(x, dict) and isinstance(x.get("metrics"), dict) for x in systems):
        return ["The run's eval/metrics.json has no per-system metrics (not written by `embedtune eval`?); see eval/metrics.json."]
    available = [m for m in CARD_METRICS if all(m in x["metrics"] for x in systems)] or sorted(systems[0]["metrics"])
    this = {x.get("name") for x in systems if isinstance(x.get("model"), dict) and x["model"].get("sha256") == fingerprint}

    def label(name: str) -> str:
        return f"{name} (this model)" if name in this else str(name)

    lines = [
        f"{Path(str(metrics.get('dataset', '?'))).name} / {metrics.get('split', '?')}: {metrics.get('queries', '?')} queries, "
        f"{metrics.get('documents', '?')} documents; exact cosine search, metrics by pytrec_eval as in BEIR.", "",
        "| metric | " + " | ".join(label(x.get("name", "?")) for x in systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for m in available:
        lines.append(f"| {m} | " + " | ".join(f"{x['metrics'][m]:.4f}" for x in systems) + " |")
    if not this:
        lines += ["", "Note: no evaluated system has this model's weights fingerprint; the evaluation is of another model version."]
    for c in metrics.get("comparisons") or []:
        rows = c.get("metrics") or {}
        lines += ["", f"{label(c.get('system', '?'))} vs {label(c.get('baseline', '?'))} (paired randomization test over queries):", "",
                  "| metric | delta | 95% CI | p-value |", "|---|---:|---:|---:|"]
        for m in available:
            r = rows.get(m)
            if isinstance(r, dict) and {"delta", "p_value"} <= set(r):
                ci = r.get("ci95") or [float("nan"), float("nan")]
                lines.append(f"| {m} | {r['delta']:+.4f} | [{ci[0]:+.4f}, {ci[1]:+.4f}] | {r['p_value']:.4f} |")
        wtl = c.get("ndcg@10_per_query")
        if isinstance(wtl, dict):
            lines += ["", f"Per query nDCG@10: {wtl.get('wins')} wins / {wtl.get('ties')} ties / {wtl.get('losses')} losses."]
    return lines


QUERY = "what is this collection about?"
TOP_K = 5


def _usage_section(title: str, code: list[str], intro: str = "") -> list[str]:
    return [f"## {title}", "", *([intro, ""] if intro else []), "```python", *code, "```", ""]


def render_usage(s: dict[str, Any]) -> str:
    """USAGE.md: snippets with this export's prompts and paths relative to the export folder (it
    can be moved, zipped and shipped). Every snippet prints the same lines for the same query --
    score, passage id, text -- and the tests execute each one from the file and compare them."""
    qp, dp = s["prompts"]["query"], s["prompts"]["document"]
    index, vdb, int8 = s.get("index"), s.get("vector_db"), s.get("int8")
    query_side = bool(s.get("query_side"))
    show = "    print(f\"{score:.3f}  {pid}  {text[:60]!r}\")"
    lines = [
        "# Using the exported model", "",
        "Paths are relative to this folder: run the snippets from it, or put its location in front of them.", "",
        "Model: `model/` (sentence-transformers folder, safetensors). Vectors are L2-normalised: cosine = inner product. "
        f"Query prompt: {('`' + qp + '`') if qp else '(none)'}; document prompt: {('`' + dp + '`') if dp else '(none)'}. "
        "They are stored in `model/config_sentence_transformers.json`, so `encode_query` / `encode_document` (and "
        "`prompt_name=\"query\"` / `\"document\"`) apply them; text encoded without them will not match the evaluation.", "",
        *_query_side_note(s),
    ]
    if index:
        lines += [
            f"Index: `index/` holds {index['count']:,} passages ({index['backend']} backend). Their vectors were computed with "
            f"the model in {index.get('precision', '?')} and are stored as float32; queries encoded in fp32 (or int8, "
            "below) score within rounding of them.", "",
        ]
    load_store = ["import json", "", "with open(\"index/passages.jsonl\", encoding=\"utf-8\") as fh:",
                  "    passages = [json.loads(line) for line in fh]",
                  "texts = [f\"{p['title']} {p['text']}\".strip() for p in passages]"] if index else \
                 ["texts = " + json.dumps(list(SAMPLE_TEXTS)), "passages = [{\"id\": str(i)} for i in range(len(texts))]"]
    lines += _usage_section("sentence-transformers", [
        "from sentence_transformers import SentenceTransformer", "", *load_store, "",
        "model = SentenceTransformer(\"model\")",
        "doc_vectors = model.encode_document(texts, normalize_embeddings=True)",
        f"query_vector = model.encode_query([{json.dumps(QUERY)}], normalize_embeddings=True)",
        "scores = model.similarity(query_vector, doc_vectors)[0]",
        f"for score, i in zip(*scores.topk(min({TOP_K}, len(texts)))):",
        "    score, pid, text = float(score), passages[int(i)][\"id\"], texts[int(i)]", show,
    ], "Encodes the passages again -- for a quick look; the stores below reuse the exported vectors.")
    if int8:
        bench = int8.get("benchmark")
        measured = (f" nDCG@10 on {bench['queries']} queries of {bench['dataset']}: {bench['ndcg@10_int8']:.4f} int8 vs "
                    f"{bench['ndcg@10_torch']:.4f} torch ({bench['ndcg@10_delta']:+.4f}, p = {bench['p_value']:.3f}).") if bench else ""
        lines += _usage_section("int8 on CPU (`model-int8/`)", [
            "from sentence_transformers import SentenceTransformer", "",
            "# trust_remote_code: the folder's transformer is embedtune.onnx_model.OnnxTransformer (an installed",
            "# package, pip install 'embedtune[onnx]'): sentence-transformers 6 asks before importing any class outside itself",
            "model = SentenceTransformer(\"model-int8\", trust_remote_code=True)",
            f"query_vector = model.encode_query([{json.dumps(QUERY)}], normalize_embeddings=True)",
            "print(query_vector.shape)",
        ], "`model-int8/` is the same model with its transformer as a dynamically quantised int8 ONNX graph run by "
           f"onnxruntime: several times faster than fp32 torch on CPU, close but not equal to it (cosine to torch mean "
           f"{int8['mean_cosine']:.4f}, min {int8['min_cosine']:.4f} on {int8['texts']} texts).{measured} In LangChain pass "
           "`model_kwargs={\"trust_remote_code\": True}` to `HuggingFaceEmbeddings`, in LlamaIndex `trust_remote_code=True` "
           "to `HuggingFaceEmbedding`, with `model_name=\"model-int8\"`.")
    if s.get("onnx"):
        lines += [
            "## ONNX (`model/onnx/model.onnx`)", "",
            f"The transformer as a fused fp32 ONNX graph (inputs {', '.join(s['onnx']['inputs'])}, output `last_hidden_state`; "
            f"checked against torch: min cosine {s['onnx']['min_cosine']:.6f}). sentence-transformers runs it with "
            "`SentenceTransformer(\"model\", backend=\"onnx\")` only where optimum is installed, and the optimum releases "
            "pin transformers < 4.58: installing them downgrades transformers 5 and sentence-transformers 6. Without optimum, "
            "serve the int8 model (`--int8`) or the torch folder; any onnxruntime program can run the graph directly "
            "(tokenize with `model/tokenizer.json`, pool `last_hidden_state` as `model/1_Pooling/config.json` says, L2-normalise).", "",
        ]
    if index:
        lines += ["## The exported index (embedtune)", "", "```bash",
                  "embedtune search index \"your question\" -k 5",
                  "embedtune search index --queries queries.txt --out results.jsonl   # many queries in one call",
                  "```", ""]
        lines += _usage_section("embedtune retriever", [
            "from embedtune.retriever import Retriever", "",
            "retriever = Retriever.load(\"index\", hybrid=False)",
            f"for hit in retriever.search({json.dumps(QUERY)}, k={TOP_K}):",
            "    score, pid, text = hit[\"score\"], hit[\"passage_id\"], hit[\"text\"]", show,
        ], "Each hit carries `doc_id`, `position` and `char_start`/`char_end` (the passage's span in its document) for citations.")
    fusion = (index or {}).get("fusion")
    if fusion:
        lines += _usage_section("Hybrid search: BM25 fused with this model", [
            "from embedtune.retriever import Retriever",
            "from embedtune.integrations.langchain import EmbedtuneRetriever as LangChainRetriever",
            "from embedtune.integrations.llamaindex import EmbedtuneRetriever as LlamaIndexRetriever", "",
            "retriever = Retriever.load(\"index\")  # hybrid: the index has a BM25 part",
            f"for hit in retriever.search({json.dumps(QUERY)}, k={TOP_K}):",
            "    score, pid, text = hit[\"score\"], hit[\"passage_id\"], hit[\"text\"]", show,
            f"docs = LangChainRetriever(retriever=retriever, k={TOP_K}).invoke({json.dumps(QUERY)})",
            f"nodes = LlamaIndexRetriever(retriever, similarity_top_k={TOP_K}).retrieve({json.dumps(QUERY)})",
            "assert [d.id for d in docs] == [n.node.node_id for n in nodes]",
        ], f"`index/` also holds a BM25 index of the same passages, and `index/fusion.json` the fusion measured for this "
           f"corpus: {fusion['method']} fusion, BM25 weight {fusion['bm25_weight']:.2f} (dense {1 - fusion['bm25_weight']:.2f}). "
           "`embedtune.retriever` returns that ranking; the LangChain and LlamaIndex retrievers are built on it "
           "(`pip install 'embedtune[rag]'`). From the command line: `embedtune search index \"your question\" --hybrid`.")
    q_kwargs = "{\"normalize_embeddings\": True, \"prompt_name\": \"query\"" + (", \"task\": \"query\"}" if query_side else "}")
    embeddings = ["embeddings = HuggingFaceEmbeddings(",
                  "    model_name=\"model\",",
                  "    encode_kwargs={\"normalize_embeddings\": True, \"prompt_name\": \"document\"},",
                  f"    query_encode_kwargs={q_kwargs},", ")"]
    if vdb:
        lines += _usage_section(f"Vector database: Qdrant (`{vdb['path']}/`)", [
            "from qdrant_client import QdrantClient",
            "from sentence_transformers import SentenceTransformer", "",
            "model = SentenceTransformer(\"model\")",
            f"client = QdrantClient(path={json.dumps(vdb['path'])})",
            f"query_vector = model.encode_query({json.dumps(QUERY)}, normalize_embeddings=True)",
            f"for point in client.query_points({json.dumps(vdb['collection'])}, query=query_vector.tolist(), limit={TOP_K}).points:",
            "    score, pid, text = point.score, point.payload[\"passage_id\"], point.payload[\"text\"]", show,
            "client.close()",
        ], f"`{vdb['path']}/` is a Qdrant database (local mode, `pip install qdrant-client`) holding the index's "
           f"{vdb['count']:,} passages with their vectors (not encoded again), collection `{vdb['collection']}`. Point ids are "
           "row numbers; each payload holds `text`, `doc_id`, `passage_id`, `position`, `title`, `char_start`, `char_end` "
           "(also under `metadata`, where LangChain reads them). The same code runs against a Qdrant server: "
           "`QdrantClient(url=...)` after uploading the points.")
        lines += _usage_section("LangChain (`pip install 'embedtune[rag]'`)", [
            "from langchain_huggingface import HuggingFaceEmbeddings",
            "from langchain_qdrant import QdrantVectorStore",
            "from qdrant_client import QdrantClient", "", *embeddings,
            f"store = QdrantVectorStore(client=QdrantClient(path={json.dumps(vdb['path'])}), collection_name={json.dumps(vdb['collection'])},",
            "                          embedding=embeddings, content_payload_key=\"text\", metadata_payload_key=\"metadata\")",
            f"for doc, score in store.similarity_search_with_score({json.dumps(QUERY)}, k={TOP_K}):",
            "    pid, text = doc.metadata[\"passage_id\"], doc.page_content", show,
            *([
                "",
                "# int8 queries (model-int8/, CPU), same vectors in the store",
                "embeddings_int8 = HuggingFaceEmbeddings(model_name=\"model-int8\", model_kwargs={\"trust_remote_code\": True},",
                f"                                        query_encode_kwargs={q_kwargs})",
                "int8_store = QdrantVectorStore(client=store.client, collection_name=" + json.dumps(vdb['collection']) + ",",
                "                               embedding=embeddings_int8, content_payload_key=\"text\", metadata_payload_key=\"metadata\")",
                f"print(\"int8 top passages:\", [d.metadata[\"passage_id\"] for d in int8_store.similarity_search({json.dumps(QUERY)}, k={TOP_K})])",
            ] if int8 else []),
            "store.client.close()",
        ], "The exported vectors through LangChain's Qdrant store; queries are embedded with the model and its query prompt.")
        lines += _usage_section("LlamaIndex (`pip install 'embedtune[rag]'`)", [
            "from llama_index.core import VectorStoreIndex",
            "from llama_index.embeddings.huggingface import HuggingFaceEmbedding",
            "from llama_index.vector_stores.qdrant import QdrantVectorStore",
            "from qdrant_client import QdrantClient", "",
            *(["# query-side model: HuggingFaceEmbedding encodes queries on the document side (no adapter);",
               "# search through the embedtune retriever above, or embed queries with model.encode_query"] if query_side else []),
            "embed_model = HuggingFaceEmbedding(model_name=\"model\", query_instruction=" + json.dumps(qp)
            + ", text_instruction=" + json.dumps(dp) + ", normalize=True)",
            f"client = QdrantClient(path={json.dumps(vdb['path'])})",
            f"store = QdrantVectorStore(client=client, collection_name={json.dumps(vdb['collection'])})",
            "index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)",
            f"for hit in index.as_retriever(similarity_top_k={TOP_K}).retrieve({json.dumps(QUERY)}):",
            "    score, pid, text = hit.score, hit.node.metadata[\"passage_id\"], hit.node.get_content()", show,
            *([
                "",
                "# int8 queries (model-int8/, CPU), same vectors in the store",
                "embed_int8 = HuggingFaceEmbedding(model_name=\"model-int8\", trust_remote_code=True, query_instruction=" + json.dumps(qp)
                + ", text_instruction=" + json.dumps(dp) + ", normalize=True)",
                "index_int8 = VectorStoreIndex.from_vector_store(store, embed_model=embed_int8)",
                f"hits = index_int8.as_retriever(similarity_top_k={TOP_K}).retrieve({json.dumps(QUERY)})",
                "print(\"int8 top passages:\", [hit.node.metadata[\"passage_id\"] for hit in hits])",
            ] if int8 else []),
            "client.close()",
        ], "The exported vectors through LlamaIndex's Qdrant store.")
    else:
        hint = " (export with `--vector-db qdrant` to use the index's vectors instead of encoding again)" if index else ""
        lines += _usage_section("LangChain (`pip install 'embedtune[rag]'`)", [
            "from langchain_core.vectorstores import InMemoryVectorStore",
            "from langchain_huggingface import HuggingFaceEmbeddings", "", *load_store, "", *embeddings,
            "store = InMemoryVectorStore.from_texts(texts, embeddings, metadatas=[{\"passage_id\": p[\"id\"]} for p in passages])",
            f"for doc, score in store.similarity_search_with_score({json.dumps(QUERY)}, k={TOP_K}):",
            "    pid, text = doc.metadata[\"passage_id\"], doc.page_content", show,
        ], f"Encodes the texts in memory{hint}.")
    return "\n".join(lines)


__all__ = ["ExportConfig", "export_run", "read_run_folder", "copy_model_folder", "model_files", "verify_no_pickles", "safe_relative", "export_onnx", "export_int8"]
