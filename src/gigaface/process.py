"""Peak resident memory of a process, as reported to users and benchmarks."""
from __future__ import annotations

import resource


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
