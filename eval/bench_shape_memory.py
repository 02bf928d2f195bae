"""Benchmark: does a training process's resident memory grow with the number of sequence lengths it sees?

Each mode runs in a child process (fresh kernel caches, glibc tunables as the CLI sets them): MiniLM
forward + backward + AdamW in bf16 autocast on random token ids, 48 texts a step, and after every
``--every`` steps ``gc.collect()`` + ``malloc_trim(0)`` and a reading of VmRSS, so what remains is
live. Modes: ``free`` (a length drawn from 40..256 each step, as unpadded batches get), ``padded``
(the same lengths rounded up to the trainer's PAD_TO_MULTIPLE_OF), ``fixed`` (always 256).
Prints the readings and the growth per step after the first reading (least squares).
Finding (eval/results/memory.md): free lengths grow ~5 MB a step, a fixed length nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MODES = ("free", "padded", "fixed")


def _child(mode: str, steps: int, every: int) -> dict:
    import random

    import torch
    from sentence_transformers import SentenceTransformer

    from embedtune.models import resolve_model_path
    from embedtune.peak_memory import release_freed_memory
    from embedtune.training.trainer import PAD_TO_MULTIPLE_OF

    torch.manual_seed(0)
    rng = random.Random(0)
    model = SentenceTransformer(str(resolve_model_path("minilm")), device="cpu").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    readings = []
    for step in range(1, steps + 1):
        length = rng.randint(40, 256)
        if mode == "padded":
            length = -(-length // PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
        elif mode == "fixed":
            length = 256
        ids = torch.randint(1000, model.tokenizer.vocab_size, (48, length))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)})
            loss = out["sentence_embedding"].float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % every == 0:
            release_freed_memory()  # gc + malloc_trim, as between pipeline stages: what remains is live
            readings.append([step, round(rss_mb(), 1)])
    return {"readings": readings}


def _slope(readings: list) -> float:
    """MB per step after the first reading: the least-squares line's slope."""
    import numpy as np

    steps, rss = np.asarray(readings[1:], dtype=float).T
    return float(np.polyfit(steps, rss, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.steps, args.every)))
        return
    from embedtune.allocator import tuned_environment

    env = tuned_environment(os.environ) or dict(os.environ)
    result = {"benchmark": "shape_memory", "steps": args.steps, "texts_per_step": 48, "modes": {}}
    for mode in args.modes.split(","):
        if mode not in MODES:
            sys.exit(f"--modes: unknown mode '{mode}' (one of {', '.join(MODES)})")
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--every", str(args.every)],
                             env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        readings = json.loads(out)["readings"]
        result["modes"][mode] = {"rss_mb": readings, "mb_per_step": round(_slope(readings), 2)}
        print(f"{mode}: RSS {readings[0][1]:.0f} -> {readings[-1][1]:.0f} MB over steps {readings[0][0]}..{readings[-1][0]}, "
              f"{result['modes'][mode]['mb_per_step']:+.2f} MB a step", file=sys.stderr)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
