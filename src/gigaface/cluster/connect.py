"""Which cluster, and joining it: one clear line for every way that fails.

An address is what Ray takes: HOST:PORT of the head's GCS (the driver then runs on a node
of the cluster), ray://HOST:PORT of its client server (the driver runs anywhere that
reaches it), or `auto` (the cluster this machine is a node of).
"""
from __future__ import annotations

import logging
import os
import re
import socket

from gigaface.errors import GigafaceError

CLUSTER_ENV = "GIGAFACE_CLUSTER"
REACH_TIMEOUT = 5.0  # s: a head that does not answer a TCP connect in this long is not there
INSTALL_HINT = "pip install 'gigaface[ray]'"
_FORM = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")


def cluster_address(asked: str | None) -> str | None:
    """The address asked for (`--cluster`, else $GIGAFACE_CLUSTER), checked for its form;
    None when neither says one (the scan runs here)."""
    address = (asked if asked is not None else os.environ.get(CLUSTER_ENV, "")).strip()
    if not address:
        return None
    if address != "auto" and not (_FORM.fullmatch(address) and 0 < int(_FORM.fullmatch(address).group(2)) < 65536):
        raise GigafaceError(f"--cluster {address!r}: give HOST:PORT of the Ray head, ray://HOST:10001 or auto")
    return address


def import_ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise GigafaceError(f"scanning on a cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def check_reachable(address: str) -> None:
    """A TCP connect to the head first: Ray itself retries an absent head for a minute or more."""
    if address == "auto":
        return
    host, port = _FORM.fullmatch(address).groups()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT):
            pass
    except socket.gaierror:
        raise GigafaceError(f"cannot reach the Ray cluster at {address}: unknown host {host}") from None
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__).lower()
        raise GigafaceError(f"cannot reach the Ray cluster at {address} ({why}): is `ray start --head` running "
                            "there, and is the port open to this machine?") from None


def join(address: str) -> tuple[object, bool]:
    """Join the cluster as its driver: the ray module, and whether this call joined (False
    when the process is a Ray driver already, e.g. a notebook that called ray.init: that
    connection is used, and left open)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    check_reachable(address)
    # Ray's usage statistics go to its vendor unless turned off; a face library's host never
    # sends them (the nodes are started with --disable-usage-stats: README).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, namespace="gigaface", logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=True)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError (version mismatch), ValueError...
        raise GigafaceError(f"cannot join the Ray cluster at {address}: {one_line(exc)}") from None
    return ray, True


def leave() -> None:
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's text (Ray's run to dozens of lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:  # "...failure from server:" then a traceback
        return f"{lines[0]} {lines[-1]}"[:limit]
    return lines[0][:limit]
