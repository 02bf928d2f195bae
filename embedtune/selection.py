"""The select stage: which model ships -- the regression guard of ``embedtune run``.

The candidates are the base model, the tuned model and the two merged with weight ``alpha``
(:mod:`embedtune.merging`; ``alpha`` 0 = base, 1 = tuned). Each is scored on the dev signal the
training used (a real dev split, or the queries it held out -- pseudo-queries when there are no
labels; never the test split) and on every guard benchmark the config lists. A candidate that is
significantly worse than the base on a guard (p < 0.05, paired randomization test) is out; the
best of the rest on dev ships. When that is the base, ``run`` says so and exits with code 8
(nothing beat the base): a user never ships a regression without being told.

Pseudo-queries judged by the document they were cut from reward learning the pseudo-query task
itself: on the demo corpus and NFCorpus that dev signal rose while real queries did not follow
(eval/results/distillation.md). So when the dev queries are pseudo-queries, the same queries judged
by the hybrid teacher (BM25 fused with the base model; its top 10, graded 10..1) are one more guard,
``teacher(dev)`` (``teacher_guard``).

Writes ``model/`` (the chosen weights), ``selection.json`` (every candidate's scores) and
``manifest.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field, field_validator

from .config import ModelConfig, StrictModel

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from .models import LoadedModel

    from .training.dev import DevSplit

log = logging.getLogger("embedtune")

STAGE = "select"
TEACHER_GUARD = "teacher(dev)"  # the guard of the dev queries judged by the hybrid teacher


class SelectConfig(StrictModel):
    """Which weights ship (YAML section ``select`` of ``embedtune run``)."""

    alphas: list[float] = Field([0.0, 0.5, 0.75, 1.0], description="Merge weights tried: 0 = the base model, 1 = the "
                                "tuned model, between = WiSE-FT interpolation. The best on dev ships.")
    guard: list[str] = Field(default_factory=list, description="BEIR benchmarks ('folder:split') on which no shipped "
                             "model may be significantly worse than the base.")
    guard_p_value: float = Field(0.05, gt=0, lt=1, description="A candidate significantly worse than the base on a guard at this level is out.")
    permutations: int = Field(2000, ge=100, description="Permutations of the paired tests on guards.")
    teacher_guard: bool | None = Field(None, description="Also judge the dev queries by the hybrid teacher (BM25 fused "
                                       "with the base model, its top 10): a candidate significantly worse than the base "
                                       "there is out. null: on when the dev queries are pseudo-queries (pairs: self).")

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError("every alpha must be in [0, 1]")
        return sorted(set(v) | {0.0})  # the base is always a candidate

    @field_validator("guard")
    @classmethod
    def _guards_exist(cls, v: list[str]) -> list[str]:
        from .corpus import parse_benchmark_source

        for source in v:
            folder, split = parse_benchmark_source(source)  # raises a one-line error for a missing folder
            if not (folder / "qrels" / f"{split}.tsv").is_file():
                raise ValueError(f"guard '{source}': no qrels/{split}.tsv in {folder}")
        return v


def _search(model: "LoadedModel | SentenceTransformer", cfg: ModelConfig, queries: dict[str, str], corpus: dict[str, str],
            doc_vectors: dict[int, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Each query's top 100 documents. ``doc_vectors`` (given for the base and query-side candidates,
    whose documents all go through the base encoder) keeps the corpus vectors by corpus: read from the
    embedding cache (training's query side filled it for the mined corpus) or encoded and cached once."""
    from .encoding import encode_corpus, encode_texts
    from .search import exact_search

    doc_ids = list(corpus)
    docs = None if doc_vectors is None else doc_vectors.get(id(corpus))
    if docs is None and doc_vectors is not None:  # the base encoder's documents: the embedding cache training filled
        docs = doc_vectors[id(corpus)] = encode_corpus(model, cfg, doc_ids, [corpus[d] for d in doc_ids], show_progress=False)
    if docs is None:
        docs = encode_texts(model, [corpus[d] for d in doc_ids], prompt=cfg.document_prompt, batch_size=cfg.batch_size,
                            precision=cfg.precision, show_progress=False)
    qids = list(queries)
    qv = encode_texts(model, [queries[q] for q in qids], prompt=cfg.query_prompt, batch_size=cfg.batch_size,
                      precision=cfg.precision, show_progress=False, task="query")
    scores, idx = exact_search(qv, docs, min(100, len(doc_ids)))
    return {q: {doc_ids[j]: float(s) for s, j in zip(scores[i], idx[i])} for i, q in enumerate(qids)}


def _ndcg(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-query nDCG@10 of every judged query (0 for one the run misses)."""
    from .evaluation import compute_metrics

    scores = compute_metrics(qrels, run, only=("ndcg@10",))["ndcg@10"]
    return {q: scores.get(q, 0.0) for q in qrels}


def teacher_judgements(base_run: dict[str, dict[str, float]], queries: dict[str, str], corpus: dict[str, str],
                       bm25_weight: float) -> dict[str, dict[str, int]]:
    """The hybrid teacher's verdict on each query: its top 10 -- BM25 over ``corpus`` fused (z-score,
    ``bm25_weight``) with the base model's ranking ``base_run`` -- graded 10 (first) to 1."""
    from .fusion import FusionConfig, fuse_runs
    from .lexical import bm25_index, bm25_retrieve

    doc_ids, qids = list(corpus), list(queries)
    hits = bm25_retrieve(bm25_index([corpus[d] for d in doc_ids]), [queries[q] for q in qids], 100)
    lexical = {q: {doc_ids[int(r)]: float(s) for r, s in zip(rows, scores)} for q, (rows, scores) in zip(qids, hits)}
    fused = fuse_runs({q: base_run[q] for q in qids}, lexical, FusionConfig(bm25_weight=bm25_weight))
    return {q: {d: 10 - i for i, (d, _) in enumerate(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:10])}
            for q, docs in fused.items()}


def _guard_data(source: str) -> tuple[str, dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    from .corpus import load_beir, parse_benchmark_source

    folder, split = parse_benchmark_source(source)
    ds = load_beir(folder, split)
    queries = {q: t for q, t in ds.queries.items() if q in ds.qrels}
    return f"{folder.name}:{split}", queries, {d: doc.full_text for d, doc in ds.corpus.items()}, ds.qrels


def select_model(
    cfg: SelectConfig,
    base: ModelConfig,
    tuned_dir: str | Path,
    dev: "DevSplit",
    out_dir: str | Path,
    *,
    pseudo_queries: bool = False,
    teacher_bm25_weight: float = 0.5,
) -> dict[str, Any]:
    """Score every candidate, save the one that ships into ``out_dir/model``; returns the
    selection (candidates with their dev and guard scores, the chosen alpha, why).
    ``pseudo_queries``: the dev queries were derived from the corpus (turns ``teacher_guard`` on
    when it is null); ``teacher_bm25_weight``: the teacher's BM25 weight (mining's)."""
    from .evaluation import paired_randomization_test
    from .io import atomic_write_json, save_model_atomically
    from .merging import merge_models
    from .models import load_model
    from .query_side import interpolate_query_side

    out = Path(out_dir)
    t0 = time.perf_counter()
    base_model = load_model(base)
    tuned_model = load_model(base.model_copy(update={"name": str(tuned_dir)}))
    dev_qrels = {q: {d: 1 for d in docs} for q, docs in dev.relevant.items()}
    guards = [_guard_data(g) for g in cfg.guard]
    teacher_guard = pseudo_queries if cfg.teacher_guard is None else cfg.teacher_guard
    teacher_qrels: dict[str, dict[str, int]] = {}
    candidates: list[dict[str, Any]] = []
    dev_scores: dict[float, dict[str, float]] = {}
    base_guard: dict[str, dict[str, float]] = {}

    # a query-side model merges with its base by moving its query side toward the base's; its
    # documents, like the base's, are the base encoder's: encoded once for all such candidates
    query_side = bool(tuned_model.query_side)
    base_docs: dict[int, np.ndarray] = {}  # id(corpus) -> vectors; the corpora live as long as this call

    def candidate(alpha: float) -> "LoadedModel | SentenceTransformer":
        if alpha in (0.0, 1.0):
            return base_model if alpha == 0.0 else tuned_model
        if query_side:
            return interpolate_query_side(tuned_model, alpha)
        return merge_models(base_model.st, [tuned_model.st], alpha)  # new weights: no fingerprint, nothing cached

    for alpha in cfg.alphas:
        model = candidate(alpha)
        shared = base_docs if alpha == 0.0 or query_side else None
        dev_run = _search(model, base, dev.queries, dev.corpus, shared)
        per_query = _ndcg(dev_qrels, dev_run)
        dev_scores[alpha] = per_query
        cand = {"alpha": alpha, "name": _name(alpha), "dev_ndcg@10": float(np.mean(list(per_query.values()))), "guards": {}}
        if teacher_guard and alpha == 0.0:  # the base is the first candidate: its ranking is half the teacher
            teacher_qrels = teacher_judgements(dev_run, dev.queries, dev.corpus, teacher_bm25_weight)
        guard_scores = {TEACHER_GUARD: _ndcg(teacher_qrels, dev_run)} if teacher_guard else {}
        for name, queries, corpus, qrels in guards:
            guard_scores[name] = _ndcg(qrels, _search(model, base, queries, corpus, shared))
        for name, scores in guard_scores.items():
            if alpha == 0.0:
                base_guard[name] = scores
            qids = sorted(scores)
            test = paired_randomization_test([base_guard[name][q] for q in qids], [scores[q] for q in qids],
                                             permutations=cfg.permutations)
            cand["guards"][name] = {"ndcg@10": float(np.mean(list(scores.values()))), "delta": test["delta"], "p_value": test["p_value"]}
        cand["lost_on"] = [n for n, g in cand["guards"].items() if g["delta"] < 0 and g["p_value"] < cfg.guard_p_value]
        cand["qualified"] = not cand["lost_on"]
        log.info("select: %s dev nDCG@10 %.4f%s", cand["name"], cand["dev_ndcg@10"],
                 "".join(f", {n} {g['ndcg@10']:.4f}" for n, g in cand["guards"].items()))
        candidates.append(cand)
    chosen, why = choose_candidate(candidates, dev_scores, guarded=bool(guards) or teacher_guard)
    save_model_atomically(candidate(chosen["alpha"]), out / "model")
    selection = {"shipped": chosen["name"], "alpha": chosen["alpha"], "why": why, "beat_base": chosen["alpha"] > 0.0,
                 "dev": dev.description, "candidates": candidates, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "selection.json", selection)
    return selection


def choose_candidate(candidates: list[dict[str, Any]], dev_scores: dict[float, dict[str, float]], *,
                     guarded: bool = False) -> tuple[dict[str, Any], str]:
    """The candidate that ships, and why (``guarded``: the candidates were also scored on guards).

    Only a qualified candidate that beats the base on dev can ship; otherwise the base does. Of
    those, the best on dev -- but a merge replaces the tuned model only when it is better by more
    than the standard error of their paired per-query difference on dev: a smaller lead is noise
    (on NFCorpus' 200 dev queries, merge 0.3469 vs tuned 0.3458), and in-domain the tuned model is
    the better bet.
    """
    base = next(c for c in candidates if c["alpha"] == 0.0)
    better = [c for c in candidates if c["qualified"] and c["alpha"] > 0.0 and c["dev_ndcg@10"] > base["dev_ndcg@10"]]
    if not better:
        vetoed = [c for c in candidates if c["alpha"] > 0.0 and c["dev_ndcg@10"] > base["dev_ndcg@10"]]
        if vetoed:
            lost = sorted({g for c in vetoed for g in c.get("lost_on", [])})
            return base, f"{', '.join(c['name'] for c in vetoed)} beat the base model on dev but lost significantly on {', '.join(lost)}"
        return base, "no candidate beat the base model on dev" + (" without a significant loss on a guard" if guarded else "")
    chosen, why = _best_of(better, base, dev_scores)
    return chosen, why + (", no significant loss on any guard" if guarded else "")


def _best_of(better: list[dict[str, Any]], base: dict[str, Any], dev_scores: dict[float, dict[str, float]]) -> tuple[dict[str, Any], str]:
    best = max(better, key=lambda c: (c["dev_ndcg@10"], c["alpha"]))
    tuned = next((c for c in better if c["alpha"] == 1.0), None)
    if tuned is not None and best is not tuned:
        qids = sorted(dev_scores[1.0])
        diff = np.array([dev_scores[best["alpha"]][q] - dev_scores[1.0][q] for q in qids])
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if diff.mean() <= se:
            return tuned, (f"best on dev within noise ({tuned['dev_ndcg@10']:.4f} vs {best['name']} {best['dev_ndcg@10']:.4f}, "
                           f"lead {diff.mean():+.4f} <= its standard error {se:.4f}) and above base {base['dev_ndcg@10']:.4f}")
    return best, f"best on dev ({best['dev_ndcg@10']:.4f} vs base {base['dev_ndcg@10']:.4f})"


def render_selection(sel: dict[str, Any]) -> list[str]:
    """Markdown lines of ``selection.json``: what ships and why, every candidate on dev and on each
    guard (the run report and the model card)."""
    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)

    lines = ["## Which weights ship", "", f"**{sel.get('shipped')}** (merge weight alpha = {sel.get('alpha', 1.0):g}: "
             f"0 = the base model, 1 = the tuned model): {sel.get('why')}. Dev set: {num(sel.get('dev'))}.", ""]
    cands = sel.get("candidates") or []
    if cands:
        guards = sorted({g for c in cands for g in (c.get("guards") or {})})
        lines += ["| candidate | alpha | dev nDCG@10 | " + "".join(f"{g} nDCG@10 | " for g in guards) + "qualified |",
                  "|---|---:|---:|" + "---:|" * len(guards) + "---|"]
        for c in cands:
            gcells = "".join(f"{num(c['guards'][g]['ndcg@10'])} (p {c['guards'][g]['p_value']:.3f}) | " for g in guards)
            lines.append(f"| {c['name']} | {c['alpha']:g} | {num(c['dev_ndcg@10'])} | {gcells}{'yes' if c.get('qualified') else 'no'} |")
        lines.append("")
    return lines


def _name(alpha: float) -> str:
    return "base" if alpha == 0.0 else "tuned" if alpha == 1.0 else f"merged(alpha={alpha:g})"


def run_selection(cfg: SelectConfig, base: ModelConfig, train_dir: Path, dev: "DevSplit | None", out_dir: Path, *,
                  overwrite: bool, pseudo_queries: bool = False, teacher_bm25_weight: float = 0.5) -> dict[str, Any]:
    """The stage: skipped when the tuned model, the dev split and the settings did not change."""
    import json

    from .io import atomic_write_json
    from .run_folder import hash_path, prepare_run_folder, stage_key, write_manifest
    from .models import model_fingerprint, resolve_model_path

    inputs = {"base": model_fingerprint(resolve_model_path(base.name)), "tuned": hash_path(train_dir / "model"),
              "dev": dev.description if dev else "none"}
    if (pseudo_queries if cfg.teacher_guard is None else cfg.teacher_guard):
        # only where the teacher judges: the inputs of a run without the guard stay those of a folder
        # made before the guard existed, so upgrading never re-runs its select stage (nor the index)
        inputs |= {"teacher_guard": True, "teacher_bm25_weight": teacher_bm25_weight}
    key = stage_key({"select": cfg.model_dump(mode="json"), "model": base.model_dump(mode="json")}, inputs)
    # same_work compares the select settings only: the base model's settings are the train stage's
    # (the pipeline fills one model into both), so a change there re-runs train and, after it, select
    if prepare_run_folder(out_dir, STAGE, key, overwrite=overwrite, config=cfg, inputs=inputs):
        return {"skipped": True, **json.loads((out_dir / "selection.json").read_text())}
    if dev is None:  # the user turned the dev signal off: nothing to guard with, and the summary says so
        from .io import save_model_atomically
        from .models import load_model

        save_model_atomically(load_model(base.model_copy(update={"name": str(train_dir / "model")})), out_dir / "model")
        selection = {"shipped": "tuned", "alpha": 1.0, "why": "no dev signal (train.dev.enabled: false): shipped unguarded",
                     "beat_base": None, "dev": None, "candidates": [], "seconds": 0.0}
        atomic_write_json(out_dir / "selection.json", selection)
    else:
        selection = select_model(cfg, base, train_dir / "model", dev, out_dir, pseudo_queries=pseudo_queries,
                                 teacher_bm25_weight=teacher_bm25_weight)
    write_manifest(out_dir, stage=STAGE, key=key, config=cfg, inputs=inputs,
                   metrics=selection,
                   timings={"total_seconds": selection["seconds"]}, artifacts=["model", "selection.json"])
    return {"skipped": False, **selection}
