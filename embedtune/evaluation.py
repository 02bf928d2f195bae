"""BEIR-style retrieval evaluation of one or more models (and BM25) on the same queries.

Metrics come from pytrec_eval exactly as beir's ``EvaluateRetrieval.evaluate`` computes them
(graded qrels; a query's own id removed from its results). MRR@10 is computed here the way
beir's ``evaluate_custom(..., "mrr")`` does, because beir only returns its mean and the paired
tests need it per query. Retrieval is exact top-k through ``embedtune.search.exact_search``
(blocks of queries, never a full query x corpus matrix).

The first system is the baseline. Every later system gets, per metric, the mean delta, the
p-value of a paired randomization test over queries and a bootstrap 95% CI of the delta, plus
wins / ties / losses in nDCG@10 per query.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

import numpy as np
from pydantic import AliasChoices, Field, model_validator

from .config import ModelConfig, StrictModel
from .corpus import BeirDataset, load_beir, parse_benchmark_source
from .errors import ConfigError
from .fusion import WEIGHT_GRID, FusionConfig, Run, fuse_runs

log = logging.getLogger("embedtune")

NDCG_K = (1, 3, 5, 10, 100)
MAP_K = (10, 100)
RECALL_K = (1, 5, 10, 100, 1000)
P_K = (1, 10)
MRR_K = 10
METRICS = (
    [f"ndcg@{k}" for k in NDCG_K] + [f"map@{k}" for k in MAP_K] + [f"recall@{k}" for k in RECALL_K]
    + [f"p@{k}" for k in P_K] + [f"mrr@{MRR_K}"]
)
HEADLINE = "ndcg@10"

# How a weight is chosen from the dev curve (``choose_weight``):
# - "argmax": the best mean dev nDCG@10. Over 21 weights it fits noise: on n random dev queries of
#   SciFact and NFCorpus it scored *worse* than 0.5 on the other dev queries at every n from 5 to 160
#   (eval/results/fusion_dev_sizes.md).
# - "significant": the argmax only if a paired randomization test on the dev queries gives p < 0.05
#   against the a-priori weight, else the a-priori weight. Safe with 5 queries, but it stays at 0.5
#   where the best weight is elsewhere and dev cannot show it significantly (demo: -0.014).
# - "bagged": the mean of the argmaxes over bootstrap resamples of the dev queries (bagging the
#   selection), snapped to the grid: a flat or noisy curve scatters the argmaxes and their mean falls
#   back toward the middle, a clear optimum keeps them together.
# - "lcb": the weight whose gain over the a-priori weight has the best lower confidence bound
#   (mean - 1.645 standard errors of the paired per-query differences; the prior's bound is 0): it
#   moves only as far as the dev queries agree, part of the way when the gain is uncertain.
# Measured on six model x corpus cases (eval/results/fusion_rules.md): "significant" is the only rule
# whose average stayed within 0.0007 of 0.5 at every dev size; "lcb" and "bagged" gained where the
# best weight is far from 0.5 (demo, tuned model: +0.016 / +0.029 at 40 queries) and cost up to
# 0.0015 / 0.013 elsewhere. So "significant" is the default.
FusionRule = Literal["significant", "bagged", "lcb", "argmax"]
FUSION_RULES: tuple[str, ...] = get_args(FusionRule)
FUSION_RULE = "significant"
FUSION_DEV_ALPHA = 0.05  # the "significant" rule's level
BAGGING_RESAMPLES = 200
LCB_Z = 1.645  # one-sided 95%


class EvalConfig(StrictModel):
    """Settings of ``embedtune eval``."""

    benchmark: str = Field(..., validation_alias=AliasChoices("benchmark", "data"),  # 'data': the key before 0.x, still read
                           description="BEIR folder or name (./data, ../shared/datasets).")
    split: str = "test"
    models: list[ModelConfig] = Field(default_factory=list, description="Models to compare; the first is the baseline.")
    labels: list[str] | None = Field(None, description="Display names of the models (default: from their names).")
    bm25: bool = Field(False, description="Add BM25 (bm25s) as a system.")
    depth: int = Field(1000, gt=0, validation_alias=AliasChoices("depth", "top_k"),
                       description="How deep each query's ranking is computed (recall@1000 needs 1000).")
    permutations: int = Field(10000, ge=100, description="Paired randomization test permutations / bootstrap resamples.")
    seed: int = 0
    skip_unknown_ids: bool = Field(False, description="Drop qrels rows naming unknown query/document ids (reported).")
    cache_dir: str | None = Field(None, description="Embedding cache folder; default ~/.cache/embedtune/embeddings.")
    hybrid: bool = Field(False, description="Add hybrid(<model>): BM25 fused with each model (embedtune.fusion).")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Fusion method and depth. A bm25_weight given "
                                 "here is used as it is, unless fusion_dev_split is set too.")
    fusion_dev_split: str | None = Field(None, description="Qrels split of the same benchmark the fusion weight is chosen "
                                         "on, per model (never the test split). Unset: 'dev' when the benchmark has one and "
                                         "no fusion.bm25_weight is given; otherwise the weight is fixed.")
    fusion_dev_queries: list[str] | None = Field(None, description="Only these query ids of fusion_dev_split (the "
                                                 "pipeline passes the queries training held out).")
    fusion_rule: FusionRule = Field(FUSION_RULE, description="How the weight is picked from the dev curve: significant "
                                    "(the best weight only if significantly better than fusion.bm25_weight), bagged, "
                                    "lcb or argmax (evaluation.FUSION_RULES).")

    @model_validator(mode="after")
    def _dev_is_not_test(self) -> "EvalConfig":
        if self.fusion_dev_split is not None and self.fusion_dev_split == self.split:
            raise ValueError(f"fusion_dev_split '{self.fusion_dev_split}' is the evaluated split; choose the weight on another split")
        return self


# --------------------------------------------------------------------------- metrics


def compute_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], *, ignore_identical_ids: bool = True,
    only: tuple[str, ...] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-query metrics: ``{metric: {query_id: value}}`` for every metric in :data:`METRICS`
    (or those of ``only``, e.g. ``("ndcg@10",)`` when sweeping a fusion weight).

    Queries of ``qrels`` missing from ``run`` score 0 (beir would silently skip them).
    """
    import pytrec_eval

    if ignore_identical_ids:
        run = {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}
    measures = {
        "ndcg_cut." + ",".join(map(str, NDCG_K)),
        "map_cut." + ",".join(map(str, MAP_K)),
        "recall." + ",".join(map(str, RECALL_K)),
        "P." + ",".join(map(str, P_K)),
    }
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, measures)
    scores = evaluator.evaluate({qid: run.get(qid, {}) for qid in qrels})
    names = {f"ndcg@{k}": f"ndcg_cut_{k}" for k in NDCG_K}
    names |= {f"map@{k}": f"map_cut_{k}" for k in MAP_K}
    names |= {f"recall@{k}": f"recall_{k}" for k in RECALL_K}
    names |= {f"p@{k}": f"P_{k}" for k in P_K}
    wanted = METRICS if only is None else only
    names = {ours: theirs for ours, theirs in names.items() if ours in wanted}
    out: dict[str, dict[str, float]] = {m: {} for m in wanted}
    for qid in qrels:
        per = scores.get(qid, {})
        for ours, theirs in names.items():
            out[ours][qid] = float(per.get(theirs, 0.0))
        if f"mrr@{MRR_K}" not in out:
            continue
        relevant = {d for d, s in qrels[qid].items() if s > 0}
        top = sorted(run.get(qid, {}).items(), key=lambda kv: kv[1], reverse=True)[:MRR_K]
        out[f"mrr@{MRR_K}"][qid] = next((1.0 / (r + 1) for r, (d, _) in enumerate(top) if d in relevant), 0.0)
    return out


def mean_metrics(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in per_query.items()}


# --------------------------------------------------------------------------- significance


def paired_randomization_test(a: Sequence[float], b: Sequence[float], *, permutations: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Two-sided paired randomization (sign-flip) test of mean(b - a), and a bootstrap 95% CI.

    With 16 or fewer queries every sign assignment is enumerated, so the p-value is exact.
    p = (#{|mean of flipped deltas| >= |observed|} + 1) / (#assignments + 1) for sampled flips.
    """
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ConfigError("no queries to compare")
    observed = d.mean()
    tol = 1e-12
    rng = np.random.default_rng(seed)
    if not np.any(np.abs(d) > tol):
        p = 1.0
    elif n <= 16:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        means = (signs * d).mean(axis=1)
        p = float(np.mean(np.abs(means) >= abs(observed) - tol))
    else:
        hits = 0
        done = 0
        while done < permutations:
            m = min(1000, permutations - done)
            signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
            hits += int(np.sum(np.abs((signs * d).mean(axis=1)) >= abs(observed) - tol))
            done += m
        p = (hits + 1) / (permutations + 1)
    boot = []
    for start in range(0, permutations, 1000):
        m = min(1000, permutations - start)
        idx = rng.integers(0, n, size=(m, n))
        boot.append(d[idx].mean(axis=1))
    boot_all = np.concatenate(boot)
    lo, hi = np.percentile(boot_all, [2.5, 97.5])
    return {"delta": float(observed), "p_value": float(p), "ci95": [float(lo), float(hi)]}


def wins_ties_losses(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> dict[str, int]:
    diffs = [b[q] - a[q] for q in a]
    return {"wins": sum(x > tol for x in diffs), "ties": sum(abs(x) <= tol for x in diffs), "losses": sum(x < -tol for x in diffs)}


def compare(baseline: dict[str, dict[str, float]], system: dict[str, dict[str, float]], *, permutations: int, seed: int) -> dict[str, Any]:
    qids = sorted(baseline[HEADLINE])
    out: dict[str, Any] = {"metrics": {}}
    for metric in METRICS:
        a = [baseline[metric][q] for q in qids]
        b = [system[metric][q] for q in qids]
        out["metrics"][metric] = paired_randomization_test(a, b, permutations=permutations, seed=seed)
    out[f"{HEADLINE}_per_query"] = wins_ties_losses(baseline[HEADLINE], system[HEADLINE])
    return out


# --------------------------------------------------------------------------- fusion weight


@dataclass
class FusionChoice:
    """The fusion chosen on a dev signal, and the curve it was chosen from."""

    config: FusionConfig
    dev_ndcg: float | None  # None: not chosen on dev (a fixed weight)
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # method -> [(weight, dev nDCG@10)]
    dev_queries: int = 0
    source: str = ""
    p_value: float | None = None  # the dev argmax against the a-priori weight (None: they are the same weight)
    rule: str | None = None  # how the weight was chosen from the curve (FUSION_RULES); None: fixed

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(mode="json"), "dev_ndcg@10": None if self.dev_ndcg is None else round(self.dev_ndcg, 4),
                "dev_queries": self.dev_queries, "source": self.source,
                "p_vs_default_weight": None if self.p_value is None else round(self.p_value, 4), "rule": self.rule,
                "curve": {m: [[w, round(v, 4)] for w, v in pts] for m, pts in self.curve.items()}}


def choose_weight(per_query: np.ndarray, weights: Sequence[float], *, prior: float = 0.5, rule: str = FUSION_RULE,
                  seed: int = 0) -> tuple[float, float | None]:
    """The weight ``rule`` picks from ``per_query`` (dev queries x ``weights``, each query's nDCG@10
    at each weight), and the paired randomization test's p of that weight against ``prior`` (None
    when it is the prior). Ties go to the weight nearest ``prior``. Used by ``choose_fusion`` and, on
    random subsets of dev queries, by ``eval/bench_fusion.py`` to compare the rules."""
    if rule not in FUSION_RULES:
        raise ConfigError(f"fusion rule must be one of {', '.join(FUSION_RULES)}, got '{rule}'", field="rule")
    w = np.asarray(weights, dtype=np.float64)
    if prior not in weights:
        raise ConfigError(f"the a-priori weight {prior} is not among the weights", field="bm25_weight")
    at_prior = int(np.flatnonzero(w == prior)[0])
    if per_query.shape[0] == 0:
        return float(prior), None
    tie_break = -np.abs(w - prior) * 1e-9  # below any real difference of mean nDCG over <1e6 queries

    def argmax(rows: np.ndarray) -> int:
        return int(np.argmax(np.round(rows.mean(axis=0), 10) + tie_break))

    best = argmax(per_query)
    if rule == "lcb":
        n = per_query.shape[0]
        diff = per_query - per_query[:, [at_prior]]
        bound = diff.mean(axis=0) - LCB_Z * (diff.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.inf)
        bound[at_prior] = 0.0
        best = int(np.argmax(np.round(bound, 10) + tie_break))
    if rule == "bagged":
        rng = np.random.default_rng(seed)
        n = per_query.shape[0]
        picks = [argmax(per_query[rng.integers(0, n, n)]) for _ in range(BAGGING_RESAMPLES)]
        best = int(np.argmin(np.abs(w - w[picks].mean()) - tie_break))  # nearest grid weight, ties toward the prior
    if best == at_prior:
        return float(prior), None
    p = paired_randomization_test(per_query[:, at_prior], per_query[:, best])["p_value"]
    if rule == "significant" and p >= FUSION_DEV_ALPHA:
        return float(prior), p
    return float(w[best]), p


def choose_fusion(
    dense: Run,
    lexical: Run,
    qrels: dict[str, dict[str, int]],
    *,
    base: FusionConfig | None = None,
    methods: tuple[str, ...] | None = None,
    weights: tuple[float, ...] = WEIGHT_GRID,
    source: str = "",
    rule: str = FUSION_RULE,
) -> FusionChoice:
    """The BM25 weight ``rule`` (``choose_weight``) picks from the dev curve of each of ``methods``
    (default: ``base.method`` only), ``base.bm25_weight`` being the a-priori weight; across methods,
    the best mean dev nDCG@10 at the chosen weight."""
    base = base or FusionConfig()
    methods = methods or (base.method,)
    qrels = {q: r for q, r in qrels.items() if q in dense}
    grid = sorted(set(weights) | {base.bm25_weight})
    best: FusionChoice | None = None
    curve: dict[str, list[tuple[float, float]]] = {}
    for method in methods:
        per_query = fusion_matrix(dense, lexical, qrels, base.model_copy(update={"method": method}), grid)
        means = per_query.mean(axis=0) if qrels else np.zeros(len(grid))
        curve[method] = [(float(w), float(m)) for w, m in zip(grid, means) if w in weights]
        w, p = choose_weight(per_query, grid, prior=base.bm25_weight, rule=rule)
        score = float(means[grid.index(w)])
        if best is None or round(score, 10) > round(best.dev_ndcg, 10):
            note = source
            if rule == "significant" and p is not None and w == base.bm25_weight:
                note += f"; kept bm25_weight {base.bm25_weight}: the dev argmax was not significantly better (p = {p:.2g} >= {FUSION_DEV_ALPHA})"
            best = FusionChoice(config=base.model_copy(update={"method": method, "bm25_weight": w}), dev_ndcg=score,
                                dev_queries=len(qrels), source=note, p_value=p, rule=rule)
    assert best is not None
    best.curve = curve
    return best


def fusion_matrix(dense: Run, lexical: Run, qrels: dict[str, dict[str, int]], fusion: FusionConfig,
                  weights: Sequence[float]) -> np.ndarray:
    """nDCG@10 of each judged query (rows, sorted ids) fused at each BM25 weight (columns)."""
    qids = sorted(q for q in qrels if q in dense)
    out = np.zeros((len(qids), len(weights)))
    for j, w in enumerate(weights):
        ndcg = compute_metrics(qrels, fuse_runs(dense, lexical, fusion.model_copy(update={"bm25_weight": float(w)})),
                               only=("ndcg@10",))["ndcg@10"]
        out[:, j] = [ndcg.get(q, 0.0) for q in qids]
    return out


# --------------------------------------------------------------------------- retrieval


def dense_run(model_cfg: ModelConfig, ds: BeirDataset, *, top_k: int, cache_dir: str | None, show_progress: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Retrieve ``top_k`` documents per query with a dense model; returns (run, info)."""
    from .encoding import cache_path, encode_corpus, encode_queries
    from .models import load_model, model_info
    from .search import exact_search

    model = load_model(model_cfg)
    doc_ids = list(ds.corpus)
    texts = [ds.corpus[d].full_text for d in doc_ids]
    t0 = time.perf_counter()
    cached = cache_path(model, model_cfg, doc_ids, texts, cache_dir).is_file()
    docs = encode_corpus(model, model_cfg, doc_ids, texts, cache_dir=cache_dir, show_progress=show_progress)
    encode_s = time.perf_counter() - t0
    qids = list(ds.queries)
    # cached too: the benchmark's queries are fixed, and re-running an evaluation should encode nothing
    queries = encode_queries(model, model_cfg, qids, [ds.queries[q] for q in qids], cache_dir=cache_dir)
    t1 = time.perf_counter()
    # one extra result so that dropping a query's own id still leaves top_k (as beir does)
    scores, idx = exact_search(queries, docs, min(top_k + 1, len(doc_ids)))
    search_s = time.perf_counter() - t1
    run = {qid: _top({doc_ids[j]: float(s) for s, j in zip(scores[i], idx[i])}, qid, top_k) for i, qid in enumerate(qids)}
    info = {
        "kind": "dense",
        "model": model_info(model_cfg, model),
        "precision": model.precision,
        "corpus_from_cache": cached,
        "corpus_encode_seconds": round(encode_s, 3),
        "docs_per_second": None if cached else round(len(doc_ids) / max(encode_s, 1e-9), 1),
        "search_seconds": round(search_s, 3),
    }
    return run, info


def sampled_precision_check(reference, other, source: str, prompts: dict[str, str], *, queries: int = 200,
                            distractors: int = 2000, seed: int = 0) -> dict[str, Any]:
    """nDCG@10 of two encoders of one model (torch vs its int8 twin) on a sample of the benchmark
    ``source`` (``DIR[:split]``): ``queries`` sampled queries against their judged documents plus
    ``distractors`` other documents -- a check that takes a minute, not the full evaluation."""
    from .encoding import encode_texts
    from .search import exact_search

    folder, split = parse_benchmark_source(source)
    ds = load_beir(folder, split)
    rng = np.random.default_rng(seed)
    qids = sorted(ds.qrels)
    qids = sorted(rng.choice(qids, size=min(queries, len(qids)), replace=False).tolist())
    judged = sorted({d for q in qids for d in ds.qrels[q] if d in ds.corpus})
    rest = sorted(set(ds.corpus) - set(judged))
    doc_ids = judged + sorted(rng.choice(rest, size=min(distractors, len(rest)), replace=False).tolist())
    texts = [ds.corpus[d].full_text for d in doc_ids]
    qrels = {q: ds.qrels[q] for q in qids}
    per_query = {}
    for name, model in (("torch", reference), ("int8", other)):
        docs = encode_texts(model, texts, prompt=prompts["document"], precision="fp32", show_progress=False)
        qv = encode_texts(model, [ds.queries[q] for q in qids], prompt=prompts["query"], precision="fp32",
                          show_progress=False, task="query")
        scores, idx = exact_search(qv, docs, min(100, len(doc_ids)))
        run = {q: {doc_ids[j]: float(v) for j, v in zip(idx[i], scores[i]) if j >= 0} for i, q in enumerate(qids)}
        per_query[name] = compute_metrics(qrels, run)
    a = [per_query["torch"][HEADLINE][q] for q in qids]
    b = [per_query["int8"][HEADLINE][q] for q in qids]
    test = paired_randomization_test(a, b)
    return {"dataset": f"{folder.name}:{split}", "queries": len(qids), "documents": len(doc_ids),
            "ndcg@10_torch": round(float(np.mean(a)), 5), "ndcg@10_int8": round(float(np.mean(b)), 5),
            "ndcg@10_delta": round(float(np.mean(b) - np.mean(a)), 5), "p_value": round(test["p_value"], 4)}


def _top(results: dict[str, float], qid: str, k: int) -> dict[str, float]:
    """The query's own id removed (as beir does), then the best ``k``."""
    results.pop(qid, None)
    return dict(sorted(results.items(), key=lambda kv: kv[1], reverse=True)[:k])


def bm25_run(ds: BeirDataset, *, top_k: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    from .lexical import bm25_search

    doc_ids = list(ds.corpus)
    qids = list(ds.queries)
    t0 = time.perf_counter()
    scores, ids = bm25_search(doc_ids, [ds.corpus[d].full_text for d in doc_ids], [ds.queries[q] for q in qids], min(top_k + 1, len(doc_ids)))
    run = {qid: _top({d: float(s) for d, s in zip(ids[i], scores[i])}, qid, top_k) for i, qid in enumerate(qids)}
    return run, {"kind": "bm25", "seconds": round(time.perf_counter() - t0, 3)}


def _labels(cfg: EvalConfig) -> list[str]:
    if cfg.labels is not None:
        if len(cfg.labels) != len(cfg.models):
            raise ConfigError(f"{len(cfg.labels)} labels for {len(cfg.models)} models", field="labels")
        names = list(cfg.labels)
    else:
        # a short name as given ('minilm', 'org/model'); the last two parts of a long local path
        names = [m.name if len(m.name) <= 40 else "/".join(Path(m.name).parts[-2:]) for m in cfg.models]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def _fusion_dev(cfg: EvalConfig, folder: Path) -> BeirDataset | None:
    """The dev queries the fusion weight is chosen on, against the evaluated corpus."""
    split = cfg.fusion_dev_split
    if split is None and "bm25_weight" not in cfg.fusion.model_fields_set:
        split = "dev" if (folder / "qrels" / "dev.tsv").is_file() and cfg.split != "dev" else None
    if split is None:
        return None
    dev = load_beir(folder, split, skip_unknown_ids=cfg.skip_unknown_ids)
    keep = set(dev.qrels) if cfg.fusion_dev_queries is None else set(cfg.fusion_dev_queries) & set(dev.qrels)
    if not keep:
        raise ConfigError(f"no judged queries of split '{split}' to choose the fusion weight on", field="fusion_dev_queries")
    dev.queries = {q: t for q, t in dev.queries.items() if q in keep}
    dev.qrels = {q: r for q, r in dev.qrels.items() if q in keep}
    dev.split = split
    return dev


def _hybrid_systems(cfg: EvalConfig, folder: Path, dense: list[dict[str, Any]], lexical: Run) -> list[dict[str, Any]]:
    """hybrid(<model>) for each dense system: its run fused with BM25's, weight chosen on dev."""
    dev = _fusion_dev(cfg, folder)
    dev_lexical = bm25_run(dev, top_k=cfg.fusion.depth)[0] if dev is not None else None
    out = []
    for system, model_cfg in zip(dense, cfg.models):
        if dev is not None:
            dev_dense, _ = dense_run(model_cfg, dev, top_k=cfg.fusion.depth, cache_dir=cfg.cache_dir, show_progress=False)
            choice = choose_fusion(dev_dense, dev_lexical, dev.qrels, base=cfg.fusion, rule=cfg.fusion_rule,
                                   source=f"{folder.name}:{dev.split} ({len(dev.qrels)} queries)")
        else:
            choice = FusionChoice(config=cfg.fusion, dev_ndcg=None, source="fixed (no dev split)")
        log.info("hybrid(%s): %s, bm25_weight %.2f (%s)", system["name"], choice.config.method, choice.config.bm25_weight, choice.source)
        out.append({"name": f"hybrid({system['name']})", "kind": "hybrid", "fusion": choice.as_dict(),
                    "run": fuse_runs(system["run"], lexical, choice.config)})
    return out


def evaluate(cfg: EvalConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate every system of ``cfg`` on the same queries; returns the full results dict.

    The first system is the baseline of the paired tests; with ``hybrid``, every system is also
    compared with hybrid(<first model>), the best system that needs no training.
    """
    if not cfg.models and not cfg.bm25:
        raise ConfigError("nothing to evaluate: give at least one --model or --bm25", field="models")
    if cfg.hybrid and not cfg.models:
        raise ConfigError("--hybrid fuses BM25 with a model: give at least one --model", field="models")
    folder, _ = parse_benchmark_source(f"{cfg.benchmark}:{cfg.split}")
    ds = load_beir(folder, cfg.split, skip_unknown_ids=cfg.skip_unknown_ids)
    systems: list[dict[str, Any]] = []
    for label, model_cfg in zip(_labels(cfg), cfg.models):
        log.info("evaluating %s on %s/%s (%d queries, %d documents)", label, folder.name, cfg.split, len(ds.queries), len(ds.corpus))
        run, info = dense_run(model_cfg, ds, top_k=cfg.depth, cache_dir=cfg.cache_dir, show_progress=show_progress)
        systems.append({"name": label, **info, "run": run})
    lengths = {s["name"]: s["model"]["max_seq_length"] for s in systems}
    if len(set(lengths.values())) > 1:  # a tuned folder keeps the length it was trained at, the base its own
        log.warning("the models read documents at different token limits (%s): part of any difference is truncation; "
                    "pass --max-seq-length to compare them at one", ", ".join(f"{n} {n_tok}" for n, n_tok in lengths.items()))
    if cfg.bm25 or cfg.hybrid:
        run, info = bm25_run(ds, top_k=max(cfg.depth, cfg.fusion.depth) if cfg.hybrid else cfg.depth)
        bm25_system = {"name": "bm25", **info, "run": run}
        if cfg.hybrid:
            systems += _hybrid_systems(cfg, folder, list(systems), run)
        if cfg.bm25:
            systems.append(bm25_system)
    for s in systems:
        s["per_query"] = compute_metrics(ds.qrels, s.pop("run"))
        s["metrics"] = mean_metrics(s["per_query"])
    baselines = [systems[0]] + [s for s in systems if s["kind"] == "hybrid"][:1]
    comparisons = []
    for b in baselines:
        for s in systems:
            if s is not b and not (b is not systems[0] and s is systems[0]):
                comparisons.append({"system": s["name"], "baseline": b["name"],
                                    **compare(b["per_query"], s["per_query"], permutations=cfg.permutations, seed=cfg.seed)})
    return {
        "dataset": str(folder), "split": cfg.split, "queries": len(ds.queries), "documents": len(ds.corpus),
        "skipped_qrels": ds.skipped_qrels, "systems": systems, "comparisons": comparisons,
    }


def summary_json(results: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON: every metric per system, deltas, CIs and p-values."""
    first = results["systems"][0]["name"]
    against_first = [c for c in results["comparisons"] if c["baseline"] == first]
    out = {
        "dataset": Path(results["dataset"]).name,
        "split": results["split"],
        "queries": results["queries"],
        "models": {s["name"]: s["metrics"] for s in results["systems"]},
        "deltas": {c["system"]: {m: v for m, v in c["metrics"].items()} for c in against_first},
        "wins_ties_losses": {c["system"]: c[f"{HEADLINE}_per_query"] for c in against_first},
        "best": max(results["systems"], key=lambda s: s["metrics"][HEADLINE])["name"],
    }
    others = [c for c in results["comparisons"] if c["baseline"] != first]
    if others:
        # every system against hybrid(<first model>): the zero-training baseline to beat
        out["deltas_vs"] = {others[0]["baseline"]: {c["system"]: {m: v for m, v in c["metrics"].items()} for c in others}}
    fusion = {s["name"]: s["fusion"] for s in results["systems"] if s["kind"] == "hybrid"}
    if fusion:
        out["fusion"] = {name: {k: v for k, v in f.items() if k != "curve"} for name, f in fusion.items()}
    return out
