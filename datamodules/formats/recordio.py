"""Pure-Python MXNet RecordIO (``.rec`` + ``.idx``) with the InsightFace meta convention; no ``mxnet`` needed.

Layers (``reference/datasets.md`` §3.3–3.7):

1. dmlc framing: ``magic 0xCED7230A`` (uint32 LE), ``lrec = (cflag << 29) | length``, ``length`` payload bytes, zero
   padding to a 4-byte boundary. A payload holding the magic at a 4-aligned offset is split there into parts
   (cflag 1 first, 2 middle, 3 last; 0 = whole record); the magic itself is dropped and re-inserted by the reader.
2. MXNet image record: ``IRHeader(flag, label, id, id2)`` packed ``'<IfQQ'``; when ``flag > 0`` the header label is 0
   and ``flag`` float32 labels follow; the rest is the encoded image.
3. ``.idx``: text lines ``key\\toffset`` (offset of the record's magic).
4. InsightFace meta: key 0 (flag 2) holds ``[N+1, N+1+K]``, keys 1..N are images, keys N+1..N+K hold each identity's
   ``[start, end)`` image-key range.
5. ``property``: ``"K,H,W"``.
"""
from __future__ import annotations

import numbers
import os
import struct
from array import array
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from datamodules.errors import DataFormatError
from lrface.io import atomic_write_text

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24

CFLAG_FULL, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3


# ----------------------------------------------------------------------------------------------------------------------
# Layer 1: framing
# ----------------------------------------------------------------------------------------------------------------------
def _pad(length: int) -> int:
    return (-length) & 3


def frame(payload: bytes) -> bytes:
    """One logical record → its on-disk bytes, split at every 4-aligned occurrence of the magic (dmlc ``WriteRecord``).

    Args:
        payload: the record body; each part must stay below 2^29 bytes.

    Returns:
        magic + lrec + part (+ padding) for every part, concatenated.
    """
    payload = bytes(payload)
    if len(payload) > _LENGTH_MASK:
        raise ValueError(f"RecordIO payload of {len(payload)} bytes exceeds the 2^29-1 byte limit")
    out = bytearray()
    start = 0
    pos = payload.find(MAGIC_BYTES)
    while pos != -1:
        # Only aligned occurrences split: the reader re-inserts magic only at part boundaries, which are aligned.
        if pos % 4 == 0:
            out += _FRAME.pack(MAGIC, ((CFLAG_FIRST if start == 0 else CFLAG_MIDDLE) << _LENGTH_BITS) | (pos - start))
            out += payload[start:pos]
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1)
    last = len(payload) - start
    out += _FRAME.pack(MAGIC, ((CFLAG_LAST if start else CFLAG_FULL) << _LENGTH_BITS) | last)
    out += payload[start:]
    out += b"\0" * _pad(last)
    return bytes(out)


def _read_exact(fd: int, n: int, offset: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_record_at(fd: int, offset: int, *, path: str, key=None, file_size: int | None = None) -> tuple[bytes, int]:
    """Read the logical record whose first part starts at ``offset``; re-joins split records.

    Args:
        fd: an open file descriptor of the ``.rec`` (read with ``os.pread``, so the file position is untouched and
            threads may share it).
        offset: byte offset of the record's magic.
        path, key: for error messages.
        file_size: size of the file, for "how many bytes are available" in truncation errors.

    Returns:
        ``(payload, next_offset)``; ``next_offset`` is where the following record starts.
    """
    parts: list[bytes] = []
    expect_continuation = False
    pos = offset
    while True:
        head = _read_exact(fd, _FRAME.size, pos)
        if len(head) < _FRAME.size:
            where = "record header" if not parts else f"part {len(parts) + 1} header of a split record"
            raise DataFormatError(path, f"truncated record: {where} needs {_FRAME.size} bytes, only {len(head)} "
                                  f"available before end of file", record=key, offset=pos,
                                  expected=f"{_FRAME.size} header bytes (magic + lrec)")
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise DataFormatError(path, f"bad magic 0x{magic:08X}", record=key, offset=pos,
                                  expected=f"RecordIO magic 0x{MAGIC:08X}")
        cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        if expect_continuation and cflag not in (CFLAG_MIDDLE, CFLAG_LAST):
            raise DataFormatError(path, f"unexpected cflag {cflag} after a part of a split record", record=key,
                                  offset=pos, expected="cflag 2 (middle) or 3 (last)")
        if not expect_continuation and cflag not in (CFLAG_FULL, CFLAG_FIRST):
            raise DataFormatError(path, f"unexpected cflag {cflag} at the start of a record", record=key,
                                  offset=pos, expected="cflag 0 (whole record) or 1 (first part)")
        padded = length + _pad(length)
        body = _read_exact(fd, padded, pos + _FRAME.size) if padded else b""
        if len(body) < padded:
            size_note = f" (file is {file_size} bytes)" if file_size is not None else ""
            raise DataFormatError(path, f"truncated record: expected {padded} bytes ({length} payload + "
                                  f"{padded - length} padding), only {len(body)} available{size_note}",
                                  record=key, offset=pos + _FRAME.size, expected=f"{padded} bytes")
        parts.append(body[:length])
        pos += _FRAME.size + padded
        if cflag in (CFLAG_FULL, CFLAG_LAST):
            break
        expect_continuation = True
    return (parts[0] if len(parts) == 1 else MAGIC_BYTES.join(parts)), pos


def _skip_record_at(fd: int, offset: int, *, path: str, file_size: int) -> int:
    """Offset of the record after the one at ``offset``, reading only the 8-byte part headers."""
    pos = offset
    while True:
        head = _read_exact(fd, _FRAME.size, pos)
        if len(head) < _FRAME.size:
            raise DataFormatError(path, "truncated record header", offset=pos, expected="8 header bytes")
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise DataFormatError(path, f"bad magic 0x{magic:08X}", offset=pos, expected=f"0x{MAGIC:08X}")
        cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
        pos += _FRAME.size + length + _pad(length)
        if pos > file_size:
            raise DataFormatError(path, f"truncated record: part needs {length} payload bytes, file ends at "
                                  f"{file_size}", offset=pos - length - _pad(length), expected=f"{length} bytes")
        if cflag in (CFLAG_FULL, CFLAG_LAST):
            return pos


# ----------------------------------------------------------------------------------------------------------------------
# Layer 2: IRHeader
# ----------------------------------------------------------------------------------------------------------------------
class IRHeader(NamedTuple):
    """MXNet image-record header. ``label`` is a float when ``flag == 0``, else a tuple of ``flag`` floats."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack(header: IRHeader | tuple, payload: bytes = b"") -> bytes:
    """``IRHeader`` + payload → record body, as ``mx.recordio.pack``: a numeric label forces ``flag = 0``; a sequence
    label sets ``flag = len(label)``, writes 0 as the header label and appends the labels as float32."""
    header = IRHeader(*header)
    if isinstance(header.label, (numbers.Number, np.number)):
        head = _IR.pack(0, float(header.label), int(header.id), int(header.id2))
        return head + bytes(payload)
    labels = np.asarray(header.label, dtype="<f4").reshape(-1)
    if labels.size == 0:
        raise ValueError("a vector label needs at least one value (flag = len(label) must be > 0)")
    return _IR.pack(labels.size, 0.0, int(header.id), int(header.id2)) + labels.tobytes() + bytes(payload)


def unpack(record: bytes, *, source: str = "<record>", key=None) -> tuple[IRHeader, bytes]:
    """Record body → ``(IRHeader, payload)``; ``label`` is a tuple of floats when ``flag > 0``.

    Args:
        record: bytes returned by :meth:`RecordIOReader.read`.
        source, key: name the file and record in errors.
    """
    if len(record) < IR_SIZE:
        raise DataFormatError(source, f"record of {len(record)} bytes is shorter than the IRHeader", record=key,
                              expected=f"at least {IR_SIZE} bytes ('<IfQQ' flag, label, id, id2)")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(0, label, id_, id2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise DataFormatError(source, f"IRHeader flag {flag} announces {flag} float32 labels but the record has only "
                              f"{len(record) - IR_SIZE} bytes after the header", record=key,
                              expected=f"at least {end} bytes")
    labels = struct.unpack_from(f"<{flag}f", record, IR_SIZE)
    return IRHeader(flag, labels, id_, id2), record[end:]


# ----------------------------------------------------------------------------------------------------------------------
# Layer 3: .idx
# ----------------------------------------------------------------------------------------------------------------------
def _parse_idx_slow(path: Path) -> tuple[np.ndarray, np.ndarray]:
    keys, offsets = array("q"), array("q")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError
                key, offset = int(fields[0]), int(fields[1])
                if offset < 0:
                    raise ValueError
            except ValueError:
                raise DataFormatError(path, f"malformed idx line {raw[:80]!r}", line=lineno,
                                      expected="'<int key>\\t<non-negative int byte offset>'") from None
            keys.append(key)
            offsets.append(offset)
    return np.frombuffer(keys, dtype=np.int64).copy(), np.frombuffer(offsets, dtype=np.int64).copy()


def read_idx(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``.idx`` → ``(keys, offsets)`` int64 arrays in file order. A malformed line raises, naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "missing .idx file", expected="a text file of 'key\\toffset' lines")
    # numpy's C loadtxt parses MS1M's ~6M lines in about a second; on any doubt the slow parser finds the bad line.
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(path, dtype=np.int64, delimiter="\t", comments=None, ndmin=2)
        if table.size == 0 or table.shape[1] != 2 or (table[:, 1] < 0).any():
            raise ValueError
        return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])
    except ValueError:
        return _parse_idx_slow(path)


# ----------------------------------------------------------------------------------------------------------------------
# Reader / writer
# ----------------------------------------------------------------------------------------------------------------------
class RecordIOReader:
    """Random access to a ``.rec`` through its ``.idx``; the whole file is never read into memory.

    The file is opened lazily, once per process: after a fork (DataLoader workers) the first read reopens it, so no
    two processes share a descriptor. The reader pickles without its handle (``spawn`` workers, DDP).

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its ``.idx``. Without one, keys are the records' positions 0..n-1 in file order, found by a scan of
            the 8-byte part headers the first time they are needed; iteration needs no scan.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        if not self.rec_path.is_file():
            raise DataFormatError(self.rec_path, "missing .rec file", expected="an MXNet RecordIO file")
        self.file_size = self.rec_path.stat().st_size
        self._fh = None
        self._pid: int | None = None
        self._keys: np.ndarray | None = None
        self._offsets: np.ndarray | None = None
        self._first_key = 0
        self._contiguous = False
        self._sorted_keys: np.ndarray | None = None
        self._sorted_pos: np.ndarray | None = None
        if self.idx_path is not None:
            keys, offsets = read_idx(self.idx_path)
            self._set_index(keys, offsets, source=self.idx_path)

    # -- index ---------------------------------------------------------------------------------------------------------
    def _set_index(self, keys: np.ndarray, offsets: np.ndarray, *, source: Path) -> None:
        past = np.flatnonzero(offsets >= self.file_size)
        if past.size:
            i = int(past[0])
            raise DataFormatError(source, f"offset {int(offsets[i])} of key {int(keys[i])} is past the end of "
                                  f"{self.rec_path} ({self.file_size} bytes)", line=self._line_of(source, i),
                                  expected=f"an offset below {self.file_size}")
        self._keys, self._offsets = keys, offsets
        n = keys.size
        self._first_key = int(keys[0]) if n else 0
        self._contiguous = bool(n == 0 or np.array_equal(keys, np.arange(self._first_key, self._first_key + n)))
        if not self._contiguous:
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
            if dup.size:
                key = int(sorted_keys[dup[0]])
                first, second = (self._line_of(source, int(p)) for p in np.flatnonzero(keys == key)[:2])
                raise DataFormatError(source, f"duplicate key {key}", line=second,
                                      expected=f"unique keys (first seen on line {first})")
            self._sorted_keys, self._sorted_pos = sorted_keys, order

    def _line_of(self, source: Path, entry: int) -> int | None:
        """1-based line of the ``entry``-th (0-based) non-blank ``.idx`` line; only computed for error messages."""
        if source != self.idx_path:
            return None
        seen = -1
        with open(source, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    seen += 1
                    if seen == entry:
                        return lineno
        return None

    def _ensure_index(self) -> None:
        if self._keys is not None:
            return
        fd = self._fd()
        offsets = array("q")
        pos = 0
        while pos < self.file_size:
            offsets.append(pos)
            pos = _skip_record_at(fd, pos, path=str(self.rec_path), file_size=self.file_size)
        offs = np.frombuffer(offsets, dtype=np.int64).copy()
        self._set_index(np.arange(offs.size, dtype=np.int64), offs, source=self.rec_path)

    def _position(self, key: int) -> int:
        self._ensure_index()
        key = int(key)
        if self._contiguous:
            pos = key - self._first_key
            if 0 <= pos < self._keys.size:
                return pos
        else:
            i = int(np.searchsorted(self._sorted_keys, key))
            if i < self._sorted_keys.size and self._sorted_keys[i] == key:
                return int(self._sorted_pos[i])
        raise KeyError(f"{self.rec_path}: no record with key {key} in {self.idx_path or 'the file'}")

    @property
    def keys(self) -> np.ndarray:
        """int64 keys in ``.idx`` order (a read-only array: MS1M has ~6M keys)."""
        self._ensure_index()
        view = self._keys.view()
        view.flags.writeable = False
        return view

    def offset(self, key: int) -> int:
        return int(self._offsets[self._position(key)])

    def __contains__(self, key) -> bool:
        try:
            self._position(key)
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def __len__(self) -> int:
        self._ensure_index()
        return int(self._keys.size)

    # -- file handle ---------------------------------------------------------------------------------------------------
    def _fd(self) -> int:
        pid = os.getpid()
        if self._fh is None or self._pid != pid:
            # A handle inherited through fork is the parent's; dropping our reference leaves the parent's untouched.
            self._fh = open(self.rec_path, "rb", buffering=0)
            self._pid = pid
        return self._fh.fileno()

    @property
    def handle_pid(self) -> int | None:
        """The pid of the process that opened the current handle (None before the first read)."""
        return self._pid

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh, self._pid = None, None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- reads ---------------------------------------------------------------------------------------------------------
    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (split parts re-joined)."""
        return self.read_at(self.offset(key), key=key)

    def read_at(self, offset: int, *, key=None) -> bytes:
        """The payload of the record whose magic is at byte ``offset``."""
        if offset < 0 or offset >= self.file_size:
            raise DataFormatError(self.rec_path, f"offset {offset} is outside the file ({self.file_size} bytes)",
                                  record=key, offset=offset, expected=f"0 <= offset < {self.file_size}")
        payload, _ = read_record_at(self._fd(), offset, path=str(self.rec_path), key=key, file_size=self.file_size)
        return payload

    def __iter__(self) -> Iterator[bytes]:
        """Payloads in file order (a sequential scan; needs no ``.idx``)."""
        fd = self._fd()
        pos = 0
        while pos < self.file_size:
            payload, pos = read_record_at(fd, pos, path=str(self.rec_path), file_size=self.file_size)
            yield payload

    def items(self) -> Iterator[tuple[int, bytes]]:
        """``(key, payload)`` in ``.idx`` order."""
        for key in self.keys:
            yield int(key), self.read(int(key))


class RecordIOWriter:
    """Writes ``.rec`` + ``.idx`` to ``*.tmp`` files and renames them into place on a clean :meth:`close`.

    Args:
        rec_path: destination ``.rec``.
        idx_path: destination ``.idx`` (None: no index).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._rec_tmp = self.rec_path.with_name(self.rec_path.name + ".tmp")
        self._idx_tmp = self.idx_path.with_name(self.idx_path.name + ".tmp") if self.idx_path else None
        self._rec = open(self._rec_tmp, "w+b")
        self._idx = open(self._idx_tmp, "w", encoding="ascii", newline="\n") if self._idx_tmp else None
        self._pos = 0
        self._keys, self._offsets = array("q"), array("q")
        self._max_key: int | None = None
        self._key_set: set[int] | None = None  # built only if keys ever arrive out of increasing order
        self.closed = False

    def _known(self, key: int) -> bool:
        if self._max_key is None or key > self._max_key:
            return False
        if self._key_set is None:
            self._key_set = set(self._keys)
        return key in self._key_set

    def write(self, key: int, payload: bytes) -> int:
        """Append one record; returns its byte offset."""
        if self.closed:
            raise ValueError(f"{self.rec_path}: writer is closed")
        key = int(key)
        if self._known(key):
            raise ValueError(f"{self.rec_path}: duplicate key {key}")
        data = frame(payload)
        offset = self._pos
        self._rec.write(data)
        self._pos += len(data)
        if self._idx is not None:
            self._idx.write(f"{key}\t{offset}\n")
        self._keys.append(key)
        self._offsets.append(offset)
        if self._key_set is not None:
            self._key_set.add(key)
        self._max_key = key if self._max_key is None else max(self._max_key, key)
        return offset

    def overwrite(self, key: int, payload: bytes) -> None:
        """Replace an already written record by one whose framed size is identical (e.g. a meta record whose counts
        are known only at the end)."""
        positions = np.flatnonzero(np.frombuffer(self._keys, dtype=np.int64) == int(key))
        if positions.size == 0:
            raise KeyError(f"{self.rec_path}: key {key} was not written")
        i = int(positions[0])
        start = self._offsets[i]
        end = self._offsets[i + 1] if i + 1 < len(self._offsets) else self._pos
        data = frame(payload)
        if len(data) != end - start:
            raise ValueError(f"{self.rec_path}: new record for key {key} is {len(data)} bytes framed, the old one "
                             f"{end - start}; overwrite needs equal sizes")
        self._rec.seek(start)
        self._rec.write(data)
        self._rec.seek(self._pos)

    def __len__(self) -> int:
        return len(self._keys)

    def _discard(self) -> None:
        for f in (self._rec, self._idx):
            if f is not None:
                f.close()
        for p in (self._rec_tmp, self._idx_tmp):
            if p is not None and p.exists():
                p.unlink()
        self.closed = True

    def close(self) -> None:
        """Flush, fsync and rename the temp files into place."""
        if self.closed:
            return
        for f in (self._rec, self._idx):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        os.replace(self._rec_tmp, self.rec_path)
        if self._idx_tmp is not None:
            os.replace(self._idx_tmp, self.idx_path)
        self.closed = True

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


# ----------------------------------------------------------------------------------------------------------------------
# Layers 4-5: InsightFace folders
# ----------------------------------------------------------------------------------------------------------------------
def _hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, numbers.Integral):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def read_property(path: str | Path) -> tuple[int, int, int]:
    """``property`` file → ``(num_classes, H, W)`` from its first line ``"K,H,W"``."""
    path = Path(path)
    try:
        first = path.read_text(encoding="ascii", errors="replace").splitlines()[0]
        k, h, w = (int(v) for v in first.strip().split(","))
        if k <= 0 or h <= 0 or w <= 0:
            raise ValueError
    except (IndexError, ValueError):
        raise DataFormatError(path, "malformed property file", line=1,
                              expected="'<num_classes>,<height>,<width>' with positive integers") from None
    return k, h, w


def write_insightface_rec(out_dir: str | Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                          image_size: int | tuple[int, int] = (112, 112), meta: bool = True) -> dict:
    """Write ``train.rec``, ``train.idx`` and ``property`` as ``face2rec2`` does.

    Args:
        out_dir: destination folder (created).
        samples: ``(label, encoded_jpeg)`` pairs sorted by label (streamed; never held in memory together).
        num_classes: K; every label must be in ``[0, K)``. Identities without images get an empty range.
        image_size: ``(H, W)`` written to ``property``.
        meta: InsightFace layout (key 0 = ``[N+1, N+1+K]``, images at keys 1..N, identity ranges at N+1..N+K);
            False writes the im2rec layout (images at keys 0..N-1, no meta records).

    Returns:
        ``{"num_images": N, "num_classes": K, "image_size": (H, W)}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = _hw(image_size)
    num_classes = int(num_classes)
    starts = np.full(num_classes + 1, -1, dtype=np.int64)
    first_key = 1 if meta else 0
    key = first_key
    last_label = -1
    with RecordIOWriter(out_dir / "train.rec", out_dir / "train.idx") as writer:
        if meta:
            writer.write(0, pack(IRHeader(2, (0.0, 0.0), 0, 0)))  # placeholder: N is known only at the end
        for label, data in samples:
            label = int(label)
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside [0, {num_classes})")
            if label < last_label:
                raise ValueError(f"samples must be sorted by label: {label} after {last_label}")
            if label != last_label:
                starts[last_label + 1:label + 1] = key
                last_label = label
            writer.write(key, pack(IRHeader(0, float(label), key, 0), data))
            key += 1
        end_key = key
        starts[last_label + 1:] = end_key
        n = end_key - first_key
        if meta:
            if end_key + num_classes > 2 ** 24:
                raise ValueError("keys above 2^24 cannot be stored exactly in the float32 meta labels")
            for k in range(num_classes):
                writer.write(end_key + k, pack(IRHeader(2, (float(starts[k]), float(starts[k + 1])), end_key + k, 0)))
            writer.overwrite(0, pack(IRHeader(2, (float(end_key), float(end_key + num_classes)), 0, 0)))
    atomic_write_text(out_dir / "property", f"{num_classes},{h},{w}\n")
    return {"num_images": int(n), "num_classes": num_classes, "image_size": (h, w)}


def _label_id(header: IRHeader) -> float:
    return header.label[0] if header.flag > 0 else header.label


class InsightFaceRec:
    """An InsightFace training folder (``train.rec``, ``train.idx``, ``property``) read through the meta convention.

    Args:
        root_or_rec: the folder, or the ``.rec`` path (its ``.idx`` has the same stem; ``property`` is beside it).
    """

    def __init__(self, root_or_rec: str | Path):
        p = Path(root_or_rec)
        if p.is_dir():
            rec_path = p / "train.rec"
        else:
            rec_path = p
        if not rec_path.is_file():
            raise DataFormatError(rec_path, "missing RecordIO file",
                                  expected="an InsightFace folder with train.rec, train.idx and property")
        idx_path = rec_path.with_suffix(".idx")
        self.rec_path = rec_path
        self.reader = RecordIOReader(rec_path, idx_path if idx_path.is_file() else None)
        self.property_path = rec_path.parent / "property"
        self.property = read_property(self.property_path) if self.property_path.is_file() else None
        self.meta = None
        self.image_keys: range | np.ndarray
        if 0 in self.reader:
            header, _ = self._unpack(0)
            if header.flag > 0:
                self.meta = header.label
        if self.meta is not None:
            n_end = self.meta[0]
            if n_end != int(n_end) or n_end < 1 or int(n_end) - 1 > len(self.reader) - 1:
                raise DataFormatError(rec_path, f"meta record 0 label {self.meta} does not fit {len(self.reader)} "
                                      "records", record=0, expected="[N+1, N+1+K] with N+1 <= number of records")
            self.image_keys = range(1, int(n_end))
            if len(self.image_keys) and self.image_keys[-1] not in self.reader:
                raise DataFormatError(self.reader.idx_path or rec_path, f"image key {self.image_keys[-1]} "
                                      "announced by meta record 0 is missing", expected="keys 1..N in the .idx")
        else:
            self.image_keys = self.reader.keys
        self._num_classes: int | None = None

    def _unpack(self, key: int) -> tuple[IRHeader, bytes]:
        return unpack(self.reader.read(key), source=str(self.rec_path), key=key)

    def __len__(self) -> int:
        return len(self.image_keys)

    def sample(self, key: int) -> tuple[int, bytes]:
        """``(label, encoded image)`` of image record ``key``; a non-integral or out-of-range label raises."""
        header, payload = self._unpack(key)
        value = _label_id(header)
        if not np.isfinite(value) or value != int(value) or value < 0:
            raise DataFormatError(self.rec_path, f"label {value} is not a class id", record=key,
                                  expected="a non-negative integral float32")
        label = int(value)
        if self.property is not None and label >= self.property[0]:
            raise DataFormatError(self.rec_path, f"label {label} >= num_classes {self.property[0]}", record=key,
                                  expected=f"a class id below the {self.property[0]} of {self.property_path}")
        return label, payload

    def label(self, key: int) -> int:
        return self.sample(key)[0]

    def image_bytes(self, key: int) -> bytes:
        return self._unpack(key)[1]

    def identity_range(self, identity: int) -> tuple[int, int]:
        """``[start, end)`` image keys of ``identity`` from its identity record (meta layout only)."""
        if self.meta is None:
            raise ValueError(f"{self.rec_path} has no meta record 0, hence no identity records")
        header, _ = self._unpack(int(self.meta[0]) + int(identity))
        return int(header.label[0]), int(header.label[1])

    @property
    def num_classes(self) -> int:
        """From ``property``; else from the meta record (``K = label[1] - label[0]``); else max label + 1 (a scan)."""
        if self._num_classes is None:
            if self.property is not None:
                self._num_classes = self.property[0]
            elif self.meta is not None and len(self.meta) >= 2:
                self._num_classes = int(self.meta[1]) - int(self.meta[0])
            else:
                self._num_classes = 1 + max((self.label(int(k)) for k in self.image_keys), default=-1)
        return self._num_classes

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(H, W)`` from ``property``, if present."""
        return None if self.property is None else self.property[1:]
