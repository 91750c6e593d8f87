"""How a scan tells its caller where it is: the stages and their progress, and notes."""
from __future__ import annotations


class Reporter:
    """Receives progress; gigaface.progress draws bars from it. Every method is optional to override.

    A reporter is also a context manager, so a caller can hold any reporter open around a
    scan (bars need starting and stopping; this one does nothing).
    """

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None: ...

    def stage(self, name: str, total: int) -> None: ...
    def advance(self, n: int = 1, faces: int = 0) -> None: ...
    def note(self, message: str) -> None: ...
