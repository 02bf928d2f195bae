"""``report.md`` + PNGs of a mining run, so a person can judge the negatives before training on
them: counts, what each filter removed, positive vs negative score histograms, and a few example
queries with their positive and chosen negatives."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_write_text, atomic_write_with

if TYPE_CHECKING:
    from .config import MineConfig
    from .negatives import MiningResult

FILTER_DESCRIPTIONS = {
    "retrieved": "candidates retrieved (all queries, positives included)",
    "known_positive": "known positives of the query (all its judgements in the source)",
    "duplicate_of_positive": "exact-duplicate texts of a positive",
    "window_candidates": "non-positive candidates inside the rank window",
    "relative_margin": "score > pos - |pos| x relative_margin",
    "absolute_margin": "score > pos - absolute_margin",
    "max_score": "score > max_score",
    "teacher": "teacher (cross-encoder or hybrid) score > its positive score - margin",
    "eligible": "candidates that passed every filter",
    "chosen": "negatives chosen per query (the rows of a query share them)",
}


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
    return text.replace("|", "\\|").replace("<", "&lt;")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _plot_scores(path: Path, positive: np.ndarray, negative: np.ndarray, title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    data = [a for a in (positive, negative) if a.size]
    if data:
        lo = float(min(a.min() for a in data))
        hi = float(max(a.max() for a in data))
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 50)
        if positive.size:
            ax.hist(positive, bins=bins, alpha=0.6, density=True, label=f"positives (n={positive.size:,})", color="tab:green")
        if negative.size:
            ax.hist(negative, bins=bins, alpha=0.6, density=True, label=f"chosen negatives (n={negative.size:,})", color="tab:red")
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _plot_ranks(path: Path, ranks: np.ndarray, range_max: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    if ranks.size:
        ax.hist(ranks, bins=np.arange(1, max(int(ranks.max()), range_max) + 2) - 0.5, color="tab:blue")
    ax.set_title("Rank of the chosen negatives in the candidate list")
    ax.set_xlabel("rank (1 = top candidate; positives included in the list)")
    ax.set_ylabel("negatives")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _describe(a: np.ndarray) -> list[str]:
    if a.size == 0:
        return ["-"] * 5
    return [f"{a.mean():.4f}", f"{np.median(a):.4f}", f"{a.std():.4f}", f"{a.min():.4f}", f"{a.max():.4f}"]


def write_report(folder: Path, cfg: "MineConfig", summary: dict[str, Any], result: "MiningResult") -> list[str]:
    """Write ``report.md``, ``scores.png``, ``negative_ranks.png`` (and ``teacher_scores.png``); returns their names."""
    folder = Path(folder)
    rows = result.rows
    pos = np.asarray(result.stats["positive_scores"], dtype=np.float32)
    neg = np.asarray(result.stats["negative_scores"], dtype=np.float32)
    ranks = np.array([r for row in rows for r in row["negative_ranks"] if r > 0], dtype=np.int64)
    written = ["report.md", "scores.png", "negative_ranks.png"]
    _plot_scores(folder / "scores.png", pos, neg, "Retriever scores: positives vs chosen negatives", "cosine similarity (base model)")
    _plot_ranks(folder / "negative_ranks.png", ranks, cfg.range_max)
    with_teacher = cfg.cross_encoder is not None or cfg.hybrid_teacher is not None
    if cfg.cross_encoder is not None:
        teacher = f"cross-encoder `{cfg.cross_encoder.path}` (margin {cfg.cross_encoder.margin})"
        axis = "cross-encoder logit"
    elif cfg.hybrid_teacher is not None:
        teacher = f"hybrid BM25 + dense (BM25 weight {cfg.hybrid_teacher.bm25_weight}, margin {cfg.hybrid_teacher.margin})"
        axis = "fused score (cosine units)"
    if with_teacher:
        teacher_pos = np.array([r["teacher_positive_score"] for r in rows], dtype=np.float32)
        teacher_neg = np.array([s for r in rows for s in r["teacher_negative_scores"]], dtype=np.float32)
        _plot_scores(folder / "teacher_scores.png", teacher_pos, teacher_neg, "Teacher scores: positives vs chosen negatives", axis)
        written.append("teacher_scores.png")

    lines = [
        "# Hard-negative mining report",
        "",
        f"- pairs source: `{cfg.pairs}` ({summary['source']})",
        f"- corpus: `{cfg.corpus}`",
        f"- model: `{cfg.model.name}`; retriever: {cfg.retriever}"
        + (f" (RRF k={cfg.rrf_k})" if cfg.retriever == "hybrid" else "")
        + (f"; teacher: {teacher}" if with_teacher else ""),
        f"- window: ranks {cfg.range_min + 1}-{cfg.range_max} among non-positive candidates; sampling: {cfg.sampling}; "
        f"num_negatives: {cfg.num_negatives}; relative_margin: {cfg.relative_margin}; absolute_margin: {cfg.absolute_margin}; "
        f"max_score: {cfg.max_score}; margins against the {cfg.margin_against} positive; seed: {cfg.seed}",
        "",
        "## Counts",
        "",
        "| what | count |",
        "| --- | ---: |",
    ]
    for key, label in (
        ("queries", "queries"),
        ("pairs", "rows (query, positive)"),
        ("pool_documents", "candidate pool documents"),
        ("extra_documents", "positives added to the pool"),
        ("rows_full", f"rows with {cfg.num_negatives} negatives"),
        ("rows_short", "rows with fewer negatives (kept)"),
        ("rows_without_negatives", "rows with no negative (kept)"),
        ("negatives", "negatives written"),
    ):
        lines.append(f"| {label} | {_fmt(summary[key])} |")
    lines += [
        "",
        "Rows with fewer negatives are kept; the trainer decides whether to drop or pad them.",
        "",
        "## Filters",
        "",
        "Each candidate is counted under the first filter that removed it; margin filters count only "
        "candidates inside the rank window. Scores are the base model's cosine similarities; `pos` is "
        "the query's lowest-scoring positive.",
        "",
        "| filter | candidates | share of window |",
        "| --- | ---: | ---: |",
    ]
    counts = summary["filter_counts"]
    window = max(counts.get("window_candidates", 0), 1)
    for key, value in counts.items():
        share = f"{value / window:.1%}" if key not in ("retrieved", "known_positive", "duplicate_of_positive") else ""
        lines.append(f"| {key}: {FILTER_DESCRIPTIONS.get(key, key).replace('|', chr(92) + '|')} | {value:,} | {share} |")
    lines += [
        "",
        "## Scores",
        "",
        "| | mean | median | std | min | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| positives | " + " | ".join(_describe(pos)) + " |",
        "| chosen negatives | " + " | ".join(_describe(neg)) + " |",
        "",
        "![scores](scores.png)",
        "",
        "![negative ranks](negative_ranks.png)",
        "",
    ]
    if with_teacher:
        lines += ["![teacher scores](teacher_scores.png)", ""]

    source_stats = summary.get("pair_source") or {}
    if summary["source"] == "self":
        lines += ["## Generated pairs", "", "| generator | generated | kept | query words mean / p50 / p90 / max |", "| --- | ---: | ---: | --- |"]
        for gen, qw in source_stats.get("query_words", {}).items():
            lw = f"{qw['mean']} / {qw['p50']} / {qw['p90']} / {qw['max']}" if qw.get("count") else "-"
            lines.append(f"| {gen} | {source_stats['generated'].get(gen, 0):,} | {source_stats['kept'].get(gen, 0):,} | {lw} |")
        dropped = source_stats.get("dropped", {})
        lines += ["", f"Dropped: {', '.join(f'{k} {v:,}' for k, v in dropped.items()) or 'none'}.", ""]
    elif source_stats:
        lines += ["## Pairs source", ""] + [f"- {k}: {_fmt(v)}" for k, v in source_stats.items()] + [""]

    if cfg.report_examples and rows:
        lines += ["## Examples", "", "Texts truncated. Score = base-model cosine; rank in the candidate list (0 = given in the pairs file).", ""]
        rng = np.random.default_rng(cfg.seed)
        by_query: dict[str, dict] = {}
        for row in rows:
            by_query.setdefault(row["query_id"], row)
        candidates = [r for r in by_query.values() if r["negative_ids"]] or list(by_query.values())
        pick = sorted(rng.choice(len(candidates), size=min(cfg.report_examples, len(candidates)), replace=False))
        for i in pick:
            row = candidates[int(i)]
            ce = f", teacher {row['teacher_positive_score']:.3f}" if with_teacher else ""
            lines += [
                f"### Query `{_short(row['query_id'], 60)}`: {_short(row['query'], 200)}",
                "",
                f"- **positive** `{_short(row['positive_id'], 60)}` (score {row['positive_score']:.4f}{ce}): {_short(row['positive'], 240)}",
            ]
            for j, (doc_id, text, score, rank) in enumerate(zip(row["negative_ids"], row["negatives"], row["negative_scores"], row["negative_ranks"])):
                ce = f", teacher {row['teacher_negative_scores'][j]:.3f}" if with_teacher else ""
                lines.append(f"- negative {j + 1} `{_short(doc_id, 60)}` (score {score:.4f}, rank {rank}{ce}): {_short(text, 160)}")
            lines.append("")

    timings = result.timings
    if timings:
        lines += ["## Mining timings (s)", "", ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), ""]
    atomic_write_text(folder / "report.md", "\n".join(lines))
    return written
