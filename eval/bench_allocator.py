"""Benchmark: training step time with glibc's default malloc vs the CLI's tunables.

``embedtune`` restarts itself with ``GLIBC_TUNABLES`` set (``embedtune/allocator.py``): freed
blocks stay in the heap instead of going back to the kernel and being faulted in again at the
next step. This runs ``eval/bench_training.py --compare-precision`` (our training loop, fp32 and
bf16, median optimizer-step time) in child processes, alternately without and with the tunables
(ABBA order), and reports per precision the step time, the speed-up, and each child's page faults
and peak memory. The tunables are what the CLI sets; tunables must be in place at process start,
hence the children.

    python eval/bench_allocator.py --json    (from the repository root, like the other benchmarks)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from embedtune.allocator import OPT_OUT, TUNABLES

HERE = Path(__file__).resolve().parent


def run_child(tunables: str | None, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    cmd = [sys.executable, str(HERE / "bench_training.py"), "--compare-precision", "--json", "--repeats", "1",
           "--steps", str(args.steps), "--skip", str(args.skip), "--max-seq-length", str(args.max_seq_length),
           "--batch-size", str(args.batch_size), "--data", args.data, "--model", args.model]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        # wait4, not Popen.wait: the child's own resource usage (faults, peak memory) comes with it
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{err.read()[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"median_step_s": result["median_step_s"], "page_faults": usage.ru_minflt, "system_cpu_s": round(usage.ru_stime, 1),
            "user_cpu_s": round(usage.ru_utime, 1), "peak_rss_mb": usage.ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default="scifact:train")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="Pairs of children (default, tuned), ABBA order.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = {"glibc_default": None, "tuned": TUNABLES}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for r in range(args.repeats):
        for name in list(settings)[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(run_child(settings[name], args))
            print(f"run {r + 1}: {name:13s} {runs[name][-1]}", file=sys.stderr, flush=True)

    step = {name: {p: statistics.median(run["median_step_s"][p] for run in rs) for p in ("fp32", "bf16")} for name, rs in runs.items()}
    out = {
        "benchmark": "allocator_step_time", "tunables": TUNABLES, "model": args.model, "data": args.data,
        "batch_size": args.batch_size, "max_seq_length": args.max_seq_length, "steps_per_run": args.steps, "repeats": args.repeats,
        "median_step_s": step,
        "speedup": {p: round(step["glibc_default"][p] / step["tuned"][p], 3) for p in ("fp32", "bf16")},
        "children": runs,
    }
    if not args.json:
        for p in ("fp32", "bf16"):
            print(f"{p}: step {step['glibc_default'][p]:.2f} s (glibc default) -> {step['tuned'][p]:.2f} s (tuned), {out['speedup'][p]:.2f}x")
        for name, rs in runs.items():
            print(f"{name}: page faults {[r['page_faults'] for r in rs]}, peak RSS MB {[r['peak_rss_mb'] for r in rs]}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
