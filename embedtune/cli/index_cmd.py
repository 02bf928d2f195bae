"""`embedtune index build|update` and `embedtune search`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from . import options as opt
from .app import app, command, console, emit_json, without_none

index_app = typer.Typer(help="Build or update a search index over a corpus.", no_args_is_help=True)
app.add_typer(index_app, name="index")

BACKEND_HELP = "Vector search backend: auto | exact-numba | faiss-flat | faiss-ivf | faiss-hnsw | faiss-gpu-flat | faiss-gpu-ivf (GPU ones need faiss-gpu and a GPU)."


@index_app.command("build")
@command
def build_command(
    model: opt.Model = None,
    corpus: opt.Corpus = None,
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (replaced atomically)."),
    backend: str = typer.Option(None, "--backend", help=BACKEND_HELP + " Default: auto."),
    config: opt.Config = None,
    id_field: str = typer.Option(None, "--id-field", help="Corpus field holding the document id (default _id)."),
    title_field: str = typer.Option(None, "--title-field", help="Corpus field holding the title (default title)."),
    text_field: str = typer.Option(None, "--text-field", help="Corpus field holding the text (default text)."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Passage length in tokens when splitting documents (chunking.max_tokens; default: the model's --max-seq-length)."),
    overlap: int = typer.Option(None, "--overlap", help="Tokens shared by consecutive passages of a long document (default 32)."),
    max_seq_length: opt.MaxSeqLength = None,
    document_prompt: opt.DocumentPrompt = None,
    query_prompt: opt.QueryPrompt = None,
    batch_size: opt.BatchSize = None,
    precision: opt.Precision = None,
    device: opt.Device = None,
    cache_dir: opt.CacheDir = None,
    hybrid: bool = typer.Option(None, "--hybrid/--no-hybrid", help="Also write a BM25 index of the same passages (for 'search --hybrid')."),
    overwrite: opt.Overwrite = False,
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Split a corpus into passages, encode them and write a search index."""
    from ..config import load_config
    from ..errors import ConfigError
    from ..index import IndexConfig, build_index

    overrides = {
        "model": {"name": model, "document_prompt": document_prompt, "query_prompt": query_prompt, "batch_size": batch_size,
                  "precision": precision, "device": device, "max_seq_length": max_seq_length},
        "corpus": {"path": corpus, "id_field": id_field, "title_field": title_field, "text_field": text_field,
                   "chunking": {"max_tokens": max_tokens, "overlap": overlap}},
        "backend": backend,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "hybrid": hybrid,
    }
    cfg = load_config(IndexConfig, config, without_none(overrides)) if (corpus or config) else None
    if cfg is None:
        raise ConfigError("no corpus: pass --corpus or a --config with corpus.path", field="corpus.path")
    summary = build_index(cfg, out, overwrite=overwrite, show_progress=not (as_json or quiet))
    if summary["skipped"]:
        console.print(f"[green]already complete[/] -- {out} holds this index (same config, corpus and model); pass --overwrite to rebuild it")
    _print_summary(summary, f"index -> {out}")
    if as_json:
        emit_json(summary)


@index_app.command("update")
@command
def update_command(
    index_dir: Path = typer.Argument(..., help="Index folder made by 'embedtune index build'."),
    corpus: str = typer.Option(..., "--corpus", "-c", help="The new version of the corpus (same format and fields as the build)."),
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Re-encode only new or changed passages, drop removed ones; the result equals a fresh build."""
    from ..index import update_index

    summary = update_index(index_dir, corpus, show_progress=not (as_json or quiet))
    _print_summary(summary, f"index updated -> {index_dir}")
    if as_json:
        emit_json(summary)


@index_app.command("fusion")
@command
def fusion_command(
    index_dir: Path = typer.Argument(..., help="A hybrid index folder ('embedtune index build --hybrid')."),
    method: str = typer.Option(None, "--fusion-method", help="zscore | minmax | rrf."),
    bm25_weight: float = typer.Option(None, "--bm25-weight", help="Weight of BM25 in [0, 1]; the dense model gets 1 - weight."),
    rrf_k: int = typer.Option(None, "--rrf-k", help="Reciprocal-rank-fusion constant (> 0)."),
    depth: int = typer.Option(None, "--depth", help="How deep each retriever's ranking is taken before fusing."),
    as_json: opt.Json = False,
    verbose: opt.Verbose = False,
) -> None:
    """Show or set how a hybrid index fuses its BM25 and dense rankings (fusion.json)."""
    from ..config import build_config
    from ..index import missing_bm25_error, open_index, read_fusion, write_fusion

    index = open_index(index_dir, load_query_model=False)
    if index.lexical is None:
        raise missing_bm25_error(index_dir)
    changes = without_none({"method": method, "bm25_weight": bm25_weight, "rrf_k": rrf_k, "depth": depth})
    fusion = read_fusion(index_dir)
    if changes:
        fusion = build_config(type(fusion), {**fusion.model_dump(), **changes}, source="command-line options")
        write_fusion(index_dir, fusion, chosen_on={"source": "set by hand (embedtune index fusion)"})
    console.print(f"{index_dir}: {fusion.method} fusion, BM25 weight {fusion.bm25_weight:.2f}, depth {fusion.depth}"
                  + (f", rrf k {fusion.rrf_k}" if fusion.method == "rrf" else ""))
    if as_json:
        emit_json({"index": str(index_dir), "fusion": fusion.model_dump(mode="json"), "changed": bool(changes)})


def _print_summary(s: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model", f"{s['model']} ({s['model_sha256'][:12]})")
    table.add_row("backend / dim", f"{s['backend']} / {s['dim']}" + (" + BM25" if s.get("hybrid") else ""))
    table.add_row("documents -> passages", f"{s.get('documents', 0):,} -> {s['count']:,}")
    if s.get("split_documents"):
        table.add_row("documents split into several passages", f"{s['split_documents']:,}")
    if s.get("truncated_documents"):
        table.add_row("documents truncated (max passages)", f"{s['truncated_documents']:,} ({s['dropped_passages']:,} passages dropped)")
    if "update" in s:
        u = s["update"]
        table.add_row("added / changed / removed / unchanged", f"{u['added']:,} / {u['changed']:,} / {u['removed']:,} / {u['unchanged']:,}")
        table.add_row("passages encoded", f"{u['encoded']:,} of {s['count']:,}")
    t = s.get("timings", {})
    if "total" in t:
        table.add_row("time", f"{t['total']:.1f} s" + (f" ({t['docs_per_s']:.0f} docs/s)" if "docs_per_s" in t else ""))
    console.print(table)


@app.command("search", cls=opt.renamed(out="--results", short_o="--results"))
@command
def search_command(
    index_dir: Path = typer.Argument(..., help="Index folder made by 'embedtune index build'."),
    query: str = typer.Argument(None, help="The question (or use --queries for many)."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, help="Passages per query."),
    model: str = typer.Option(None, "--model", "-m", help=opt.MODEL_HELP + " Default: the index's model (must match it)."),
    queries: Path = typer.Option(None, "--queries", "-q", help="Many queries: a text file (one per line) or queries.jsonl (_id, text)."),
    results: Path = typer.Option(None, "--results", help="With --queries: the JSONL file the results are written to."),
    hybrid: bool = typer.Option(False, "--hybrid", help="Fuse BM25 and the dense ranking (needs an index built with --hybrid)."),
    fusion_method: str = typer.Option(None, "--fusion-method", help="zscore | minmax | rrf (default: the index's fusion.json)."),
    bm25_weight: float = typer.Option(None, "--bm25-weight", help="BM25 weight in [0, 1] for this call (default: the index's)."),
    as_json: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Ranked passages for a question (or a file of questions) from an index."""
    from ..errors import ConfigError
    from ..index import open_index, query_index

    if (query is None) == (queries is None):
        raise ConfigError("pass either a question or --queries FILE", field="query")
    if queries is not None and results is None:
        raise ConfigError("--queries needs --results FILE for the JSONL results", field="results")
    t0 = time.perf_counter()
    index = open_index(index_dir, model)
    t_open = time.perf_counter() - t0
    fusion = None
    if fusion_method is not None or bm25_weight is not None:
        from ..config import build_config
        from ..fusion import FusionConfig

        hybrid = True
        base = (index.fusion or FusionConfig()).model_dump()
        fusion = build_config(FusionConfig, {**base, **without_none({"method": fusion_method, "bm25_weight": bm25_weight})},
                              source="command-line options")
    if query is not None:
        t1 = time.perf_counter()
        hits = query_index(index, [query], k, hybrid=hybrid, fusion=fusion)[0]
        latency = time.perf_counter() - t1
        table = Table(title=f"{query!r} in {index_dir} ({index.count:,} passages)", show_header=True, expand=False)
        for name, justify in (("rank", "right"), ("score", "right"), ("passage", "left"), ("doc", "left"), ("text", "left")):
            table.add_column(name, justify=justify, overflow="fold" if name != "text" else "ellipsis")
        for h in hits:
            snippet = (f"{h.title}: " if h.title else "") + h.text
            table.add_row(str(h.rank), f"{h.score:.4f}", h.passage_id, h.doc_id, snippet[:160] + ("..." if len(snippet) > 160 else ""))
        console.print(table)
        t = index.last_timings
        console.print(f"{latency * 1000:.1f} ms (encode {t['encode_s'] * 1000:.1f} + search {t['search_s'] * 1000:.1f}"
                      + (f", of which BM25 {t['bm25_s'] * 1000:.1f}" if hybrid else "") + f"); index opened in {t_open:.2f} s")
        if as_json:
            emit_json({"query": query, "k": k, "results": [h.as_dict() for h in hits],
                       "timings": {"open_s": t_open, "query_ms": latency * 1000, "encode_ms": t["encode_s"] * 1000, "search_ms": t["search_s"] * 1000}})
        return
    summary = _search_many(index, queries, results, k, show_progress=not (as_json or quiet), hybrid=hybrid, fusion=fusion)
    summary["timings"]["open_s"] = t_open
    t = summary["timings"]
    console.print(
        f"{summary['queries']:,} queries -> {results}: encode {t['encode_s']:.1f} s, search {t['search_s']:.2f} s, "
        f"{summary['queries_per_s']:.0f} queries/s overall"
    )
    if as_json:
        emit_json(summary)


def _read_queries(path: Path) -> list[tuple[str, str]]:
    from ..corpus import _read_lines, load_queries
    from ..errors import InputError

    if path.suffix.lower() == ".jsonl":
        return list(load_queries(path).items())
    rows = [(str(lineno), line.strip()) for lineno, line in _read_lines(path) if line.strip()]
    if not rows:
        raise InputError("no queries (one per line)", file=path)
    return rows


def _search_many(index, path: Path, out: Path, k: int, *, show_progress: bool, hybrid: bool = False, fusion=None) -> dict:
    """All queries encoded (length-sorted batches) and searched as one matrix, streamed to JSONL."""
    from ..index import query_index
    from ..io import atomic_write_jsonl

    rows = _read_queries(path)
    t0 = time.perf_counter()
    results = query_index(index, [q for _, q in rows], k, with_text=False, show_progress=show_progress, hybrid=hybrid, fusion=fusion)
    t1 = time.perf_counter()
    atomic_write_jsonl(out, (
        {"query_id": qid, "query": text, "hits": [{"rank": h.rank, "score": h.score, "passage_id": h.passage_id, "doc_id": h.doc_id} for h in hits]}
        for (qid, text), hits in zip(rows, results)
    ))
    t2 = time.perf_counter()
    return {
        "queries": len(rows), "k": k, "results": str(out), "queries_per_s": len(rows) / max(t2 - t0, 1e-9),
        "timings": {"encode_and_search_s": t1 - t0, "write_s": t2 - t1, **index.last_timings},
    }
