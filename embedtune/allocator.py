"""glibc malloc settings for CPU training, applied by re-executing the CLI once at start.

Why: glibc hands each freed block above its mmap threshold (128 KiB, adapting up to 32 MiB) back
to the kernel, and nearly every activation tensor of a training step is such a block. Each step
then faults in gigabytes of fresh zeroed pages: a MiniLM step at batch 32 x 3 texts x 256 tokens
took ~0.9 million page faults, and 42% of the CPU time went to the kernel. Serving every block
from the heap (``mmap_max=0``) and never trimming it (``trim_threshold``) reuses the memory
instead: embedtune's training step ran 1.84x (fp32) and 1.79x (bf16) faster, with 8% more peak
memory (``eval/bench_allocator.py``, ``eval/results/allocator.json``).
PyTorch's CPU guides reach the same with jemalloc/tcmalloc, which the package registries here do
not carry; glibc tunables need nothing installed.

Tunables are read when the process starts, so :func:`reexec_with_tuned_allocator` restarts the
command (same PID, same arguments) with them set. It does nothing off glibc Linux, when the user
set ``GLIBC_TUNABLES`` themselves, or with ``EMBEDTUNE_MALLOC=system``.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
OPT_OUT = "EMBEDTUNE_MALLOC"  # =system keeps glibc's defaults


def tuned_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart with, or None when the process should run as it is."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    if "GLIBC_TUNABLES" in environ or environ.get(OPT_OUT) == "system":
        return None
    return {**environ, "GLIBC_TUNABLES": TUNABLES}


def reexec_with_tuned_allocator() -> None:
    """Replace this process by the same command with :data:`TUNABLES` set (see the module doc).
    Call it first thing in an entry point: everything done before it is done twice."""
    env = tuned_environment(os.environ)
    if env is None or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
