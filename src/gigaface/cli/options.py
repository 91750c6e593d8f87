"""Checks of option values shared by several commands: each refuses a bad value with one
line naming the option, before any work is done."""
from __future__ import annotations

import os
import re

from gigaface.errors import GigafaceError
from gigaface.paths import folder_of


def at_least(minimum: float, **values) -> None:
    """Refuse a numeric option under its minimum (None: not given), naming the option."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise GigafaceError(f"--{name.replace('_', '-')} is at least {minimum:g} (got {value:g})")


def positive(**values) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise GigafaceError(f"--{name.replace('_', '-')} is more than 0 (got {value:g})")


def output_file(path: str, what: str) -> str:
    """An output path whose folder exists and that is not a folder itself, or a clear error
    before any work is done."""
    if os.path.isdir(path):
        raise GigafaceError(f"{path}: is a directory; give a file name for the {what}")
    if not os.path.isdir(folder_of(path)):
        raise GigafaceError(f"{path}: the folder {folder_of(path)} does not exist")
    return path


def check_port_number(port: int) -> None:
    if not 0 <= port <= 65535:
        raise GigafaceError(f"--port {port}: a TCP port is 1 to 65535 (0 picks a free one)")


def host_name(name: str) -> str:
    """An --allow-host name: a DNS name or an address, without scheme, port or path."""
    from gigaface.service.gate import host_form

    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?", name.strip()):
        raise GigafaceError(f"--allow-host {name!r}: give a host name such as faces.example.org (no scheme or port)")
    return host_form(name)


def data_folder(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise GigafaceError(f"--data-dir {path}: no such folder")
    return real


def use_runtime(runtime: str | None, precision: str | None):
    """The runtime this command runs its models on (`--runtime`, `--precision`), checked now;
    exported to the environment so that the processes it starts (the service's jobs and
    reference workers) run on the same one."""
    from gigaface.engine.runtime import PRECISION_ENV, RUNTIME_ENV, choose

    chosen = choose(runtime, precision)
    if runtime:
        os.environ[RUNTIME_ENV] = runtime
    if precision:
        os.environ[PRECISION_ENV] = precision
    return chosen


def runtime_text(runtime: dict) -> str:
    """'openvino cpu bf16' from a Runtime's to_dict(), as summaries print it."""
    return f"{runtime['runtime']} {runtime['device']} {runtime['precision']}"
