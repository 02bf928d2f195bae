"""The ``mine`` stage: pairs -> candidates -> filters -> sampled negatives -> mined folder + report."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .candidates import CandidatePool
from .config import FILTERS, NOT_IDENTITY, MineConfig, identity_config
from .inputs import hash_inputs, load_mining_inputs, resolved_pairs_source
from .negatives import mine_negatives
from .teachers import CrossEncoderTeacher, HybridTeacher, Teacher

log = logging.getLogger("embedtune")



def mine_hard_negatives(
    cfg: MineConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The ``mine`` stage: pairs -> candidates -> filters -> sampled negatives -> mined dataset.

    Returns a summary (also the manifest's ``metrics``); ``summary["skipped"]`` is True when the
    folder already holds the same completed run.
    """
    from ..encoding import encode_corpus, encode_texts
    from ..io import remove_stale_temp_files
    from ..run_folder import prepare_run_folder, read_manifest, stage_key, write_manifest
    from ..mined import write_mined
    from .report import write_report
    from ..models import load_model, model_info

    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    t = time.perf_counter()
    inputs = load_mining_inputs(cfg)
    given_pairs = cfg.pairs
    cfg = cfg.model_copy(update={"corpus": str(inputs.corpus_path), "pairs": resolved_pairs_source(inputs, cfg.pairs)})
    timings["load_inputs"] = time.perf_counter() - t
    input_hashes = hash_inputs(inputs, cfg)
    key = stage_key(identity_config(cfg), input_hashes)
    if prepare_run_folder(out, "mine", key, overwrite=overwrite, config=cfg, inputs=input_hashes, ignore=NOT_IDENTITY):
        manifest = read_manifest(out) or {}
        return {**manifest.get("metrics", {}), "skipped": True, "out": str(out)}
    remove_stale_temp_files(out)
    for leftover in out.glob(".tmp-dataset-*"):
        shutil.rmtree(leftover, ignore_errors=True)

    t = time.perf_counter()
    pair_set = inputs.make_pairs(cfg)
    timings["make_pairs"] = time.perf_counter() - t
    model = load_model(cfg.model)
    teacher: Teacher | None = CrossEncoderTeacher(cfg.cross_encoder) if cfg.cross_encoder is not None else None

    corpus_ids = list(inputs.corpus)
    corpus_texts = [d.full_text for d in inputs.corpus.values()]
    extra_ids = list(pair_set.extra_docs)
    extra_texts = [d.full_text for d in pair_set.extra_docs.values()]
    pool = CandidatePool(ids=corpus_ids + extra_ids, texts=corpus_texts + extra_texts)

    cache_kwargs = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    t = time.perf_counter()
    pool.blocks.append(encode_corpus(model, cfg.model, corpus_ids, corpus_texts, **cache_kwargs))
    if extra_ids:
        pool.blocks.append(encode_corpus(model, cfg.model, extra_ids, extra_texts, **cache_kwargs))
    timings["encode_corpus"] = time.perf_counter() - t

    t = time.perf_counter()
    query_text: dict[str, str] = {}
    for p in pair_set.pairs:
        query_text.setdefault(p.query_id, p.query)
    query_ids = list(query_text)
    query_texts = [query_text[q] for q in query_ids]
    query_emb = encode_texts(
        model, query_texts, prompt=cfg.model.query_prompt, batch_size=cfg.model.batch_size,
        precision=cfg.model.precision, show_progress=show_progress, task="query",
    )
    generated = [p.positive for p in pair_set.pairs if not p.positive_in_pool]
    generated_emb = None
    if generated:
        generated_emb = encode_texts(
            model, generated, prompt=cfg.model.document_prompt, batch_size=cfg.model.batch_size,
            precision=cfg.model.precision, show_progress=show_progress,
        )
    given = sorted({n for p in pair_set.pairs for n in p.given_negatives[: cfg.num_negatives]})
    given_emb = None
    if given:
        vecs = encode_texts(
            model, given, prompt=cfg.model.document_prompt, batch_size=cfg.model.batch_size,
            precision=cfg.model.precision, show_progress=show_progress,
        )
        given_emb = dict(zip(given, vecs))
    timings["encode_queries"] = time.perf_counter() - t
    if cfg.hybrid_teacher is not None:
        t = time.perf_counter()
        extra = dict(zip(generated, generated_emb if generated_emb is not None else [])) | (given_emb or {})
        teacher = HybridTeacher(cfg.hybrid_teacher, query_texts, query_emb, pool, extra)
        timings["teacher_index"] = time.perf_counter() - t

    result = mine_negatives(
        pair_set, pool, query_emb, query_ids, query_texts, generated_emb, cfg,
        given_negative_emb=given_emb, teacher=teacher, show_progress=show_progress,
    )
    timings.update({f"mine_{k}": v for k, v in result.timings.items()})

    t = time.perf_counter()
    artifacts = write_mined(out, result.rows, with_teacher=teacher is not None, qrels=pair_set.qrels)
    timings["write"] = time.perf_counter() - t

    summary = {
        "source": inputs.source_kind,
        "queries": result.stats["queries"],
        "pairs": result.stats["pairs"],
        "pool_documents": result.stats["pool_documents"],
        "extra_documents": len(extra_ids),
        "rows_full": result.stats["rows_full"],
        "rows_short": result.stats["rows_short"],
        "rows_without_negatives": result.stats["rows_without_negatives"],
        "negatives": result.stats["negatives"],
        "num_negatives": cfg.num_negatives,
        "filter_counts": {k: result.counts.get(k, 0) for k in ("retrieved", *FILTERS[:2], "window_candidates", *FILTERS[2:], "eligible", "chosen")},
        "positive_score_mean": float(np.mean(result.stats["positive_scores"])) if result.stats["pairs"] else None,
        "negative_score_mean": float(np.mean(result.stats["negative_scores"])) if result.stats["negatives"] else None,
        "pair_source": pair_set.stats,
    }
    t = time.perf_counter()
    artifacts += write_report(out, cfg, summary, result)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    models = {"embedding": model_info(cfg.model, model)}
    if cfg.cross_encoder is not None:
        models["cross_encoder"] = {"path": str(Path(cfg.cross_encoder.path).expanduser().resolve())}
    extra = {"pairs_source": {"kind": inputs.source_kind, "given": given_pairs, "resolved": cfg.pairs, "splits": inputs.splits}}
    write_manifest(
        out, stage="mine", key=key, config=cfg, inputs=input_hashes, models=models,
        metrics=summary, timings={k: round(v, 3) for k, v in timings.items()}, artifacts=artifacts, extra=extra,
    )
    return {**summary, "skipped": False, "out": str(out), "timings": timings}
