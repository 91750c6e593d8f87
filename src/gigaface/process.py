"""The process gigaface runs in: its one-time set-up, and its peak memory as reported to users
and benchmarks.

Nothing in gigaface changes the process when it is imported; every entry point (the CLI, the
job worker, the worker pools, the Python API, the benchmarks) calls `configure_process()`
first. It is idempotent and cheap, so a caller may call it again.
"""
from __future__ import annotations

import ctypes
import resource

import pyvips

_configured = False


def configure_process() -> None:
    """Tune glibc and libvips for streaming gigapixel images, once per process.

    glibc raises its mmap threshold after large frees, after which every band buffer comes
    from the heap and fragments it: measured 400 MB peak instead of 240 MB for a 10k-wide
    JPEG. A fixed threshold keeps large buffers as their own mappings, returned as soon as
    they are freed. libvips' operation cache would only hold memory: every region is read
    once, top to bottom.
    """
    global _configured
    if _configured:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    pyvips.cache_set_max(0)
    _configured = True


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's own peak resident set size (VmHWM) in MB.

    Not getrusage(): Linux carries ru_maxrss across exec, so a process started by a big
    parent would report the parent's peak as its own. Falls back to it off Linux.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid != "self":
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
