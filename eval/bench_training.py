"""Benchmark: step time of embedtune's training loop vs a plain sentence-transformers trainer.

Both train the same model on the same rows with the same settings (MultipleNegativesRankingLoss,
no-duplicates sampler, AdamW, warmup, precision, seed), in the same process, in ABBA order
(ours, plain, plain, ours, ...) after an untimed warm-up run, so that load from other processes
and first-run costs hit both alike. A callback
times every optimizer step; the first ``--skip`` steps of a run (allocator and thread-pool
warm-up) are left out and the median is reported. The target is ``ratio <= 1.05``.

Rows: SciFact train qrels (query, positive) with one seeded random corpus document as the hard
negative -- what is timed is the loop, not the quality, so no mining is needed.

``--compare-precision`` instead times our loop in fp32 and bf16 (the measurement behind the
CPU default ``AUTO_TRAINING_CPU`` in ``embedtune/precision.py``).

    nice python eval/bench_training.py --json
    nice python eval/bench_training.py --compare-precision --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_rows(source: str, negatives: int, seed: int) -> dict[str, list]:
    """Mined-format columns from a BEIR split's qrels, with random corpus documents as negatives."""
    from embedtune.corpus import load_beir, parse_benchmark_source

    folder, split = parse_benchmark_source(source)
    ds = load_beir(folder, split)
    rng = random.Random(seed)
    doc_ids = list(ds.corpus)
    cols: dict[str, list] = {k: [] for k in ("query_id", "query", "positive_id", "positive", "negative_ids", "negatives")}
    for qid, judged in ds.qrels.items():
        for did, grade in judged.items():
            if grade <= 0:
                continue
            negs = [d for d in rng.sample(doc_ids, negatives + len(judged)) if d not in judged][:negatives]
            cols["query_id"].append(qid)
            cols["query"].append(ds.queries[qid])
            cols["positive_id"].append(did)
            cols["positive"].append(ds.corpus[did].full_text)
            cols["negative_ids"].append(negs)
            cols["negatives"].append([ds.corpus[d].full_text for d in negs])
    return cols


class StepTimer:
    """A transformers callback recording the wall time of each optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self._t = 0.0

            def on_step_begin(self, args, state, control, **kwargs):
                self._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.times.append(time.perf_counter() - self._t)

        return _Timer()


def run_ours(mined: Path, out: Path, cfg) -> list[float]:
    from embedtune.training import train_model

    timer = StepTimer()
    train_model(cfg, mined, out, overwrite=True, callbacks=[timer], progress=False)
    return timer.times


def run_plain(cols: dict[str, list], out: Path, cfg) -> list[float]:
    """The same training written directly against sentence-transformers."""
    import transformers
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    from embedtune.models import resolve_model_path
    from embedtune.training.config import resolve_training_precision

    transformers.set_seed(cfg.seed)
    model = SentenceTransformer(str(resolve_model_path(cfg.model.name)), device="cpu")
    if cfg.model.max_seq_length:
        model.max_seq_length = cfg.model.max_seq_length
    n = cfg.negatives_per_query
    data = {"anchor": cols["query"], "positive": cols["positive"]}
    for k in range(n):
        data[f"negative_{k + 1}"] = [negs[k] for negs in cols["negatives"]]
    precision = resolve_training_precision(cfg.precision)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        bf16=precision == "bf16", batch_sampler=BatchSamplers.NO_DUPLICATES, seed=cfg.seed, data_seed=cfg.seed,
        use_cpu=True, save_strategy="no", report_to="none", logging_steps=cfg.logging_steps, disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(data),
        loss=losses.MultipleNegativesRankingLoss(model, scale=cfg.loss.scale), callbacks=[timer],
    )
    trainer.train()
    return timer.times


def write_mined(cols: dict[str, list], folder: Path) -> Path:
    from datasets import Dataset

    Dataset.from_dict(cols).save_to_disk(str(folder / "dataset"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default="scifact:train", help="BEIR split whose qrels give the rows.")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2, help="Warm-up steps of each run left out of the timing.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each loop (alternating).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compare-precision", action="store_true", help="Time our loop in fp32 vs bf16 instead.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from embedtune.precision import cpu_has_bf16
    from embedtune.training import TrainConfig

    cols = make_rows(args.data, args.negatives, seed=0)
    cfg = TrainConfig.model_validate({
        "model": {"name": args.model, "max_seq_length": args.max_seq_length}, "batch_size": args.batch_size,
        "negatives_per_query": args.negatives, "max_steps": args.steps, "precision": args.precision,
        "learning_rate": 2e-5, "dev": {"enabled": False}, "logging_steps": args.steps,
    })
    load = os.getloadavg()[0]
    results: dict[str, list[float]] = {}
    per_run: dict[str, list[float]] = {}  # each run's median: the run-to-run spread of the machine
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        mined = write_mined(cols, tmp / "mined")
        if args.compare_precision:
            variants = {"fp32": cfg.model_copy(update={"precision": "fp32"}), "bf16": cfg.model_copy(update={"precision": "bf16"})}
            if not cpu_has_bf16() and not torch.cuda.is_available():
                sys.exit("this CPU has no bf16 support: nothing to compare")
        # The first training of a process pays one-off costs (thread pools, allocator, lazy imports)
        # beyond its first steps: an untimed warm-up run keeps them out of whichever loop runs first.
        run_ours(mined, tmp / "warm-up", cfg.model_copy(update={"max_steps": args.skip + 1}))
        for r in range(args.repeats):
            if args.compare_precision:
                for name, variant in variants.items():
                    times = run_ours(mined, tmp / f"{name}-{r}", variant)
                    results.setdefault(name, []).extend(times[args.skip:])
                    per_run.setdefault(name, []).append(round(statistics.median(times[args.skip:]), 4))
                    print(f"run {r + 1}: {name:5s} median step {statistics.median(times[args.skip:]):.3f} s", file=sys.stderr, flush=True)
            else:
                runners = [("embedtune", lambda: run_ours(mined, tmp / f"ours-{r}", cfg)),
                           ("sentence_transformers", lambda: run_plain(cols, tmp / f"plain-{r}", cfg))]
                for name, runner in runners[:: 1 if r % 2 == 0 else -1]:  # ABBA order: no loop always goes first
                    times = runner()
                    results.setdefault(name, []).extend(times[args.skip:])
                    per_run.setdefault(name, []).append(round(statistics.median(times[args.skip:]), 4))
                    print(f"run {r + 1}: {name:22s} median step {statistics.median(times[args.skip:]):.3f} s", file=sys.stderr, flush=True)

    medians = {name: statistics.median(t) for name, t in results.items()}
    out = {
        "benchmark": "training_step_time",
        "model": args.model, "data": args.data, "rows": len(cols["query"]), "batch_size": args.batch_size,
        "negatives": args.negatives, "max_seq_length": args.max_seq_length, "steps_per_run": args.steps,
        "timed_steps": {k: len(v) for k, v in results.items()}, "repeats": args.repeats,
        "median_step_s": {k: round(v, 4) for k, v in medians.items()},
        "run_median_step_s": per_run,
        "load_avg_1min_start": round(load, 2), "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }
    if args.compare_precision:
        out["bf16_speedup"] = round(medians["fp32"] / medians["bf16"], 3)
    else:
        out["precision"] = args.precision
        out["ratio"] = round(medians["embedtune"] / medians["sentence_transformers"], 4)
        out["target_ratio"] = 1.05
        out["meets_target"] = out["ratio"] <= 1.05
    for name, value in out["median_step_s"].items():
        print(f"{name:22s} median step {value:.3f} s", file=sys.stderr)
    if "ratio" in out:
        print(f"ratio embedtune / sentence-transformers = {out['ratio']:.3f} (target <= 1.05)", file=sys.stderr)
    else:
        print(f"bf16 speed-up over fp32 = {out['bf16_speedup']:.2f}x", file=sys.stderr)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
