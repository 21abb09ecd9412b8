"""Pure-Python MXNet RecordIO: framing (incl. split records), IRHeader, .idx, InsightFace meta layout, errors."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import struct

import numpy as np
import pytest

from datamodules.errors import DataFormatError
from datamodules.formats.recordio import (MAGIC, MAGIC_BYTES, IRHeader, InsightFaceRec, RecordIOReader,
                                          RecordIOWriter, frame, pack, read_idx, unpack, write_insightface_rec)


def _frames(raw: bytes) -> list[tuple[int, int, bytes]]:
    """Walk raw .rec bytes independently of the reader: (cflag, length, body) per part."""
    out, pos = [], 0
    while pos < len(raw):
        magic, lrec = struct.unpack_from("<II", raw, pos)
        assert magic == MAGIC
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        out.append((cflag, length, raw[pos + 8:pos + 8 + length]))
        pos += 8 + length + (-length) % 4
    assert pos == len(raw)
    return out


def _write(tmp_path, records: dict[int, bytes], idx=True):
    rec, ix = tmp_path / "t.rec", tmp_path / "t.idx"
    with RecordIOWriter(rec, ix if idx else None) as w:
        for k, v in records.items():
            w.write(k, v)
    return rec, ix


def test_hand_built_record_bytes():
    body = pack(IRHeader(0, 7.0, 5, 0), b"hello")
    # IRHeader '<IfQQ': flag=0, label 7.0 (0x40E00000), id=5, id2=0, then the image bytes
    assert body == (b"\x00\x00\x00\x00" + b"\x00\x00\xe0\x40" + b"\x05" + b"\x00" * 7 + b"\x00" * 8 + b"hello")
    framed = frame(body)
    assert framed[:4] == b"\x0a\x23\xd7\xce"  # 0xCED7230A little-endian
    assert framed[4:8] == struct.pack("<I", 29)  # cflag 0, length 24 + 5
    assert framed[8:37] == body
    assert framed[37:] == b"\0\0\0"  # padded to 40
    assert len(framed) == 40


def test_vector_label_layout_and_roundtrip():
    body = pack(IRHeader(0, [3.0, 1.0, 0.5], 9, 2), b"img")
    flag, label, id_, id2 = struct.unpack_from("<IfQQ", body)
    assert (flag, label, id_, id2) == (3, 0.0, 9, 2)  # header label written as 0 when flag > 0
    assert struct.unpack_from("<3f", body, 24) == (3.0, 1.0, 0.5)
    assert body[36:] == b"img"
    header, payload = unpack(body)
    assert header == IRHeader(3, (3.0, 1.0, 0.5), 9, 2) and payload == b"img"
    # a numeric label forces flag 0 whatever the header said (mx.recordio.pack semantics)
    header, payload = unpack(pack(IRHeader(4, 2.0, 1, 0), b"x"))
    assert header.flag == 0 and header.label == 2.0 and payload == b"x"
    with pytest.raises(DataFormatError, match="announces 3 float32 labels"):
        unpack(body[:30], source="f.rec", key=4)
    with pytest.raises(DataFormatError, match="shorter than the IRHeader"):
        unpack(b"\0" * 10)


def test_split_records_on_aligned_magic(tmp_path):
    pay_split = MAGIC_BYTES + b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"xy" + MAGIC_BYTES + b"zz" + MAGIC_BYTES
    pay_unaligned = b"ab" + MAGIC_BYTES + b"cd"  # magic at offset 2: not a split point
    pay_end = b"1234" + MAGIC_BYTES  # magic as the last aligned word: empty last part
    records = {0: b"plain", 1: pay_split, 2: pay_unaligned, 3: pay_end}
    rec, ix = _write(tmp_path, records)
    parts = _frames(rec.read_bytes())
    cflags = [c for c, _, _ in parts]
    assert cflags[0] == 0
    assert {1, 2, 3} <= set(cflags)
    split_parts = parts[1:1 + cflags[1:].index(3) + 1]
    # pay_split has the magic at offsets 0, 8, 12, 18, 24; 18 is unaligned and stays inside a part:
    # parts are [0, 0) [4, 8) [12, 12) [16, 24) [28, 28)
    assert [(c, n) for c, n, _ in split_parts] == [(1, 0), (2, 4), (2, 0), (2, 8), (3, 0)]
    assert split_parts[3][2] == b"xy" + MAGIC_BYTES + b"zz"
    rest = parts[1 + len(split_parts):]
    assert [(c, n) for c, n, _ in rest] == [(0, 8), (1, 4), (3, 0)]
    reader = RecordIOReader(rec, ix)
    for k, v in records.items():
        assert reader.read(k) == v
    assert list(RecordIOReader(rec)) == list(records.values())  # sequential scan re-joins as well


def test_roundtrip_keys_offsets_and_no_idx(tmp_path):
    rng = np.random.default_rng(0)
    records = {k: rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
               for k, n in zip([10, 3, 7, 42, 0], [0, 1, 5, 8, 1001])}
    rec, ix = _write(tmp_path, records)
    lines = ix.read_text().splitlines()
    assert [int(x.split("\t")[0]) for x in lines] == [10, 3, 7, 42, 0]
    offsets = [int(x.split("\t")[1]) for x in lines]
    assert offsets == [0, 8, 8 + 12, 20 + 16, 36 + 16]  # 0 -> 8 bytes, 1 -> 12, 5 -> 16, 8 -> 16
    reader = RecordIOReader(rec, ix)
    assert list(reader.keys) == [10, 3, 7, 42, 0] and len(reader) == 5
    assert 42 in reader and 5 not in reader
    assert {k: reader.read(k) for k in records} == records
    assert reader.read_at(offsets[3]) == records[42]
    assert dict(reader.items()) == records
    with pytest.raises(KeyError):
        reader.read(5)
    plain = RecordIOReader(rec)  # no idx: positions in file order
    assert list(plain.keys) == [0, 1, 2, 3, 4]
    assert plain.read(3) == records[42]
    assert list(plain) == list(records.values())


def test_reader_pickles_and_reopens_after_fork(tmp_path):
    rec, ix = _write(tmp_path, {0: b"a" * 9, 1: b"b" * 3})
    reader = RecordIOReader(rec, ix)
    assert reader.read(0) == b"a" * 9
    assert reader.handle_pid == os.getpid()
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.handle_pid is None and clone.read(1) == b"b" * 3

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        q.put((os.getpid(), reader.read(1), reader.handle_pid))

    p = ctx.Process(target=child)
    p.start()
    pid, data, handle_pid = q.get(timeout=20)
    p.join(20)
    assert data == b"b" * 3 and handle_pid == pid != os.getpid()
    assert reader.handle_pid == os.getpid() and reader.read(0) == b"a" * 9  # parent's handle still works


def test_writer_is_atomic(tmp_path):
    rec, ix = tmp_path / "a.rec", tmp_path / "a.idx"
    with pytest.raises(RuntimeError):
        with RecordIOWriter(rec, ix) as w:
            w.write(0, b"x")
            assert (tmp_path / "a.rec.tmp").exists() and not rec.exists()
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with RecordIOWriter(rec, ix) as w:
        w.write(5, b"x")
        w.write(2, b"y")
        with pytest.raises(ValueError, match="duplicate key 5"):
            w.write(5, b"z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.rec"]


def test_idx_offset_past_end(tmp_path):
    rec, ix = _write(tmp_path, {0: b"abc", 1: b"defg"})
    size = rec.stat().st_size
    ix.write_text(f"0\t0\n\n1\t{size + 4}\n")  # a blank line: the error still names the right line
    with pytest.raises(DataFormatError) as e:
        RecordIOReader(rec, ix)
    assert e.value.line == 3 and str(size + 4) in str(e.value) and "past the end" in str(e.value)
    assert str(ix) in str(e.value)


def test_truncated_record(tmp_path):
    rec, ix = _write(tmp_path, {0: b"abc", 1: b"0123456789"})
    raw = rec.read_bytes()
    assert len(raw) == 12 + 8 + 12  # record 1 at offset 12: header, 10 payload + 2 padding bytes
    rec.write_bytes(raw[:-5])
    reader = RecordIOReader(rec, ix)
    assert reader.read(0) == b"abc"
    with pytest.raises(DataFormatError) as e:
        reader.read(1)
    msg = str(e.value)
    assert e.value.record == 1 and e.value.offset == 12 + 8
    assert "expected 12 bytes" in msg and "only 7 available" in msg and str(rec) in msg
    rec.write_bytes(raw[:12 + 3])  # the header of record 1 itself is cut
    with pytest.raises(DataFormatError, match="needs 8 bytes, only 3 available"):
        RecordIOReader(rec, ix).read(1)
    with pytest.raises(DataFormatError, match="truncated record header"):
        len(RecordIOReader(rec))  # the no-idx header scan finds it too


def test_bad_magic(tmp_path):
    rec, ix = _write(tmp_path, {0: b"abc", 1: b"def"})
    raw = bytearray(rec.read_bytes())
    raw[12:16] = b"\x0a\x23\xd7\xcf"
    rec.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError) as e:
        RecordIOReader(rec, ix).read(1)
    assert e.value.offset == 12 and e.value.record == 1
    assert "0xCFD7230A" in str(e.value) and "0xCED7230A" in str(e.value)


@pytest.mark.parametrize("bad, lineno", [("0\t0\n1\tabc\n", 2), ("0\t0\n\n3 4 5\n", 3), ("0\t-8\n", 1)])
def test_malformed_idx_line(tmp_path, bad, lineno):
    rec, ix = _write(tmp_path, {0: b"abc"})
    ix.write_text(bad)
    with pytest.raises(DataFormatError) as e:
        read_idx(ix)
    assert e.value.line == lineno and f"{ix}:{lineno}" in str(e.value)


def test_duplicate_idx_key(tmp_path):
    rec, ix = _write(tmp_path, {0: b"abc", 1: b"d"})
    ix.write_text("1\t0\n0\t12\n1\t8\n")
    with pytest.raises(DataFormatError, match="duplicate key 1") as e:
        RecordIOReader(rec, ix)
    assert e.value.line == 3 and "first seen on line 1" in str(e.value)


def test_unexpected_cflag_sequence(tmp_path):
    def part(cflag, body):
        return struct.pack("<II", MAGIC, (cflag << 29) | len(body)) + body + b"\0" * ((-len(body)) % 4)

    rec = tmp_path / "x.rec"
    rec.write_bytes(part(2, b"mid!") + part(3, b"end"))
    with pytest.raises(DataFormatError, match="unexpected cflag 2 at the start"):
        RecordIOReader(rec).read_at(0)
    rec.write_bytes(part(1, b"abcd") + part(0, b"whole"))
    with pytest.raises(DataFormatError, match="unexpected cflag 0 after a part") as e:
        RecordIOReader(rec).read_at(0)
    assert e.value.offset == 12
    rec.write_bytes(part(1, b"abcd") + part(2, b"efgh") + part(3, b"ij"))
    assert RecordIOReader(rec).read_at(0) == b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ij"


def test_insightface_meta_layout(tmp_path):
    imgs = [(0, b"J0"), (0, b"J1"), (2, b"J2"), (2, b"J3"), (2, b"J4")]  # identity 1 has no images
    out = tmp_path / "ms1m"
    info = write_insightface_rec(out, iter(imgs), num_classes=3, image_size=(112, 96))
    assert info == {"num_images": 5, "num_classes": 3, "image_size": (112, 96)}
    assert (out / "property").read_text() == "3,112,96\n"
    reader = RecordIOReader(out / "train.rec", out / "train.idx")
    assert list(reader.keys) == list(range(9)) and reader.offset(0) == 0
    h0, p0 = unpack(reader.read(0))
    assert h0 == IRHeader(2, (6.0, 9.0), 0, 0) and p0 == b""  # [N+1, N+1+K]
    ranges = [unpack(reader.read(k))[0].label for k in (6, 7, 8)]
    assert ranges == [(1.0, 3.0), (3.0, 3.0), (3.0, 6.0)]
    assert [unpack(reader.read(k))[0] for k in (1, 3)] == [IRHeader(0, 0.0, 1, 0), IRHeader(0, 2.0, 3, 0)]

    ds = InsightFaceRec(out)
    assert ds.image_keys == range(1, 6) and len(ds) == 5
    assert [ds.label(k) for k in ds.image_keys] == [0, 0, 2, 2, 2]
    assert [ds.image_bytes(k) for k in ds.image_keys] == [b"J0", b"J1", b"J2", b"J3", b"J4"]
    assert ds.num_classes == 3 and ds.image_size == (112, 96)
    assert ds.identity_range(2) == (3, 6)
    (out / "property").unlink()
    assert InsightFaceRec(out / "train.rec").num_classes == 3  # from the meta record: 9 - 6


def test_im2rec_layout_without_meta(tmp_path):
    imgs = [(0, b"A"), (1, b"B"), (4, b"C")]
    out = tmp_path / "plain"
    write_insightface_rec(out, imgs, num_classes=6, meta=False)
    reader = RecordIOReader(out / "train.rec", out / "train.idx")
    assert list(reader.keys) == [0, 1, 2]
    assert unpack(reader.read(0))[0] == IRHeader(0, 0.0, 0, 0)
    ds = InsightFaceRec(out)
    assert list(ds.image_keys) == [0, 1, 2] and ds.num_classes == 6
    assert [ds.sample(k) for k in ds.image_keys] == [(0, b"A"), (1, b"B"), (4, b"C")]
    (out / "property").unlink()
    assert InsightFaceRec(out).num_classes == 5  # scan: max label + 1


def test_face2rec2_vector_labels_and_label_checks(tmp_path):
    out = tmp_path / "vec"
    out.mkdir()
    with RecordIOWriter(out / "train.rec", out / "train.idx") as w:
        w.write(0, pack(IRHeader(2, (3.0, 5.0), 0, 0)))
        w.write(1, pack(IRHeader(2, (1.0, 1.0), 1, 0), b"img1"))  # [label, aligned]
        w.write(2, pack(IRHeader(0, 1.5, 2, 0), b"img2"))
        w.write(3, pack(IRHeader(2, (1.0, 2.0), 3, 0)))
        w.write(4, pack(IRHeader(2, (2.0, 3.0), 4, 0)))
    ds = InsightFaceRec(out)
    assert ds.image_keys == range(1, 3) and ds.num_classes == 2
    assert ds.sample(1) == (1, b"img1")
    with pytest.raises(DataFormatError, match="label 1.5 is not a class id"):
        ds.label(2)
    (out / "property").write_text("1,112,112\n")
    with pytest.raises(DataFormatError, match="label 1 >= num_classes 1"):
        InsightFaceRec(out).label(1)
    (out / "property").write_text("a,b\n")
    with pytest.raises(DataFormatError, match="malformed property"):
        InsightFaceRec(out)


def test_meta_record_beyond_file(tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    with RecordIOWriter(out / "train.rec", out / "train.idx") as w:
        w.write(0, pack(IRHeader(2, (50.0, 52.0), 0, 0)))
        w.write(1, pack(IRHeader(0, 0.0, 1, 0), b"i"))
    with pytest.raises(DataFormatError, match="does not fit 2 records"):
        InsightFaceRec(out)


def test_writer_input_checks(tmp_path):
    with pytest.raises(ValueError, match="sorted by label"):
        write_insightface_rec(tmp_path / "a", [(1, b"x"), (0, b"y")], num_classes=2)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        write_insightface_rec(tmp_path / "b", [(2, b"x")], num_classes=2)
    assert not (tmp_path / "a" / "train.rec").exists() and not (tmp_path / "a" / "train.rec.tmp").exists()
