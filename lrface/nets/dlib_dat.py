"""A reader of dlib's binary serialisation (``dlib/serialize.h``, ``dlib/dnn/tensor.h``), for ``.dat`` network files.

The primitives, as dlib writes them:

- an integer: one control byte — low 4 bits the number of value bytes that follow, bit 0x80 the sign — then the
  magnitude, little-endian (0 is the single byte ``00``);
- a ``float`` / ``double``: two integers, mantissa and exponent, value = mantissa · 2^exponent (dlib's
  ``float_details``; exponents 32000..32002 mark +inf / -inf / NaN);
- a string: its length (integer) then its bytes;
- a bool: one ASCII byte, ``'1'`` or ``'0'``;
- a tensor (``resizable_tensor``): version (integer), num_samples, k, nr, nc (integers), then the k·nr·nc·num_samples
  values — version 2 as raw little-endian IEEE float32, version 1 as dlib floats one by one;
- an ``alias_tensor`` (a shape only): version 1, num_samples, k, nr, nc.

Every read names the file and the byte offset it failed at, so a truncated or corrupt file gives
``DlibDatError: <file>: offset 1234: expected ... while reading <what>``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = ["DlibDatError", "DatReader"]

_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibDatError(ValueError):
    """A dlib ``.dat`` file that does not hold what was expected; the message names the file and the byte offset."""


class DatReader:
    """Sequential reader over the bytes of one dlib-serialised file.

    Args:
        path: the file (read whole; dlib network files are tens of MB).
        data: its bytes, when already in memory (``path`` is then only used in messages).
    """

    def __init__(self, path: str | os.PathLike, data: bytes | None = None):
        self.path = Path(path)
        if data is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no such dlib .dat file")
            data = self.path.read_bytes()
        self.data = memoryview(data)
        self.pos = 0

    def error(self, message: str, at: int | None = None) -> DlibDatError:
        return DlibDatError(f"{self.path}: offset {self.pos if at is None else at}: {message}")

    def _take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.error(f"unexpected end of file ({len(self.data)} bytes) while reading {what}: needed {n} "
                             f"more byte(s)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def integer(self, what: str) -> int:
        at = self.pos
        control = self._take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise self.error(f"byte 0x{control:02x} is not a dlib integer control byte (expected bits 0x70 clear and "
                             f"at most 8 value bytes) while reading {what}", at)
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def floating(self, what: str) -> float:
        at = self.pos
        if at < len(self.data) and self.data[at] & 0x70:
            raise self.error(f"byte 0x{self.data[at]:02x} starts an ASCII float (dlib's pre-2013 format), which this "
                             f"reader does not read, while reading {what}", at)
        mantissa = self.integer(f"{what} (mantissa)")
        exponent = self.integer(f"{what} (exponent)")
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return math.ldexp(mantissa, exponent)

    def string(self, what: str, max_length: int = 1 << 16) -> str:
        at = self.pos
        n = self.integer(f"{what} (length)")
        if not 0 <= n <= max_length:
            raise self.error(f"string length {n} is out of range 0..{max_length} while reading {what}", at)
        raw = bytes(self._take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"non-ASCII bytes {raw[:24]!r} while reading {what}", at) from None

    def expect_string(self, expected: str | tuple[str, ...], what: str) -> str:
        """Reads a string and checks it is one of ``expected`` (dlib's layer type tags, e.g. ``"con_4"``)."""
        options = (expected,) if isinstance(expected, str) else tuple(expected)
        at = self.pos
        found = self.string(what)
        if found not in options:
            raise self.error(f"found {found!r}, expected {' or '.join(map(repr, options))} while reading {what}", at)
        return found

    def boolean(self, what: str) -> bool:
        at = self.pos
        byte = bytes(self._take(1, what))
        if byte not in (b"0", b"1"):
            raise self.error(f"byte {byte!r} is not a dlib bool ('0' or '1') while reading {what}", at)
        return byte == b"1"

    def version(self, allowed: tuple[int, ...], what: str) -> int:
        at = self.pos
        found = self.integer(f"{what} (version)")
        if found not in allowed:
            raise self.error(f"version {found}, expected {' or '.join(map(str, allowed))} while reading {what}", at)
        return found

    def shape4(self, what: str) -> tuple[int, int, int, int]:
        dims = tuple(self.integer(f"{what} ({name})") for name in ("num_samples", "k", "nr", "nc"))
        if any(d < 0 for d in dims):
            raise self.error(f"negative tensor dimension {dims} while reading {what}")
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        """A ``resizable_tensor`` → float32 array of shape (num_samples, k, nr, nc)."""
        version = self.version((1, 2), f"{what} tensor")
        shape = self.shape4(what)
        count = int(np.prod(shape))
        if version == 2:
            raw = self._take(4 * count, f"{what} ({count} float32 values)")
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            values = np.array([self.floating(f"{what} value {i}") for i in range(count)], dtype=np.float32)
        return values.reshape(shape)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        """An ``alias_tensor`` → its shape (it holds no values)."""
        self.version((1,), f"{what} alias_tensor")
        return self.shape4(what)

    def skip_tensor(self, what: str) -> None:
        """Reads past a runtime-state tensor (x_grad, cached_output, ...): a saved network holds these, usually
        empty, and inference needs none of them."""
        self.tensor(what)

    def at_end(self) -> bool:
        return self.pos == len(self.data)
