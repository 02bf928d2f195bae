"""Where training memory goes: peak resident memory and time of one training forward + backward of
the encoder, by attention implementation and attention-probability dropout.

Finding (issue #16: the SciFact recipe peaked at 10.7 GB): with dropout on the attention
probabilities (MiniLM's config: 0.1), torch's fused CPU attention cannot be used and every layer
keeps its (sequences x heads x tokens x tokens) attention matrices for the backward pass; without
that dropout (the hidden-state dropout stays) the fused kernel runs.

    python eval/bench_memory.py --json
    python eval/bench_memory.py --sequences 96 --tokens 256 --json   # the SciFact recipe's step

``--loss-rows 32`` also measures one whole training step of the loss (a batch of 32 rows: a short
query, a 256-token positive and negative each) with ``mnrl`` and with ``cached_mnrl`` (GradCache:
the batch is embedded ``mini_batch_size`` rows at a time, so activations stop growing with it).

Each configuration runs in its own process (a peak is a process' high-water mark).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

# (attention implementation, attention-probability dropout, gradient checkpointing)
CONFIGS = [("sdpa", True, False), ("eager", True, False), ("sdpa", False, False), ("sdpa", False, True)]

CHILD = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
from embedtune.models import resolve_model_path
from embedtune.peak_memory import peak_rss_mb, release_freed_memory, reset_peak_rss
from embedtune.training.trainer import set_attention_dropout
model_name, impl, dropout, n, tokens, threads, checkpointing = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
torch.set_num_threads(threads)
torch.manual_seed(0)
m = SentenceTransformer(str(resolve_model_path(model_name)), device="cpu", model_kwargs={"attn_implementation": impl})
m.max_seq_length = tokens
if not dropout:
    set_attention_dropout(m, 0.0)
if checkpointing:  # what train.gradient_checkpointing asks of the trainer (it calls this on the model)
    m.gradient_checkpointing_enable()
m.train()
feats = m.preprocess(["word " * (tokens + 50) for _ in range(n)])
release_freed_memory()
reset_peak_rss()
before = peak_rss_mb()
t0 = time.perf_counter()
m(feats)["sentence_embedding"].sum().backward()
seconds = time.perf_counter() - t0
print(json.dumps({"attention": impl, "attention_dropout": dropout, "gradient_checkpointing": checkpointing, "peak_extra_mb": round(peak_rss_mb() - before), "resident_before_mb": round(before), "seconds": round(seconds, 2)}))
"""

# One training step of a loss as the trainer runs it: rows of (query, positive, negative), attention dropout off.
LOSS_CHILD = r"""
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
from embedtune.losses import LossConfig, build_loss
from embedtune.models import resolve_model_path
from embedtune.peak_memory import peak_rss_mb, release_freed_memory, reset_peak_rss
from embedtune.training.trainer import set_attention_dropout
model_name, loss_name, rows, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = SentenceTransformer(str(resolve_model_path(model_name)), device="cpu")
m.max_seq_length = tokens
set_attention_dropout(m, 0.0)
m.train()
loss = build_loss(m, LossConfig(name=loss_name))
columns = [m.preprocess([f"query {i} " * 6 for i in range(rows)])] + [
    m.preprocess([f"document {c} {i} " * tokens for i in range(rows)]) for c in range(2)]
release_freed_memory()
reset_peak_rss()
before = peak_rss_mb()
t0 = time.perf_counter()
loss(columns, None).backward()
seconds = time.perf_counter() - t0
print(json.dumps({"loss": loss_name, "rows": rows, "peak_extra_mb": round(peak_rss_mb() - before), "resident_before_mb": round(before), "seconds": round(seconds, 2)}))
"""


def _child(script: str, *argv: str) -> dict:
    env = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", **__import__("os").environ}
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--sequences", type=int, default=24, help="Texts in the step (a training batch of 32 rows x (query, positive, negative) is 96).")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loss-rows", type=int, default=0, help="Also one loss step of this many rows with mnrl and cached_mnrl (0: skip).")
    ap.add_argument("--json", action="store_true", help="Print one JSON object as the last stdout line.")
    args = ap.parse_args()
    rows = []
    for impl, dropout, checkpointing in CONFIGS:
        rows.append(_child(CHILD, args.model, impl, "1" if dropout else "0", str(args.sequences), str(args.tokens),
                           str(args.threads), "1" if checkpointing else "0"))
        r = rows[-1]
        print(f"{impl:6s} attention dropout {'on ' if dropout else 'off'}{', gradient checkpointing' if checkpointing else ''}: "
              f"+{r['peak_extra_mb']} MB peak, {r['seconds']:.1f} s", file=sys.stderr)
    ref = rows[0]
    summary = {"model": args.model, "sequences": args.sequences, "tokens": args.tokens, "threads": args.threads, "runs": rows,
               "memory_ratio_no_attention_dropout": round(rows[2]["peak_extra_mb"] / ref["peak_extra_mb"], 3),
               "speedup_no_attention_dropout": round(ref["seconds"] / rows[2]["seconds"], 2),
               "memory_ratio_no_attention_dropout_checkpointing": round(rows[3]["peak_extra_mb"] / ref["peak_extra_mb"], 3),
               "speedup_no_attention_dropout_checkpointing": round(ref["seconds"] / rows[3]["seconds"], 2)}
    if args.loss_rows:
        steps = [_child(LOSS_CHILD, args.model, name, str(args.loss_rows), str(args.tokens), str(args.threads)) for name in ("mnrl", "cached_mnrl")]
        for r in steps:
            print(f"loss step {r['loss']}, {r['rows']} rows: +{r['peak_extra_mb']} MB peak, {r['seconds']:.1f} s", file=sys.stderr)
        summary["loss_steps"] = steps
        summary["memory_ratio_cached_mnrl"] = round(steps[1]["peak_extra_mb"] / steps[0]["peak_extra_mb"], 3)
        summary["speedup_cached_mnrl"] = round(steps[0]["seconds"] / steps[1]["seconds"], 2)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
