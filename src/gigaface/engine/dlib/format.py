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

from gigaface.errors import GigafaceError

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

    def integers(self, n: int) -> np.ndarray:
        """`n` integers in a row, as int64: the bulk of a shape predictor, decoded in one
        tight loop (3x faster than `integer` one by one) and checked afterwards."""
        if 2 * n > len(self.data) - self.pos:  # each takes 2 bytes or more: refuse before allocating
            raise self.fail(f"the file ends early (wanted {n} more integers)")
        data, pos, out, controls = self.data, self.pos, [0] * n, bytearray(n)
        from_bytes = int.from_bytes
        try:
            for i in range(n):
                c = data[pos]
                k = c & 0x0F
                v = from_bytes(data[pos + 1 : pos + 1 + k], "little")
                out[i] = -v if c & 0x80 else v
                controls[i] = c
                pos += 1 + k
        except IndexError:
            raise self.fail("the file ends early") from None
        if pos > len(data):
            raise self.fail("the file ends early")
        sizes = np.frombuffer(bytes(controls), np.uint8)
        bad = np.flatnonzero((sizes & 0x70 != 0) | (sizes & 0x0F == 0) | (sizes & 0x0F > 8))
        if bad.size:
            raise self.fail(f"bad integer control byte 0x{sizes[bad[0]]:02x} in a run of {n}")
        try:
            values = np.array(out, np.int64)
        except OverflowError:
            raise self.fail(f"an integer too large for 64 bits in a run of {n}") from None
        self.pos = pos
        return values

    def reals(self, n: int) -> np.ndarray:
        """`n` floats in a row (each a mantissa and an exponent), as float32."""
        pairs = self.integers(2 * n).reshape(n, 2)
        return reals_from(self, pairs[:, 0], pairs[:, 1])

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

    def float_vector(self) -> np.ndarray:
        """A dlib::matrix<float,0,1> as a 1-d float32 array."""
        rows, cols = abs(self.integer()), abs(self.integer())
        if cols != 1 or rows > 1 << 24:
            raise self.fail(f"a column vector of unexpected size {rows}x{cols}")
        return self.reals(rows)

    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def expect_end(self) -> None:
        if not self.at_end():
            raise self.fail(f"{len(self.data) - self.pos} bytes left over after the model")


def reals_from(reader: DlibReader, mantissas: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """float_details (mantissa * 2**exponent) as float32; a model has no inf or nan."""
    if np.any(np.abs(exponents) >= _INF) or np.any(np.abs(mantissas) >= 1 << 63):
        raise reader.fail("a float that is infinite, not a number or out of range")
    values = np.ldexp(mantissas.astype(np.float64), exponents.astype(np.int32)).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise reader.fail("a float out of float32's range")
    return values
