"""The evaluation's run folder: ``metrics.json`` (everything, per query too), ``report.md``
(tables) and PNG plots (metric bars per system; histogram of per-query nDCG@10 deltas)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import HEADLINE, METRICS, EvalConfig, evaluate, summary_json
from .io import atomic_write_json, atomic_write_text, atomic_write_with
from .run_folder import hash_path, prepare_run_folder, read_manifest, stage_key, write_manifest

BAR_METRICS = ("ndcg@10", "ndcg@100", "map@100", "recall@10", "recall@100", "mrr@10")


def _plot_bars(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    x = np.arange(len(BAR_METRICS))
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, s in enumerate(systems):
        vals = [s["metrics"][m] for m in BAR_METRICS]
        bars = ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, label=s["name"])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, BAR_METRICS)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{Path(results['dataset']).name} / {results['split']} ({results['queries']} queries)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _plot_deltas(results: dict[str, Any], comparison: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {s["name"]: s for s in results["systems"]}
    base = by_name[comparison["baseline"]]["per_query"][HEADLINE]
    other = by_name[comparison["system"]]["per_query"][HEADLINE]
    deltas = np.array([other[q] - base[q] for q in base])
    wtl = comparison[f"{HEADLINE}_per_query"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.hist(deltas, bins=np.linspace(-1, 1, 41), color="#4C72B0", edgecolor="white")
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(deltas.mean(), color="#C44E52", lw=1.5, label=f"mean {deltas.mean():+.4f}")
    ax.set_xlabel(f"per-query {HEADLINE}: {comparison['system']} - {comparison['baseline']}")
    ax.set_ylabel("queries")
    ax.set_title(f"wins {wtl['wins']} / ties {wtl['ties']} / losses {wtl['losses']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _plot_fusion(results: dict[str, Any], path: Path) -> bool:
    """nDCG@10 on the dev queries against the BM25 weight, one line per hybrid system."""
    curves = {s["name"]: s["fusion"] for s in results["systems"] if s["kind"] == "hybrid" and s["fusion"]["curve"]}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, f in curves.items():
        for method, points in f["curve"].items():
            w, v = zip(*points)
            line, = ax.plot(w, v, marker=".", label=f"{name} ({method})")
            chosen = f["config"]["bm25_weight"]
            ax.axvline(chosen, color=line.get_color(), lw=0.8, ls="--")
    ax.set_xlabel("BM25 weight (0 = dense only, 1 = BM25 only)")
    ax.set_ylabel(f"dev {HEADLINE}")
    ax.set_title(f"fusion weight on dev: {next(iter(curves.values()))['source']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:40] or "system"


def render_markdown(results: dict[str, Any], images: dict[str, str]) -> str:
    systems = results["systems"]
    lines = [f"# Retrieval evaluation: {Path(results['dataset']).name} / {results['split']}", "",
             f"{results['queries']} queries, {results['documents']} documents. Exact search, cosine similarity; metrics by pytrec_eval as in BEIR."]
    if results.get("skipped_qrels"):
        lines.append(f"{results['skipped_qrels']} qrels rows with unknown ids were skipped (--skip-unknown-ids).")
    lines += ["", "| metric | " + " | ".join(s["name"] for s in systems) + " |", "|---|" + "---:|" * len(systems)]
    for m in METRICS:
        best = max(s["metrics"][m] for s in systems)
        cells = [f"**{s['metrics'][m]:.4f}**" if s["metrics"][m] == best and len(systems) > 1 else f"{s['metrics'][m]:.4f}" for s in systems]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    for c in results["comparisons"]:
        wtl = c[f"{HEADLINE}_per_query"]
        lines += [f"## {c['system']} vs {c['baseline']}", "",
                  f"Per query {HEADLINE}: **{wtl['wins']} wins / {wtl['ties']} ties / {wtl['losses']} losses**.", "",
                  "| metric | delta | 95% CI | p-value |", "|---|---:|---:|---:|"]
        for m in METRICS:
            r = c["metrics"][m]
            mark = " *" if r["p_value"] < 0.05 else ""
            lines.append(f"| {m} | {r['delta']:+.4f}{mark} | [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {r['p_value']:.4f} |")
        lines += ["", "\\* p < 0.05 (paired randomization test over queries).", ""]
        if c["system"] in images and c["baseline"] == systems[0]["name"]:
            lines += [f"![per-query {HEADLINE} deltas]({images[c['system']]})", ""]
    lines += ["## Systems", "", "| system | kind | details |", "|---|---|---|"]
    for s in systems:
        if s["kind"] == "dense":
            speed = "corpus embeddings from cache" if s["corpus_from_cache"] else f"encoded at {s['docs_per_second']} docs/s"
            lines.append(f"| {s['name']} | dense | `{s['model']['path']}` (sha256 {s['model']['sha256'][:12]}), {speed} |")
        elif s["kind"] == "hybrid":
            f = s["fusion"]
            c = f["config"]
            how = f"{c['method']}, BM25 weight {c['bm25_weight']:.2f}" + (f", rrf k {c['rrf_k']}" if c["method"] == "rrf" else "")
            dev = f"chosen on {f['source']} (dev {HEADLINE} {f['dev_ndcg@10']:.4f})" if f["curve"] else f["source"]
            lines.append(f"| {s['name']} | hybrid | top {c['depth']} of each retriever fused: {how}; {dev} |")
        else:
            lines.append(f"| {s['name']} | bm25 | bm25s, Lucene BM25 k1=1.5 b=0.75, {s['seconds']} s |")
    lines += ["", "![metrics per system](metrics.png)", ""]
    if images.get("fusion"):
        lines += ["## Fusion weight on dev", "", "Chosen on dev queries, never on the evaluated split.", "",
                  f"![fusion weight curve]({images['fusion']})", ""]
    return "\n".join(lines)


def run_evaluation(cfg: EvalConfig, out_dir: str | Path, *, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """The ``eval`` stage: evaluate, then write metrics.json, report.md, plots and the manifest."""
    from .corpus import parse_benchmark_source
    from .precision import resolve_precision
    from .models import model_fingerprint, resolve_device, resolve_model_path

    out = Path(out_dir)
    folder, _ = parse_benchmark_source(f"{cfg.benchmark}:{cfg.split}")
    inputs = {
        "corpus.jsonl": hash_path(folder / "corpus.jsonl"),
        "queries.jsonl": hash_path(folder / "queries.jsonl"),
        f"qrels/{cfg.split}.tsv": hash_path(folder / "qrels" / f"{cfg.split}.tsv"),
    }
    for i, m in enumerate(cfg.models):
        inputs[f"model[{i}]"] = model_fingerprint(resolve_model_path(m.name))
        # what "auto" means can change (measured default, bf16 support): the precision used counts
        inputs[f"precision[{i}]"] = resolve_precision(m.precision, resolve_device(m.device))
    not_identity = ("cache_dir",)  # where embeddings are cached does not change the results
    key = stage_key(cfg.model_dump(mode="json", exclude=set(not_identity)), inputs)
    if prepare_run_folder(out, "eval", key, overwrite=overwrite, config=cfg, inputs=inputs, ignore=not_identity):
        manifest = read_manifest(out)
        import json

        results = json.loads((out / "metrics.json").read_text())
        return {"skipped": True, "summary": manifest["metrics"], "results": results, "out": str(out)}
    t0 = time.perf_counter()
    results = evaluate(cfg, show_progress=show_progress)
    images = {}
    _plot_bars(results, out / "metrics.png")
    first = results["systems"][0]["name"]
    for c in (c for c in results["comparisons"] if c["baseline"] == first):
        name = f"delta_{_slug(c['system'])}.png"
        _plot_deltas(results, c, out / name)
        images[c["system"]] = name
    if _plot_fusion(results, out / "fusion.png"):
        images["fusion"] = "fusion.png"
    atomic_write_json(out / "metrics.json", results)
    atomic_write_text(out / "report.md", render_markdown(results, images))
    summary = summary_json(results)
    write_manifest(out, stage="eval", key=key, config=cfg, inputs=inputs,
                   models={s["name"]: s["model"] for s in results["systems"] if s["kind"] == "dense"},
                   metrics=summary, timings={"total_seconds": round(time.perf_counter() - t0, 2)},
                   artifacts=["metrics.json", "report.md", "metrics.png", *images.values()])
    return {"skipped": False, "summary": summary, "results": results, "out": str(out)}
