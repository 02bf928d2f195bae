"""Benchmark: CPU encoding speed and quality of fp32 vs bf16 vs int8 (all-MiniLM-L6-v2).

Speed: the same sample of corpus documents (every k-th document of each dataset, title + " " +
text) is encoded in fp32, in bf16 as ``embedtune.encoding`` does it (a bfloat16 copy of the model),
under ``torch.autocast(bfloat16)`` (fp32 weights, bf16 matrix products), in int8 (the
transformer as a dynamically quantised ONNX graph in onnxruntime, ``embedtune.onnx_model``) and
as the same fused ONNX graph before quantisation (``onnx-fp32``, what ``export --onnx`` writes),
interleaved round by round in one process so that all three see the same machine. Per method: docs/s (median wall
time over rounds) and docs per CPU-second of this process (less sensitive to other processes on
a shared machine than wall time). The load average is recorded with the figures.

Quality: nDCG@10 of the full test evaluation (exact cosine search, all queries) in fp32, bf16
and int8 on each dataset, the paired randomization test of each difference to fp32, and the
cosine between each document's fp32 and bf16 / int8 vectors. Full-corpus embeddings come from (and go to) the shared
embedding cache, so re-running only re-times the sample.

bf16 becomes ``AUTO_INFERENCE_CPU`` (embedtune/precision.py) only if it costs less than 0.002 nDCG@10 on every dataset.

Writes eval/results/encoding.md; with ``--json`` the last stdout line is one JSON object.

    python eval/bench_encoding.py --json
    python eval/bench_encoding.py --sample 256 --rounds 2 --skip-quality
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "eval" / "results" / "encoding.md"
MAX_NDCG_COST = 0.002
METHODS = ("fp32", "bf16", "bf16-autocast", "int8", "onnx-fp32")
REDUCED = ("bf16", "int8")  # the precisions whose quality is measured against fp32


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def sample_texts(folders: list[Path], per_dataset: int) -> list[str]:
    from embedtune.corpus import load_beir

    texts = []
    for folder in folders:
        docs = list(load_beir(folder, "test").corpus.values())
        step = max(1, len(docs) // per_dataset)
        texts += [d.full_text for d in docs[::step][:per_dataset]]
    return texts


def time_speed(model, texts: list[str], rounds: int, batch_size: int) -> dict:
    import torch

    from embedtune.encoding import encode_texts

    onnx_fp32 = None
    if "onnx-fp32" in METHODS:  # the fused fp32 graph alone: how much of int8's speed is the graph, how much int8
        import tempfile

        from embedtune.onnx_model import FP32_FILE, onnx_twin, write_onnx_model

        folder = Path(tempfile.mkdtemp()) / "fp32"
        write_onnx_model(model.st, folder, int8=False)
        onnx_fp32 = onnx_twin(model.st, folder, FP32_FILE)

    def run(method: str) -> np.ndarray:
        if method == "onnx-fp32":
            return encode_texts(onnx_fp32, texts, batch_size=batch_size, precision="fp32", show_progress=False)
        if method == "bf16-autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                v = model.st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
            v = np.asarray(v, dtype=np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)
        return encode_texts(model, texts, batch_size=batch_size, precision=method, show_progress=False)

    vectors = {m: run(m) for m in METHODS}  # warm-up (one-time costs: oneDNN kernels, allocations)
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    loads = [load_average()]
    for r in range(rounds):
        order = METHODS if r % 2 == 0 else METHODS[::-1]  # neither method always runs first
        for m in order:
            c0, t0 = cpu_seconds(), time.perf_counter()
            run(m)
            wall[m].append(time.perf_counter() - t0)
            cpu[m].append(cpu_seconds() - c0)
        loads.append(load_average())
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{m} {len(texts) / wall[m][-1]:.1f} docs/s" for m in METHODS)
              + f" (load {loads[-1][0] if loads[-1] else '?'})", file=sys.stderr)
    out = {"documents": len(texts), "rounds": rounds, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
           "load_average_1min": [l[0] for l in loads if l], "methods": {}}
    for m in METHODS:
        cos = np.sum(vectors["fp32"] * vectors[m], axis=1)
        out["methods"][m] = {
            "docs_per_s": round(len(texts) / statistics.median(wall[m]), 1),
            "docs_per_cpu_s": round(len(texts) / statistics.median(cpu[m]), 1),
            "wall_s": [round(x, 2) for x in wall[m]],
            "cosine_to_fp32_mean": float(cos.mean()),
            "cosine_to_fp32_min": float(cos.min()),
        }
    base = out["methods"]["fp32"]
    for m in METHODS[1:]:
        out["methods"][m]["speedup_wall"] = round(out["methods"][m]["docs_per_s"] / base["docs_per_s"], 2)
        out["methods"][m]["speedup_cpu"] = round(out["methods"][m]["docs_per_cpu_s"] / base["docs_per_cpu_s"], 2)
    return out


def quality(folder: Path, model_name: str) -> dict:
    from embedtune.config import ModelConfig
    from embedtune.corpus import load_beir
    from embedtune.encoding import encode_corpus
    from embedtune.evaluation import HEADLINE, compute_metrics, dense_run, mean_metrics, paired_randomization_test
    from embedtune.models import load_model

    ds = load_beir(folder, "test")
    per_query, info = {}, {}
    for precision in ("fp32", *REDUCED):
        cfg = ModelConfig(name=model_name, precision=precision)
        t0 = time.perf_counter()
        run, info[precision] = dense_run(cfg, ds, top_k=1000, cache_dir=None, show_progress=False)
        per_query[precision] = compute_metrics(ds.qrels, run)
        print(f"{folder.name} {precision}: {HEADLINE} {mean_metrics(per_query[precision])[HEADLINE]:.4f} "
              f"({time.perf_counter() - t0:.0f} s, corpus from cache: {info[precision]['corpus_from_cache']})", file=sys.stderr)
    qids = sorted(per_query["fp32"][HEADLINE])
    # document vectors of every precision, from the cache the evaluation just filled
    model = load_model(model_name)
    ids = list(ds.corpus)
    texts = [ds.corpus[d].full_text for d in ids]
    vecs = {p: np.asarray(encode_corpus(model, ModelConfig(name=model_name, precision=p), ids, texts, show_progress=False))
            for p in ("fp32", *REDUCED)}
    means = {p: mean_metrics(per_query[p]) for p in per_query}
    out = {"queries": len(qids), "documents": len(ids), "ndcg@10_fp32": round(means["fp32"][HEADLINE], 5),
           "fp32_corpus_docs_per_s": info["fp32"]["docs_per_second"]}
    for p in REDUCED:
        test = paired_randomization_test([per_query["fp32"][HEADLINE][q] for q in qids], [per_query[p][HEADLINE][q] for q in qids])
        cos = np.sum(vecs["fp32"] * vecs[p], axis=1)
        out[p] = {
            "ndcg@10": round(means[p][HEADLINE], 5), "ndcg@10_delta": round(means[p][HEADLINE] - means["fp32"][HEADLINE], 5),
            "p_value": round(test["p_value"], 4), "recall@100_delta": round(means[p]["recall@100"] - means["fp32"]["recall@100"], 5),
            "doc_cosine_mean": round(float(cos.mean()), 6), "doc_cosine_min": round(float(cos.min()), 6),
            "corpus_docs_per_s": info[p]["docs_per_second"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help="BEIR folders [default: scifact and nfcorpus in ../shared/datasets]")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sample", type=int, default=256, help="documents per dataset in the speed sample")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-quality", action="store_true", help="speed only (no full-corpus bf16 evaluation)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()

    from embedtune.cli.app import setup_logging
    from embedtune.precision import AUTO_INFERENCE_CPU, cpu_has_bf16
    from embedtune.models import load_model

    setup_logging()
    folders = [Path(p).resolve() for p in args.datasets] or [DATASETS / "scifact", DATASETS / "nfcorpus"]
    if not cpu_has_bf16():
        print("this CPU has no native bf16 (avx512_bf16 / amx_bf16): bf16 would be emulated; nothing to measure", file=sys.stderr)
    summary: dict = {"model": args.model, "cpu_bf16": cpu_has_bf16(), "auto_precision_cpu": AUTO_INFERENCE_CPU}
    model = load_model(args.model)
    speed = time_speed(model, sample_texts(folders, args.sample), args.rounds, args.batch_size)
    summary["speed"] = speed
    summary["docs_per_s"] = {m: v["docs_per_s"] for m, v in speed["methods"].items()}
    for p in REDUCED:
        summary[f"{p}_speedup"] = speed["methods"][p]["speedup_wall"]
        summary[f"{p}_speedup_cpu"] = speed["methods"][p]["speedup_cpu"]
    if not args.skip_quality:
        summary["quality"] = {f.name: quality(f, args.model) for f in folders}
        for p in REDUCED:
            summary[f"ndcg@10_delta_{p}"] = {n: q[p]["ndcg@10_delta"] for n, q in summary["quality"].items()}
            summary[f"{p}_qualifies_as_auto"] = all(q[p]["ndcg@10_delta"] > -MAX_NDCG_COST for q in summary["quality"].values())
    summary["load_average"] = load_average()
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(render(summary))
        print(f"wrote {RESULTS}", file=sys.stderr)
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


def render(s: dict) -> str:
    sp = s["speed"]
    loads = sp["load_average_1min"]
    lines = [
        "# Encoding precision on CPU: fp32 vs bf16 vs int8 (all-MiniLM-L6-v2)",
        "",
        "Written by `python eval/bench_encoding.py --json`. CPU native bf16: "
        f"{'yes' if s['cpu_bf16'] else 'no'}; torch threads: {sp['torch_threads']}; "
        f"load average (1 min) during the timing: {min(loads):.1f} to {max(loads):.1f}" if loads else "",
        "",
        f"## Speed ({sp['documents']} corpus documents, batch {sp['batch_size']}, median of {sp['rounds']} interleaved rounds)",
        "",
        "| method | docs/s | vs fp32 | docs per CPU-s | vs fp32 | cosine to fp32 (mean / min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, v in sp["methods"].items():
        lines.append(f"| {m} | {v['docs_per_s']} | {v.get('speedup_wall', 1.0):.2f}x | {v['docs_per_cpu_s']} | "
                     f"{v.get('speedup_cpu', 1.0):.2f}x | {v['cosine_to_fp32_mean']:.5f} / {v['cosine_to_fp32_min']:.5f} |")
    lines += ["", "`bf16` is what `--precision bf16` runs (a bfloat16 copy of the model); `bf16-autocast` keeps "
              "fp32 weights and runs the matrix products in bf16 under `torch.autocast`; `int8` is `--precision int8` "
              "(the transformer as a dynamically quantised ONNX graph run by onnxruntime); `onnx-fp32` the same fused graph "
              "unquantised (`export --onnx`). The machine is shared: "
              "wall-clock docs/s depend on the load, the ratios measured in the same run much less.", ""]
    if "quality" in s:
        lines += ["## Quality (full test split, exact cosine search)", "",
                  "| dataset | queries | precision | nDCG@10 fp32 | nDCG@10 | delta | p | recall@100 delta | doc cosine to fp32 (mean / min) |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for name, q in s["quality"].items():
            for p in REDUCED:
                r = q[p]
                lines.append(f"| {name} | {q['queries']} | {p} | {q['ndcg@10_fp32']:.4f} | {r['ndcg@10']:.4f} | {r['ndcg@10_delta']:+.4f} | "
                             f"{r['p_value']:.3f} | {r['recall@100_delta']:+.4f} | {r['doc_cosine_mean']:.5f} / {r['doc_cosine_min']:.5f} |")
        lines += ["", f"Rule: a precision may become the default (`precision=auto` on CPU) only if it costs less than {MAX_NDCG_COST} "
                  f"nDCG@10 on every dataset. bf16: {'qualifies' if s['bf16_qualifies_as_auto'] else 'does NOT qualify'}; int8: "
                  f"{'qualifies' if s['int8_qualifies_as_auto'] else 'does NOT qualify'}. `AUTO_INFERENCE_CPU` in this run: "
                  f"`{s['auto_precision_cpu']}`. int8 is not a default even where it qualifies here: on the demo's docstring corpus "
                  "it costs 0.014 nDCG@10 (eval/results/serving.md).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
