"""InsightFace ``.bin`` sets: Python 2 / 3 pickles, bytes or cv2.imencode arrays, restricted unpickling."""
from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DataFormatError
from datamodules.formats.verification_bin import UnsafePickleError, load_bin, load_bin_encoded, write_bin


def _image(seed: int, size=(20, 16)) -> np.ndarray:
    """A smooth random picture (JPEG keeps it close) of size H×W×3."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8))
    return np.asarray(small.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_write_and_load_bytes(tmp_path):
    images = [_image(i) for i in range(6)]
    encoded = [_encode(im, "PNG" if i % 2 else "JPEG") for i, im in enumerate(images)]
    path = tmp_path / "lfw.bin"
    write_bin(path, encoded, [True, False, True])
    assert not (tmp_path / "lfw.bin.tmp").exists()
    with open(path, "rb") as f:
        bins, same = pickle.load(f)
    assert bins == encoded and same == [True, False, True]  # plain lists of bytes / bool, no numpy inside
    out, issame = load_bin(path)
    assert issame.dtype == bool and issame.tolist() == [True, False, True]
    assert len(out) == 6 and all(o.shape == (20, 16, 3) and o.dtype == np.uint8 for o in out)
    for i in (1, 3, 5):  # PNG is lossless
        np.testing.assert_array_equal(out[i], images[i])
    for i in (0, 2, 4):
        np.testing.assert_array_equal(out[i], _pil_decode(encoded[i]))
        assert np.abs(out[i].astype(int) - images[i]).mean() < 8  # still the same picture after JPEG


def test_cv2_imencode_style_arrays_are_rgb(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[..., 2] = 255
    try:
        import cv2

        # cv2 works in BGR: encoding the BGR arrays gives files whose decoded RGB is red / blue
        arrays = [cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1] for im in (red, blue)]
        assert arrays[0].dtype == np.uint8 and arrays[0].ndim in (1, 2)  # N×1 in OpenCV 4, flat in OpenCV 5
    except ImportError:  # pragma: no cover - albumentations normally brings opencv-python-headless
        arrays = [np.frombuffer(_encode(im, "PNG"), np.uint8).reshape(-1, 1) for im in (red, blue)]
    pil_arrays = [np.frombuffer(_encode(im, "JPEG"), np.uint8).reshape(-1, 1) for im in (red, blue)]
    path = tmp_path / "cfp_fp.bin"
    with open(path, "wb") as f:
        pickle.dump((arrays + pil_arrays, np.array([True, False])), f, protocol=4)  # issame as a numpy bool array
    images, issame = load_bin(path)
    assert issame.tolist() == [True, False]
    np.testing.assert_array_equal(images[0], red)
    np.testing.assert_array_equal(images[1], blue)
    assert images[2][..., 0].min() > 240 and images[2][..., 2].max() < 15
    assert images[3][..., 2].min() > 240 and images[3][..., 0].max() < 15


def _py2_str(data: bytes) -> bytes:
    """Python 2 pickled a str with SHORT_BINSTRING / BINSTRING."""
    return (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<i", len(data))) + data


def test_python2_pickle_with_str_and_numpy(tmp_path):
    jpegs = [_encode(_image(i), "JPEG") for i in range(2)]
    png = _encode(_image(7), "PNG")
    # (bins, issame) as Python 2's cPickle.dump(..., HIGHEST_PROTOCOL) writes it: str elements, one of them a
    # numpy array built by numpy.core.multiarray._reconstruct with str dtype / data
    array_op = (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + _py2_str(b"b")
                + b"\x87R(K\x01" + b"J" + struct.pack("<i", len(png)) + b"K\x01\x86"
                + b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|")
                + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _py2_str(png) + b"tb")
    raw = (b"\x80\x02(" + _py2_str(jpegs[0]) + _py2_str(jpegs[1]) + array_op + _py2_str(png)
           + b"l]q\x00(\x88\x89e\x86.")
    # the reason for encoding='bytes': Python 3's default ASCII decoding of those str fails
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(raw)
    encoded, issame = load_bin_encoded(path)
    assert encoded == [jpegs[0], jpegs[1], png, png] and issame.tolist() == [True, False]
    images, _ = load_bin(path)
    np.testing.assert_array_equal(images[2], _image(7))
    np.testing.assert_array_equal(images[3], _image(7))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "lfw.bin"
    with open(path, "wb") as f:
        pickle.dump(([_Evil(marker), b"x"], [True]), f)
    with pytest.raises(UnsafePickleError) as e:
        load_bin(path)
    assert "posix.system" in str(e.value) and str(path) in str(e.value)
    assert isinstance(e.value, DataFormatError)
    assert not marker.exists()
    # the same pickle through the ordinary unpickler does run the command: the test is a real one
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_other_hostile_globals(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_bin(path)
    # _codecs.encode is allowed only for the latin1 codec that protocol-2 bytes use
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DataFormatError, match="not a readable pickle"):
        load_bin(path)


def test_python3_protocol2_bytes_use_codecs_encode(tmp_path):
    jpeg = _encode(_image(3), "JPEG")
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps(([jpeg, jpeg], [False]), protocol=2))
    assert b"_codecs" in path.read_bytes()
    encoded, issame = load_bin_encoded(path)
    assert encoded == [jpeg, jpeg] and issame.tolist() == [False]


def test_structure_errors(tmp_path):
    jpeg = _encode(_image(1), "JPEG")
    path = tmp_path / "bad.bin"
    write_bin(path, [jpeg, jpeg], [True])
    path.write_bytes(pickle.dumps(([jpeg, jpeg, jpeg], [True])))
    with pytest.raises(DataFormatError, match=r"3 images for 1 pairs.*expected 2 \* len\(issame_list\) = 2"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([jpeg, jpeg[: len(jpeg) // 2]], [True])))
    with pytest.raises(DataFormatError) as e:
        load_bin(path)
    assert e.value.record == 1 and "corrupt or truncated" in str(e.value)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataFormatError, match="2-tuple"):
        load_bin(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(DataFormatError, match="not a readable pickle"):
        load_bin(path)
    with pytest.raises(ValueError, match="need exactly 2 per pair"):
        write_bin(tmp_path / "w.bin", [jpeg], [True])
    with pytest.raises(DataFormatError, match="missing"):
        load_bin(tmp_path / "nope.bin")
