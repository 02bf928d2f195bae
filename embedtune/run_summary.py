"""What a finished (or partly finished) run folder says, in one dict: the figures of the
evaluation, what the select stage shipped and why, wall time and peak memory per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run_folder import RunFolder


def headline(run_dir: str | Path) -> dict[str, Any]:
    """Base vs tuned (and hybrid) nDCG@10 with CIs and p-values, what shipped and why, wall time and
    peak memory per stage: the summary ``embedtune run`` prints (its ``--json`` line)."""
    import json

    folder = RunFolder(run_dir)
    run_dir = folder.root
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    stages = folder.read_state().get("stages", {})
    if stages:
        out["wall_time_s"] = round(sum(s.get("seconds") or 0 for s in stages.values()), 1)
        out["stage_seconds"] = {k: round(v.get("seconds") or 0, 1) for k, v in stages.items()}
        out["stage_peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in stages.items() if v.get("peak_rss_mb") is not None}
    selection = run_dir / "select" / "selection.json"
    if selection.is_file():
        sel = json.loads(selection.read_text())
        out["shipped"] = {"model": sel["shipped"], "alpha": sel["alpha"], "why": sel["why"], "beat_base": sel["beat_base"],
                          "dev_ndcg@10": {c["name"]: round(c["dev_ndcg@10"], 4) for c in sel["candidates"]}}
        guards = {c["name"]: {g: {"ndcg@10": round(v["ndcg@10"], 4), "p_value": round(v["p_value"], 4)} for g, v in c["guards"].items()}
                  for c in sel["candidates"] if c.get("guards")}
        if guards:  # each candidate on each guard (teacher(dev) for pseudo-queries, the config's benchmarks)
            out["shipped"]["guards"] = guards
    index_manifest, train_manifest = run_dir / "index" / "manifest.json", run_dir / "train" / "manifest.json"
    if index_manifest.is_file() and train_manifest.is_file():
        # whether the shipped model's document vectors differ from the base model's: with a
        # query-side model they do not, and every index of the base model stays valid
        info = json.loads(index_manifest.read_text())["index"]
        base_sha = json.loads(train_manifest.read_text()).get("models", {}).get("base", {}).get("sha256")
        out["reindexed"] = (info.get("document_encoder_sha256") or info.get("model_sha256")) != base_sha
    manifest = run_dir / "eval" / "manifest.json"
    if manifest.is_file():
        summary = json.loads(manifest.read_text())["metrics"]
        models = summary["models"]
        out["dataset"], out["split"], out["queries"] = summary["dataset"], summary["split"], summary["queries"]
        out["base"] = {"ndcg@10": models["base"]["ndcg@10"], "recall@100": models["base"]["recall@100"]}
        out["tuned"] = {"ndcg@10": models["tuned"]["ndcg@10"], "recall@100": models["tuned"]["recall@100"]}
        if "bm25" in models:
            out["bm25"] = {"ndcg@10": models["bm25"]["ndcg@10"]}
        d = summary["deltas"]["tuned"]["ndcg@10"]
        out["delta_ndcg@10"], out["p_value"], out["ci95"] = d["delta"], d["p_value"], d["ci95"]
        out["ndcg@10"] = out["tuned"]["ndcg@10"]
        out["wins_ties_losses"] = summary["wins_ties_losses"]["tuned"]
        for name in ("merged", "hybrid(base)", "hybrid(tuned)", "hybrid(merged)"):
            if name in models:
                d = summary["deltas"][name]["ndcg@10"]
                out[name] = {"ndcg@10": models[name]["ndcg@10"], "recall@100": models[name]["recall@100"],
                             "delta_vs_base": d["delta"], "ci95": d["ci95"], "p_value": d["p_value"]}
                if name in summary.get("fusion", {}):
                    out[name] |= {"bm25_weight": summary["fusion"][name]["config"]["bm25_weight"],
                                  "fusion_chosen_on": summary["fusion"][name]["source"]}
        for name, d in summary.get("deltas_vs", {}).get("hybrid(base)", {}).items():
            if name in ("tuned", "merged", "hybrid(tuned)", "hybrid(merged)"):
                r = d["ndcg@10"]
                out.setdefault("vs_hybrid_base", {})[name] = {"delta": r["delta"], "ci95": r["ci95"], "p_value": r["p_value"]}
        if "best" in summary:
            out["best"] = summary["best"]
    return out
