"""Reading dlib's serialisation format (`dlib/serialize.h`), for the model files it saves.

dlib writes every integer as a control byte (bit 7: negative, low 4 bits: how many bytes
follow) and then that many little-endian bytes; a string as its length and its bytes; a
float as two such integers, a mantissa and a power of two; a bool as the character '0'
or '1'; a DNN tensor (`dlib/cuda/tensor.h`, version 2) as four dimensions and then raw
little-endian float32. Anything that does not fit is a `GigafaceError` naming the file and
the byte where reading stopped, so a damaged model file is one clear line, not a crash.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import GigafaceError

# float_details' exponents that stand for special values
_INF, _NINF, _NAN = 32000, 32001, 32002


class DlibReader:
    """A cursor over the bytes of one dlib file."""

    def __init__(self, data: bytes, name: str):
        self.data = memoryview(data)
        self.name = name
        self.pos = 0

    def fail(self, what: str) -> GigafaceError:
        return GigafaceError(f"{self.name} is not a dlib model file gigaface can read: {what} "
                             f"(at byte {self.pos} of {len(self.data)}); reinstall the package that ships it")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"the file ends early (wanted {n} more bytes)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self, limit: int = 8) -> int:
        """A signed or unsigned integer of at most `limit` bytes."""
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > limit:
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def count(self, limit: int = 1 << 31) -> int:
        """A non-negative size, bounded so that a damaged length cannot ask for gigabytes."""
        n = self.integer()
        if not 0 <= n <= limit:
            raise self.fail(f"implausible size {n}")
        return n

    def string(self, limit: int = 256) -> str:
        raw = bytes(self.take(self.count(limit)))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"a name that is not text: {raw[:40]!r}") from None

    def expect_string(self, *allowed: str) -> str:
        start = self.pos
        found = self.string()
        if found not in allowed:
            self.pos = start
            raise self.fail(f"expected {' or '.join(repr(a) for a in allowed)}, found {found!r}")
        return found

    def expect_integer(self, what: str, *allowed: int) -> int:
        start = self.pos
        found = self.integer()
        if found not in allowed:
            self.pos = start
            raise self.fail(f"unexpected {what} {found} (expected {' or '.join(map(str, allowed))})")
        return found

    def real(self) -> float:
        """A float saved as float_details: mantissa * 2**exponent."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("a float in dlib's old text format")
        mantissa, exponent = self.integer(8), self.integer(2)
        if exponent == _INF:
            return math.inf
        if exponent == _NINF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (ord("0"), ord("1")):
            self.pos -= 1
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == ord("1")

    def dims(self) -> tuple[int, int, int, int]:
        return tuple(self.count() for _ in range(4))  # type: ignore[return-value]

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version 2, (num_samples, k, nr, nc), float32 values."""
        self.expect_integer("tensor version", 2)
        shape = self.dims()
        size = math.prod(shape)
        values = np.frombuffer(self.take(4 * size), "<f4").astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise self.fail("a tensor with values that are not finite")
        return values.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """An alias_tensor: version 1 and its four dimensions (a view into a layer's params)."""
        self.expect_integer("alias_tensor version", 1)
        return self.dims()

    def float_matrix(self) -> np.ndarray:
        """A dlib::matrix<float>: rows, columns (negated in the newer format), then values."""
        rows, cols = abs(self.integer()), abs(self.integer())
        if rows * cols > 1 << 24:
            raise self.fail(f"implausible matrix size {rows}x{cols}")
        return np.array([self.real() for _ in range(rows * cols)], np.float32).reshape(rows, cols)

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def expect_end(self) -> None:
        if not self.at_end():
            raise self.fail(f"{len(self.data) - self.pos} bytes left over after the model")
