"""lrface upscale: photo decoding, thumbnails framed like the generator, atomic results and the command end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageOps

from lrface.align import ffhq_template
from lrface.losses.pulse import BicubicDownsample
from lrface.upscale import (CELEBA_ATTRIBUTES, RACE_NAMES, attribute_index, make_thumbnail, parse_attribute_targets,
                            race_index, read_photo, safe_name, to_rgb_uint8, to_uint8_image, write_result)

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "mtcnn"
needs_mtcnn = pytest.mark.skipif(not all((WEIGHTS / f).is_file() for f in ("pnet.pt", "rnet.pt", "onet.pt")),
                                 reason="MTCNN weights absent: run `lrface weights mtcnn`")
# test_mtcnn.py's measurement of skimage's astronaut (512×512): the five landmarks
ASTRONAUT_LANDMARKS = np.array([[203.7, 100.7], [247.0, 103.5], [224.2, 128.8], [202.1, 139.6], [244.5, 142.1]])


# -- names ---------------------------------------------------------------------------------------------------------


def test_names_match_the_datasets_and_parse():
    from datamodules.celeba import CELEBA_ATTRIBUTES as CELEBA
    from datamodules.fairface import FAIRFACE_RACES

    assert RACE_NAMES == FAIRFACE_RACES and CELEBA_ATTRIBUTES == CELEBA
    assert race_index("Black") == 1 and race_index("east_asian") == 3 and race_index("East Asian") == 3
    assert race_index("SOUTHEAST-ASIAN") == 4 and race_index("Middle_Eastern") == 6 and race_index("latino") == 2
    assert race_index(5) == 5 and race_index("0") == 0
    with pytest.raises(ValueError, match="unknown race 'Asian'"):
        race_index("Asian")
    assert parse_attribute_targets(["Smiling=1", "male=0", "Young=-1", "eyeglasses=true"]) == {
        31: 1.0, 20: 0.0, 39: 0.0, 15: 1.0}
    assert attribute_index("5_o_clock_shadow") == 0
    with pytest.raises(ValueError, match="Name=0|1"):
        parse_attribute_targets(["Smiling"])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        parse_attribute_targets(["Smiling=2"])
    with pytest.raises(ValueError, match="unknown CelebA attribute 'Smile'"):
        parse_attribute_targets(["Smile=1"])


# -- decoding ------------------------------------------------------------------------------------------------------


def test_to_rgb_uint8_channels_depths_and_alpha():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgb, "x"), rgb)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(gray, "x"), np.repeat(gray[..., None], 3, 2))
    assert np.array_equal(to_rgb_uint8(gray[..., None], "x"), np.repeat(gray[..., None], 3, 2))
    # RGBA over black: opaque keeps the colour, transparent is black, half is rgb·α rounded
    alpha = np.array([255, 0, 128, 64, 1, 200, 30], dtype=np.uint8)[None, :, None].repeat(5, 0)
    out = to_rgb_uint8(np.concatenate([rgb, alpha], 2), "x")
    assert np.array_equal(out[:, 0], rgb[:, 0]) and not out[:, 1].any()
    assert np.array_equal(out, np.rint(rgb * (alpha / 255.0)).astype(np.uint8))
    ga = np.stack([gray, alpha[..., 0]], 2)
    assert np.array_equal(to_rgb_uint8(ga, "x")[..., 1], np.rint(gray * (alpha[..., 0] / 255.0)).astype(np.uint8))
    # 16-bit: v / 257 rounded; full scale stays full scale
    g16 = (gray.astype(np.uint16) * 257 + rng.integers(0, 100, gray.shape).astype(np.uint16))
    assert np.array_equal(to_rgb_uint8(g16, "x")[..., 0], np.rint(g16 / 257.0).astype(np.uint8))
    rgba16 = np.concatenate([rgb.astype(np.uint16) * 257, np.full((5, 7, 1), 65535, np.uint16)], 2)
    assert np.array_equal(to_rgb_uint8(rgba16, "x"), rgb)
    assert np.array_equal(to_rgb_uint8(g16.astype(np.int32), "x"), to_rgb_uint8(g16, "x"))  # PIL's mode "I"
    assert np.array_equal(to_rgb_uint8(rgb / 255.0, "x"), rgb)
    assert to_rgb_uint8(np.ones((2, 2), bool), "x").min() == 255
    for bad, match in ((np.full((2, 2), 2.0), r"float samples in \[2, 2\]"), (np.full((2, 2), -1, np.int32), "16-bit"),
                       (np.zeros((2, 2, 5), np.uint8), "C in 1-4"), (np.full((2, 2), np.nan), "NaN")):
        with pytest.raises(ValueError, match=f"photo.png: .*{match}"):
            to_rgb_uint8(bad, "photo.png")


def _asymmetric(h: int = 6, w: int = 9) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.arange(w)[None] * 25
    a[..., 1] = np.arange(h)[:, None] * 40
    a[0, 0] = (255, 255, 255)
    return a


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_photo_applies_exif_orientation(tmp_path, orientation):
    path = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_asymmetric()).save(path, exif=exif)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im))
    assert np.array_equal(read_photo(path), want)


def test_read_photo_keeps_depth_and_alpha(tmp_path):
    rng = np.random.default_rng(1)
    g16 = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    assert read_photo(tmp_path / "g16.png").dtype == np.uint16
    assert np.array_equal(read_photo(tmp_path / "g16.png"), g16)
    rgb16 = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    assert np.array_equal(read_photo(tmp_path / "rgb16.png"), rgb16)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_photo(tmp_path / "rgba.png"), rgba)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_photo(tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_photo(tmp_path / "missing.png")


# -- thumbnails ----------------------------------------------------------------------------------------------------


def test_make_thumbnail_uses_small_inputs_as_is():
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    thumb, info = make_thumbnail(small, 16, ffhq_template(64), 64, mtcnn=object())  # never asked: too small
    assert np.array_equal(thumb, small) and info["detected"] is False
    wide = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    thumb, _ = make_thumbnail(wide, 12, ffhq_template(64), 64)
    assert np.array_equal(thumb, wide[:, 4:16])  # centre square, no resize needed
    thumb, _ = make_thumbnail(small, 8, ffhq_template(64), 64)
    assert np.array_equal(thumb, np.asarray(Image.fromarray(small).resize((8, 8), Image.Resampling.BICUBIC)))


class _Fixed:
    """A detector returning known landmarks (the astronaut's, scaled)."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def detect(self, image):
        lm = ASTRONAUT_LANDMARKS * self.scale
        box = np.array([[178.0, 59.8, 266.4, 172.9]]) * self.scale
        return box.astype(np.float32), np.array([0.99], np.float32), lm[None].astype(np.float32)


@pytest.fixture(scope="module")
def astronaut():
    return pytest.importorskip("skimage.data").astronaut().copy()  # writable


def test_make_thumbnail_is_the_bicubic_downscale_of_the_aligned_canvas(astronaut):
    tpl = ffhq_template(128)
    canvas, info = make_thumbnail(astronaut, 128, tpl, 128, mtcnn=_Fixed())  # factor 1: the HR canvas itself
    assert info["detected"] and info["hr_size"] == 128 and info["prob"] == pytest.approx(0.99)
    thumb, info32 = make_thumbnail(astronaut, 32, tpl, 128, mtcnn=_Fixed())
    want = BicubicDownsample(4)(torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255)
    want = (want[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert thumb.shape == (32, 32, 3) and np.abs(thumb.astype(float) - want).max() <= 1.0
    # the landmarks land on the template up to the similarity fit's residual (the astronaut's own proportions: her
    # nose sits 4.5 px lower than FFHQ's): centroids coincide (least squares), the eyes within 1 px
    got = np.asarray(info32["landmarks_canvas"])
    eye = float(tpl[1, 0] - tpl[0, 0])
    assert np.allclose(got.mean(0), tpl.numpy().mean(0), atol=1e-4)
    assert np.abs(got[:2] - tpl.numpy()[:2]).max() < 1.0 and np.abs(got - tpl.numpy()).max() < 0.15 * eye
    # a 2× larger photo of the same face (the shrink-then-warp path) gives nearly the same thumbnail
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    thumb_big, info_big = make_thumbnail(big, 32, tpl, 128, mtcnn=_Fixed(2.0))
    assert np.allclose(np.asarray(info_big["landmarks_canvas"]), got, atol=0.05)
    assert np.abs(thumb_big.astype(float) - thumb).mean() < 2.0


@needs_mtcnn
def test_make_thumbnail_on_a_real_photo_puts_the_face_on_the_template(astronaut):
    from lrface.nets.mtcnn import MTCNN

    torch.set_num_threads(1)
    det = MTCNN(WEIGHTS)
    tpl = ffhq_template(256)
    thumb, info = make_thumbnail(astronaut, 64, tpl, 256, mtcnn=det)
    assert info["detected"] and info["hr_size"] == 256
    assert np.abs(np.asarray(info["landmarks"]) - ASTRONAUT_LANDMARKS).max() < 1.0
    # re-detect on a 4× bicubic upscale of the thumbnail: the landmarks are where the warp put them, within 1 px of
    # the thumbnail grid, and near the template
    hr = np.array(Image.fromarray(thumb).resize((256, 256), Image.Resampling.BICUBIC))
    _, probs, again = det.detect(hr)
    assert len(probs)
    found = again[int(np.argmax(probs))]
    assert np.abs(found - np.asarray(info["landmarks_canvas"])).max() < 4.0
    assert np.abs(found - tpl.numpy()).max() < 10.0  # 0.16 of the 64 px eye distance: fit residual + detector


# -- results -------------------------------------------------------------------------------------------------------


def test_write_result_round_trips(tmp_path):
    image = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(0))
    meta = {"b": torch.tensor(0.25), "a": np.float32(1.5), "n": np.int64(3), "nan": float("nan"), "t": (1, 2),
            "nested": {"x": torch.tensor([1.0, 2.0]), "p": Path("/a/b")}, "ok": True}
    png, js = write_result(tmp_path / "out", "../evil/a b", image, meta)
    assert png == tmp_path / "out" / "evil_a_b.png" and js == tmp_path / "out" / "evil_a_b.json"
    assert np.array_equal(np.asarray(Image.open(png)), to_uint8_image(image))
    assert np.array_equal(to_uint8_image(image), (image.permute(1, 2, 0) * 255).round().byte().numpy())
    text = js.read_text()
    assert json.loads(text) == {"a": 1.5, "b": 0.25, "n": 3, "nan": None, "t": [1, 2], "ok": True,
                                "nested": {"p": "/a/b", "x": [1.0, 2.0]}}
    assert text.index('"a"') < text.index('"b"') < text.index('"n"')
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evil_a_b.json", "evil_a_b.png"]
    assert safe_name("..") == "image"


def test_write_result_is_atomic(tmp_path, monkeypatch):
    import lrface.io

    write_result(tmp_path, "x", torch.zeros(3, 4, 4), {"v": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(lrface.io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_result(tmp_path, "x", torch.ones(3, 4, 4), {"v": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files intact, no temporaries


# -- the command ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory, astronaut):
    """A tiny rosinality-format StyleGAN2 (32 px), a tiny F with C_R and C_A in a run directory, and inputs."""
    from lrface.nets.iresnet import get_model
    from lrface.nets.stylegan2 import StyleGAN2Generator

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("upscale")
    torch.manual_seed(0)
    g = StyleGAN2Generator(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8}).eval()
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.mean_latent(500)[0]}, root / "g.pt")
    arch = {"name": "r18", "widths": [8, 16, 16, 32], "num_features": 32}
    backbone = get_model(**arch)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    state.update({"race_classifier.weight": torch.randn(7, 32, generator=gen), "race_classifier.bias": torch.zeros(7),
                  "attribute_classifier.weight": torch.randn(40, 32, generator=gen),
                  "attribute_classifier.bias": torch.zeros(40)})
    (root / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 1}, root / "run" / "checkpoints" / "last.ckpt")
    (root / "run" / "config.yaml").write_text(yaml.safe_dump(
        {"module": {"backbone": {"_target_": "lrface.nets.iresnet.get_model", **arch, "input_size": 112}}}))
    with torch.no_grad():
        samples = (g.synthesis(g.mapping(torch.randn(2, 32, generator=torch.Generator().manual_seed(5)))) + 1) / 2
    samples = [to_uint8_image(s) for s in samples]
    Image.fromarray(samples[0]).save(root / "ref.png")  # an FFHQ-framed sample: the reference
    thumb = BicubicDownsample(4)(torch.from_numpy(samples[1]).permute(2, 0, 1)[None].float() / 255)
    thumb = to_uint8_image(thumb[0])
    Image.fromarray(thumb).save(root / "thumb.png")
    rgba = np.concatenate([thumb, np.full((8, 8, 1), 128, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(root / "half.png")
    Image.fromarray(astronaut).save(root / "astronaut.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def _run(setup: Path, out: Path, *inputs: str, extra: tuple[str, ...] = ()) -> int:
    from lrface.cli import main

    argv = ["upscale", *[str(setup / i) for i in inputs], "--generator", str(setup / "g.pt"), "--size", "8",
            "--steps", "5", "--fit-samples", "2000", "--device", "cpu", "--out", str(out),
            "--mtcnn-weights", str(WEIGHTS), *extra]
    return main(argv)


def _features(setup: Path) -> tuple[str, ...]:
    return ("--features", str(setup / "run" / "checkpoints" / "last.ckpt"))


@needs_mtcnn
def test_upscale_command_without_constraints(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(setup, out, "thumb.png", "half.png", "astronaut.png", "broken.png") == 1  # one input unreadable
    printed = capsys.readouterr()
    assert "broken.png" in printed.err and "thumb" in printed.out
    for stem in ("thumb", "half", "astronaut"):
        assert Image.open(out / f"{stem}.png").size == (32, 32)
        assert Image.open(out / f"{stem}_lr.png").size == (8, 8)
    meta = {s: json.loads((out / f"{s}.json").read_text()) for s in ("thumb", "half", "astronaut")}
    assert [meta[s]["seed"] for s in ("thumb", "half", "astronaut")] == [0, 1, 2]
    for m in meta.values():
        assert m["accepted"] is True and m["active_constraints"] == [] and 0 <= m["steps"] <= 5
        assert set(m["losses"]) == {"L2", "GEOCROSS", "TOTAL"} and m["resolution"] == 32 and m["size"] == 8
        assert m["downscale_loss"] == pytest.approx(m["losses"]["L2"], rel=1e-6) or m["losses"]["L2"] == m["eps"]
    # a thumbnail-sized input is the search target unchanged; RGBA is composited over black
    thumb = np.array(Image.open(setup / "thumb.png"))
    assert np.array_equal(np.asarray(Image.open(out / "thumb_lr.png")), thumb)
    assert np.array_equal(np.asarray(Image.open(out / "half_lr.png")), np.rint(thumb * (128 / 255)).astype(np.uint8))
    assert meta["thumb"]["thumbnail"]["detected"] is False and meta["astronaut"]["thumbnail"]["detected"] is True
    assert np.abs(np.asarray(meta["astronaut"]["thumbnail"]["landmarks"]) - ASTRONAUT_LANDMARKS).max() < 1.0
    # the stored downscale loss is the MSE between the written HR image's bicubic downscale and the thumbnail
    hr = torch.from_numpy(np.array(Image.open(out / "thumb.png"))).permute(2, 0, 1)[None].float() / 255
    mse = (BicubicDownsample(4)(hr) - torch.from_numpy(thumb).permute(2, 0, 1)[None].float() / 255).pow(2).mean()
    assert float(mse) == pytest.approx(meta["thumb"]["written_downscale_loss"], abs=1e-4)
    assert meta["thumb"]["downscale_loss"] <= 0.25  # the search's own value (unclamped image)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_inputs"] == 4 and summary["accepted"] == 3 and summary["rejected"] == 0
    assert len(summary["errors"]) == 1 and summary["errors"][0]["photo"].endswith("broken.png")
    # per-input seeds: the same input at the same index gives the same image again
    assert _run(setup, tmp_path / "again", "thumb.png") == 0
    assert (tmp_path / "again" / "thumb.png").read_bytes() == (out / "thumb.png").read_bytes()


def test_upscale_command_with_constraints(setup, tmp_path):
    out = tmp_path / "out"
    extra = (*_features(setup), "--reference", str(setup / "ref.png"), "--race", "East_Asian", "--attr", "Smiling=1",
             "--attr", "Male=0", "--lambda-att", "0")
    assert _run(setup, out, "thumb.png", extra=extra) == 0
    m = json.loads((out / "thumb.json").read_text())
    assert m["active_constraints"] == ["L_sim", "L_race"]  # λ3 = 0: measured, not imposed
    assert {"L_sim", "L_race"} <= set(m["losses"]) and "L_att" not in m["losses"]
    measures = m["measures"]
    assert set(measures) == {"L_sim", "L_race", "L_att"}
    assert m["accepted"] == (not any(measures[k] > 0.1 for k in m["active_constraints"]))
    # the measures are the paper's formulas of the reported angle and probabilities
    assert measures["L_sim"] == pytest.approx(1 / (1 + math.exp(-(m["angle_to_reference"] - 65.0) / 10.0)), abs=1e-5)
    assert m["race"] == "East Asian" and measures["L_race"] == pytest.approx(1 - m["race_prob"], abs=1e-6)
    assert m["race_prob"] == pytest.approx(m["race_probs"]["East Asian"]) and sum(m["race_probs"].values()) == \
        pytest.approx(1.0, abs=1e-5)
    probs = m["attribute_probs"]
    assert m["attributes"] == {"Smiling": 1.0, "Male": 0.0}
    assert measures["L_att"] == pytest.approx(((1 - probs["Smiling"]) + probs["Male"]) / 2, abs=1e-6)
    assert m["reference_info"]["detected"] is False  # a 32 px sample: taken as FFHQ-aligned
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accepted"] + summary["rejected"] == 1 and summary["rejected"] == int(not m["accepted"])
    # bad flag combinations fail with a message, not a traceback
    assert _run(setup, tmp_path / "x", "thumb.png", extra=("--race", "Black")) == 2
    assert _run(setup, tmp_path / "x", "thumb.png", extra=(*_features(setup), "--race", "Martian")) == 2


def test_identity_constraint_moves_the_result_towards_the_reference(setup, tmp_path):
    angles = {}
    for lam in ("0", "100"):
        extra = (*_features(setup), "--reference", str(setup / "ref.png"), "--lambda-sim", lam, "--alpha-thr", "20",
                 "--steps", "30")
        assert _run(setup, tmp_path / lam, "thumb.png", extra=extra) == 0
        m = json.loads((tmp_path / lam / "thumb.json").read_text())
        assert m["seed"] == 0
        angles[lam] = m["angle_to_reference"]
    print("angle to the reference (deg):", angles)
    assert angles["100"] < 0.5 * angles["0"], angles
