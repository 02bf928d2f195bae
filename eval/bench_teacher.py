"""Benchmark: how well mining's hybrid teacher (BM25 fused with the model's cosine) ranks real
queries, next to the model alone and BM25 alone.

The unsupervised recipe (configs/unsupervised.yaml) distils this teacher into the model on
pseudo-queries; it can only help where the teacher ranks better than the model. This measures that
on a labelled BEIR split: each query's candidates are the union of the model's and BM25's top 100,
re-scored by ``embedtune.mining.teachers.HybridTeacher`` (exactly the code mining uses), and nDCG@10 is
computed with pytrec_eval as in ``embedtune eval``.

    python eval/bench_teacher.py --data ../shared/datasets/scifact --split test --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/datasets/scifact", help="BEIR folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--bm25-weight", type=float, default=0.5)
    ap.add_argument("--stats-depth", type=int, default=100)
    ap.add_argument("--depth", type=int, default=100, help="candidates from each retriever")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()

    from embedtune.config import ModelConfig
    from embedtune.corpus import load_beir
    from embedtune.encoding import encode_corpus, encode_queries
    from embedtune.evaluation import bm25_run, compute_metrics, dense_run, mean_metrics
    from embedtune.mining import HybridTeacherConfig
    from embedtune.mining.candidates import CandidatePool
    from embedtune.mining.teachers import HybridTeacher
    from embedtune.models import load_model

    t0 = time.perf_counter()
    ds = load_beir(args.data, args.split)
    ds.queries = {q: text for q, text in ds.queries.items() if q in ds.qrels}
    model_cfg = ModelConfig(name=args.model, max_seq_length=args.max_seq_length)
    dense, _ = dense_run(model_cfg, ds, top_k=args.depth, cache_dir=None, show_progress=False)
    lexical, _ = bm25_run(ds, top_k=args.depth)

    model = load_model(model_cfg)
    doc_ids = list(ds.corpus)
    texts = [ds.corpus[d].full_text for d in doc_ids]
    pool = CandidatePool(ids=doc_ids, texts=texts)
    pool.blocks.append(encode_corpus(model, model_cfg, doc_ids, texts, show_progress=False))
    qids = list(ds.queries)
    qtexts = [ds.queries[q] for q in qids]
    qemb = encode_queries(model, model_cfg, qids, qtexts)  # the embedding cache dense_run filled
    teacher = HybridTeacher(
        HybridTeacherConfig(bm25_weight=args.bm25_weight, stats_depth=args.stats_depth), qtexts, qemb, pool, {}
    )
    fused = {}
    for qid, text in zip(qids, qtexts):
        cand = sorted(set(dense[qid]) | set(lexical[qid]))
        scores = teacher.score([(text, ds.corpus[d].full_text) for d in cand])
        fused[qid] = dict(zip(cand, scores.tolist()))

    result = {"benchmark": "teacher", "data": args.data, "split": args.split, "queries": len(qids), "model": args.model,
              "bm25_weight": args.bm25_weight, "stats_depth": args.stats_depth}
    for name, run in (("dense", dense), ("bm25", lexical), ("hybrid_teacher", fused)):
        result[name] = {"ndcg@10": round(mean_metrics(compute_metrics(ds.qrels, run))["ndcg@10"], 4)}
    result["ndcg@10"] = result["hybrid_teacher"]["ndcg@10"]
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"nDCG@10 on {args.data}:{args.split}: model {result['dense']['ndcg@10']}, BM25 {result['bm25']['ndcg@10']}, "
          f"hybrid teacher {result['hybrid_teacher']['ndcg@10']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
