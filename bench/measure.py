"""Run one piece of work in a fresh process and measure it: wall time and peak RSS.

A fresh process per measurement keeps one tool's memory from hiding in another's
(Python never gives freed arenas back), and its VmHWM is the true peak of that tool.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from gigaface.process import peak_rss_mb


@dataclass
class Measured:
    value: Any
    wall_s: float
    peak_rss_mb: float


def timed_call(target: str, args: tuple, kwargs: dict) -> tuple[Any, float, float]:
    """(value, seconds, peak RSS MB) of `module:function`, run in this process; meant to be
    the body of a fresh process (see `measured`)."""
    module, name = target.rsplit(":", 1)
    fn = getattr(importlib.import_module(module), name)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start, peak_rss_mb()


def measured(target: str, *args, **kwargs) -> Measured:
    """Call `module:function` with the arguments in a fresh spawned process.

    The wall time covers the call only (not the interpreter start and imports of the
    child); the peak RSS is the child's whole life, imports included.
    """
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        value, wall, peak = pool.submit(timed_call, target, args, kwargs).result()
    return Measured(value, wall, peak)


def machine() -> str:
    """One line naming this machine, for reports."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    import onnxruntime

    return (f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__} "
            f"({', '.join(onnxruntime.get_available_providers())})")
