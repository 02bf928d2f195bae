"""Peak resident memory of this process, per stage: Linux keeps the high-water mark (``VmHWM``) and
lets a process reset it (``/proc/self/clear_refs``), so each stage's peak is its own, not the
largest of the stages before it. Elsewhere the process' lifetime peak (``getrusage``).

Between stages the memory a finished stage freed is handed back to the system
(:func:`release_freed_memory`): glibc keeps freed heap in its arenas, so without it every stage
after training would start at training's high-water mark (measured on the demo: select, index,
eval and export all peaked at 5.5-5.8 GB, training's 5.5 GB plus their own)."""

from __future__ import annotations

import sys
from pathlib import Path

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def release_freed_memory() -> None:
    """Collect garbage and return freed heap to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    import ctypes
    import gc

    gc.collect()
    # the process' own symbols: glibc's malloc_trim where there is one (no ldconfig lookup per stage)
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def reset_peak_rss() -> None:
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: peak_rss_mb() then reports the lifetime peak


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since the last reset (or since the process started)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere
