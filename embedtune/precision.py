"""The one precision resolver: what ``precision: auto`` (or a precision this machine lacks) means
for encoding (inference) and for training (autocast), on this device."""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("embedtune")

# Inference, precision="auto" on CPU. bf16 had to cost less than 0.002 nDCG@10 to become the
# default; it does: all-MiniLM-L6-v2 on SciFact test 0.6445 (bf16) vs 0.6451 (fp32), see
# eval/bench_encoding.py and eval/results/encoding.md. CPUs without native bf16 fall back to fp32.
# int8 (onnxruntime) is not a default anywhere: +0.001 nDCG@10 on SciFact and NFCorpus, but -0.014
# on the demo's docstring corpus (eval/results/serving.md) -- it is opt-in, measured per corpus.
AUTO_INFERENCE_CPU = "bf16"
AUTO_INFERENCE_CUDA = "fp16"
# Training, precision="auto" on CPU (where the CPU has native bf16; otherwise fp32). bf16 autocast
# is 2.2x faster per step on this Zen 5 CPU (eval/results/training_precision.json) and trains models
# as good as fp32: the full SciFact recipe (configs/scifact.yaml) gave tuned nDCG@10 0.7092 in bf16
# vs 0.7083 in fp32 (train 20 vs 34 min), the demo recipe 0.6948 vs 0.6945.
AUTO_TRAINING_CPU = "bf16"


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX-512-BF16 or AMX-BF16).

    ``torch.backends.cpu.get_cpu_capability()`` only says "AVX512" and oneDNN's own check also
    accepts plain AVX-512, where bf16 is emulated and slower than fp32; the kernel's CPU flags
    say whether the instructions exist. Non-Linux systems: no bf16 (fp32 is the safe choice).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str, *, training: bool = False) -> str:
    """The precision actually used on ``device`` ("cpu", "cuda:0"...): ``auto`` resolved, and bf16
    on a CPU without native bf16 -> fp32 (emulated bf16 is slower than fp32 there)."""
    cuda = device.startswith("cuda")
    if precision == "auto":
        if training and cuda:
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        precision = (AUTO_TRAINING_CPU if training else AUTO_INFERENCE_CPU) if not cuda else AUTO_INFERENCE_CUDA
    if precision == "bf16" and not cuda and not cpu_has_bf16():
        _warn_no_bf16()
        return "fp32"
    return precision


@functools.cache
def _warn_no_bf16() -> None:
    log.warning("this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): using fp32 instead")
