"""The ``train`` stage: mined folder -> rounds of training -> ``DIR/model`` + manifest + curve."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..corpus import parse_benchmark_source
from ..errors import ConfigError, RunDirError
from ..io import TMP_PREFIX, atomic_write_json
from ..run_folder import hash_path, prepare_run_folder, read_manifest, stage_key, write_manifest
from ..mined import load_mined
from .checkpoints import drop_checkpoints
from .config import TrainConfig, resolve_training_precision
from .curve import plot_curve
from .dev import make_dev_split
from .processes import is_main_process
from .rows import mined_corpus, query_positives
from .trainer import RoundResult, train_round

log = logging.getLogger("embedtune")



STAGE = "train"



def train_model(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list | None = None,
    progress: bool = True,
    remine: Callable[[str, Path], Path] | None = None,
) -> dict[str, Any]:
    """Train ``cfg.model`` on the mined data in ``data_dir``; results in ``out_dir`` (see module doc).

    With ``rounds > 1``, ``remine(model, folder)`` mines new negatives for the same pairs with the
    round's model into ``folder`` (the caller owns mining: ``pipeline.remining``).

    Returns the manifest (``metrics`` holds the best dev nDCG@10 and the curve). The same config
    and inputs with a complete manifest in ``out_dir`` return at once. ``callbacks`` are extra
    ``transformers.TrainerCallback`` objects (progress hooks, tests).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # saving a model card must never reach the hub
    from ..models import model_fingerprint, model_info, resolve_model_path

    started = time.time()
    out = Path(out_dir)
    data = load_mined(data_dir)
    base_path = resolve_model_path(cfg.model.name)
    inputs = {"data": hash_path(data.source), "model": model_fingerprint(base_path)}
    if cfg.dev.enabled and cfg.dev.source:
        folder, split = parse_benchmark_source(cfg.dev.source)
        inputs["dev_qrels"] = hash_path(folder / "qrels" / f"{split}.tsv")
    key = stage_key(cfg, inputs)
    if prepare_run_folder(out, STAGE, key, overwrite=overwrite, config=cfg, inputs=inputs) and (out / "model").is_dir():
        log.info("%s already holds this training run (same config and inputs): nothing to do", out)
        return read_manifest(out)
    if overwrite:
        for stale in [out / "checkpoints", out / "model", *out.glob("round-*")]:
            if stale.exists():
                shutil.rmtree(stale)
    elif not resume and (out / "manifest.json").is_file() and any(out.glob("round-*/model")):
        raise RunDirError("holds rounds of an interrupted run: pass --resume to continue it or --overwrite to start over", file=out)
    if is_main_process():
        for leftover in out.glob(f"{TMP_PREFIX}*"):  # half-saved models of a killed run
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        write_manifest(out, stage=STAGE, key=key, config=cfg, inputs=inputs, status="running")

    rounds: list[dict[str, Any]] = []
    model_name, round_data = str(base_path), data
    result: RoundResult | None = None
    work = out
    if cfg.side == "query":
        from ..query_side import train_query_side

        dev = make_dev_split(data, cfg)
        corpus, _ = mined_corpus(data)
        queries, relevant = query_positives(data, dev.exclude_query_ids if dev else set(), corpus)
        trained = train_query_side(cfg, corpus, queries, relevant, dev.queries if dev else None, dev.relevant if dev else None,
                                   out / "model", precision=resolve_training_precision(cfg.precision), progress=progress)
        stats = {"mined_rows": data.num_rows, "train_queries": len(queries), "train_rows": len(queries),
                 "corpus_documents": len(corpus), "best_step": trained["best_step"], "documents_encoded_by_new_model": 0}
        result = RoundResult(model_dir=out / "model", best_dev=trained["best_dev"], base_dev=trained["base_dev"],
                             curve=trained["curve"], steps=trained["steps"], stats=stats,
                             dev_description=dev.description if dev else None, seconds=trained["seconds"])
        rounds.append({"round": 1, "model": str(out / "model"), "best_dev_ndcg@10": result.best_dev,
                       "base_dev_ndcg@10": result.base_dev, "steps": result.steps, "rows": result.stats,
                       "seconds": round(result.seconds, 1), "curve": result.curve})
    for r in range(1, cfg.rounds + 1 if cfg.side == "both" else 1):
        last = r == cfg.rounds
        work = out if r == 1 else out / f"round-{r}"
        model_dir = out / "model" if last else out / f"round-{r}" / "model"
        if r > 1:
            if remine is None:
                raise ConfigError("rounds > 1 re-mine between rounds: run it through 'embedtune train' or 'embedtune run'", field="rounds")
            round_data = load_mined(remine(model_name, work / "mined"))
        if not last and (model_dir / "modules.json").is_file() and resume:
            log.info("round %d already trained: %s", r, model_dir)
            prev = json.loads((work / "round.json").read_text())
            rounds.append(prev)
            model_name = str(model_dir)
            continue
        result = train_round(model_name, round_data, cfg, work, model_dir, resume=resume, callbacks=callbacks, progress=progress)
        summary = {
            "round": r, "model": str(model_dir), "best_dev_ndcg@10": result.best_dev, "base_dev_ndcg@10": result.base_dev,
            "steps": result.steps, "rows": result.stats, "seconds": round(result.seconds, 1), "curve": result.curve,
        }
        rounds.append(summary)
        if is_main_process():
            if cfg.rounds > 1:  # lets a resumed multi-round run skip this round
                atomic_write_json(work / "round.json", summary)
            if not last:
                drop_checkpoints(work, cfg)
        model_name = str(model_dir)

    assert result is not None
    if not is_main_process():
        return {}
    curve = {"rounds": [{"round": rnd["round"], **rnd["curve"]} for rnd in rounds]}
    atomic_write_json(out / "training_curve.json", curve)
    plot_curve([rnd["curve"] for rnd in rounds], out / "training_curve.png", f"embedtune train: {Path(str(data_dir)).name}")
    metrics = {
        "best_dev_ndcg@10": rounds[-1]["best_dev_ndcg@10"],
        "base_dev_ndcg@10": rounds[0]["base_dev_ndcg@10"],
        "dev": result.dev_description,
        "steps": sum(s["steps"] for s in rounds),
        "train_rows": rounds[-1]["rows"]["train_rows"],
        "rows": rounds[-1]["rows"],
        "rounds": [{k: v for k, v in s.items() if k != "curve"} for s in rounds],
        "training_curve": curve,
    }
    models = {
        "base": model_info(cfg.model.model_copy(update={"name": str(base_path)})),
        "tuned": {"path": str(out / "model"), "sha256": model_fingerprint(out / "model")},
    }
    models["base"]["name"] = cfg.model.name
    manifest = write_manifest(
        out, stage=STAGE, key=key, config=cfg, inputs=inputs, models=models, metrics=metrics,
        timings={"total_s": round(time.time() - started, 1)},
        artifacts=["model", "training_curve.json", "training_curve.png"],
    )
    # only now: a kill before the manifest says complete resumes from the final checkpoint
    # instead of training the last round again
    drop_checkpoints(work, cfg)
    return manifest
