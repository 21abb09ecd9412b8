"""URL's augmentable variations (datamodules/variations.py) and the synthetic MS1M's ground-truth pose sidecar."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from datamodules.errors import DataFormatError
from datamodules.ms1m import POSE_HEADER, MS1MDataset
from datamodules.transforms import resize_tensor
from datamodules.variations import VARIATION_ORDER, VariationAugment, warp_yaw, yaw_homography

ALL = {"low_resolution": {"p": 0.5}, "occlusion": {"p": 0.5}, "pose": {"p": 0.5}}


def _faces(b: int = 12, seed: int = 0, size: int = 112) -> torch.Tensor:
    """Smooth random images (coarse noise upsampled): different everywhere from any flat colour."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def test_names_order_and_config_errors():
    assert VariationAugment(**ALL).names == VARIATION_ORDER == ("low_resolution", "occlusion", "pose")
    assert VariationAugment(pose={}, low_resolution={}).names == ("low_resolution", "pose")
    assert VariationAugment().names == () and list(VariationAugment(**ALL).state_dict()) == []
    with pytest.raises(ValueError, match="unknown option.*tresh"):
        VariationAugment(low_resolution={"tresh": 30})
    with pytest.raises(ValueError, match="max_area"):
        VariationAugment(occlusion={"min_area": 0.3, "max_area": 0.1})
    with pytest.raises(ValueError, match="source"):
        VariationAugment(pose={"source": "3d"})
    with pytest.raises(ValueError, match="edge-on"):
        VariationAugment(pose={"max_yaw_deg": 85, "focal": 1.0})


def test_p_zero_leaves_images_untouched_and_labels_zero():
    x = _faces()
    aug = VariationAugment(low_resolution={"p": 0.0}, occlusion={"p": 0.0}, pose={"p": 0.0})
    y, labels = aug(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, x)
    assert list(labels) == list(VARIATION_ORDER)
    assert all(v.dtype == torch.float32 and v.shape == (12,) and not v.any() for v in labels.values())


def test_deterministic_with_a_generator():
    x = _faces(16)
    aug = VariationAugment(**ALL)
    y1, l1 = aug(x, generator=torch.Generator().manual_seed(7))
    y2, l2 = aug(x, generator=torch.Generator().manual_seed(7))
    y3, l3 = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and all(torch.equal(l1[k], l2[k]) for k in l1)
    assert not torch.equal(y1, y3)
    assert not all(torch.equal(l1[k], l3[k]) for k in l1)
    torch.manual_seed(3)  # no generator: torch's global RNG, so a seed fixes it too
    y4, _ = aug(x)
    torch.manual_seed(3)
    y5, _ = aug(x)
    assert torch.equal(y4, y5)


def test_low_resolution_label_iff_side_below_threshold_and_the_side_is_real():
    x = _faces(32)
    aug = VariationAugment(low_resolution={"p": 0.7, "threshold": 40})
    y, labels, params = aug(x, generator=torch.Generator().manual_seed(2), return_params=True)
    side = params["low_resolution_side"]
    assert side.min() >= 7 and side.max() <= 112
    assert torch.equal(labels["low_resolution"], (side < 40).float())
    assert 0 < labels["low_resolution"].sum() < 32
    for i in range(32):
        s = int(side[i])
        if s == 112:
            assert torch.equal(y[i], x[i])  # untouched (or a no-op round trip)
        else:  # exactly RandomDegradation's area-down / bicubic-up round trip through an s×s image
            expected = resize_tensor(resize_tensor(x[i:i + 1], (s, s)), (112, 112))[0]
            torch.testing.assert_close(y[i], expected, atol=1e-5, rtol=0)
            assert not torch.equal(y[i], x[i])


def test_occlusion_changes_only_a_bounded_region_on_the_mouth():
    b, size = 24, 112
    x = _faces(b)
    aug = VariationAugment(occlusion={"p": 0.6, "min_area": 0.04, "max_area": 0.08, "regions": ["mouth"],
                                      "fills": ["flat"], "jitter": 0.02})
    y, labels, params = aug(x, generator=torch.Generator().manual_seed(4), return_params=True)
    changed = (y != x).any(dim=1)  # B×H×W
    occluded = labels["occlusion"].bool()
    assert torch.equal(changed.flatten(1).any(1), occluded) and 0 < occluded.sum() < b
    assert not changed[:, :60].any()  # the mouth (y ≈ 92) ± half the tallest box never reaches the eyes
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in occluded.nonzero().squeeze(1).tolist():
        cx, cy, w, h = params["occlusion_box"][i].tolist()
        assert abs(cx - 56.1) <= 0.02 * size + 1e-4 and abs(cy - 92.3) <= 0.02 * size + 1e-4
        inside = ((xs - cx).abs() <= w / 2 + 0.5) & ((ys - cy).abs() <= h / 2 + 0.5)
        assert not (changed[i] & ~inside).any()
        frac = float(changed[i].float().mean())
        assert 0.9 * 0.04 <= frac <= 0.08 * 1.15, frac  # the drawn area, up to the anti-aliased rim
    assert torch.isnan(params["occlusion_box"][~occluded]).all()


def test_occlusion_patch_comes_from_another_image_of_the_batch():
    x = _faces(6)
    aug = VariationAugment(occlusion={"p": 1.0, "fills": ["patch"], "shapes": ["rectangle"]})
    y, labels, params = aug(x, generator=torch.Generator().manual_seed(5), return_params=True)
    assert labels["occlusion"].all()
    mask = params["occlusion_mask"]
    for i in range(6):
        full = mask[i, 0] == 1
        assert full.sum() > 50
        matches = [j for j in range(6) if j != i and torch.equal(y[i][:, full], x[j][:, full])]
        assert len(matches) == 1


def test_pose_warp_zero_is_identity_and_turn_compresses_the_far_half():
    x = _faces(2)
    torch.testing.assert_close(warp_yaw(x, torch.zeros(2)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(yaw_homography(torch.zeros(1), 112, 112)[0], torch.eye(3))
    # two soft vertical stripes (Gaussian profile, sd 2 px: sub-pixel centroids) symmetric about the centre 55.5 ± 39.5
    cols = torch.arange(112, dtype=torch.float32)
    stripes = torch.exp(-(cols - 16) ** 2 / 8) + torch.exp(-(cols - 95) ** 2 / 8)
    img = stripes.expand(1, 3, 112, 112).clone()
    psi, focal = math.radians(40), 2.0
    out = warp_yaw(img, torch.tensor([psi]), focal=focal, padding_mode="zeros")[0, 0]
    profile = out[40:72].mean(0)  # rows near the centre line
    left = float((profile[:56] * cols[:56]).sum() / profile[:56].sum()) - 55.5
    right = float((profile[56:] * cols[56:]).sum() / profile[56:].sum()) - 55.5
    f = focal * 112
    expect = [x0 * math.cos(psi) / (1 - x0 * math.sin(psi) / f) for x0 in (-39.5, 39.5)]
    assert left == pytest.approx(expect[0], abs=0.3) and right == pytest.approx(expect[1], abs=0.3)
    assert -left / 39.5 < 0.72 and right / 39.5 > 0.84  # far (left) half squeezed to ~0.69, near half to ~0.86
    mirrored = warp_yaw(img, torch.tensor([-psi]), focal=focal, padding_mode="zeros")[0, 0]
    torch.testing.assert_close(mirrored, out.flip(-1), atol=1e-4, rtol=0)


def test_pose_warp_labels_threshold_the_drawn_yaw():
    x = _faces(40)
    aug = VariationAugment(pose={"p": 0.7, "max_yaw_deg": 50, "threshold_deg": 25})
    y, labels, params = aug(x, generator=torch.Generator().manual_seed(6), return_params=True)
    yaw = params["yaw"]
    assert yaw.abs().max() <= math.radians(50)
    assert torch.equal(labels["pose"], (yaw.abs() >= math.radians(25)).float())
    assert 0 < labels["pose"].sum() < 40
    untouched = yaw == 0
    assert untouched.any() and torch.equal(y[untouched], x[untouched]) and (y[~untouched] != x[~untouched]).any()


def test_occluder_follows_the_pose_warp():
    x = _faces(8)
    aug = VariationAugment(pose={"p": 1.0, "max_yaw_deg": 50}, occlusion={"p": 1.0, "regions": ["eyes"],
                                                                           "jitter": 0.0})
    _, _, params = aug(x, generator=torch.Generator().manual_seed(9), return_params=True)
    eyes = torch.tensor([[55.9132, 51.5988]])
    for i in range(8):
        m = yaw_homography(params["yaw"][i:i + 1], 112, 112)[0]
        p = m @ torch.tensor([eyes[0, 0], eyes[0, 1], 1.0])
        torch.testing.assert_close(params["occlusion_box"][i, :2], p[:2] / p[2], atol=1e-3, rtol=0)


def test_pose_from_label_thresholds_the_batch_yaw():
    x = _faces(5)
    aug = VariationAugment(pose={"source": "label", "threshold_deg": 15})
    yaw = torch.tensor([0.0, 0.25, -0.27, 0.3, -0.1])
    y, labels = aug(x, batch={"yaw": yaw})
    assert torch.equal(y, x)
    assert labels["pose"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]  # 15° = 0.2618 rad
    with pytest.raises(ValueError, match="yaw"):
        aug(x, batch={"image": x})


# ----------------------------------------------------------------------------------------------------------------
# The synthetic MS1M's pose sidecar
# ----------------------------------------------------------------------------------------------------------------

def _expected_ms1m_yaw(seed: int = 0) -> list[float]:
    """The yaw the synthetic writer drew for each MS1M training record (its own sampling, replayed)."""
    from datamodules import synthetic
    from datamodules.synthetic_faces import sample_identities, sample_image_params

    sc = synthetic.SCALES["tiny"]
    lo, hi = synthetic._id_ranges(sc)["ms1m"]
    people = sample_identities(hi - lo, seed, start=lo, race_probs=synthetic._MS1M_RACE,
                               age_probs=synthetic._CELEB_AGE, male_prob=0.55)
    counts = synthetic._per_identity_counts(synthetic._image_rng(seed, synthetic._S_MS1M, 0), len(people),
                                            sc.ms1m_images)
    return [sample_image_params(p, synthetic._image_rng(seed, synthetic._S_MS1M, p.gid, j), "ms1m").yaw
            for p, c in zip(people, counts) for j in range(c)]


def test_ms1m_items_carry_the_rendered_yaw(tiny_world: Path):
    sidecar = tiny_world / "ms1m" / "train_pose.tsv"
    assert sidecar.read_text().splitlines()[0] == POSE_HEADER
    ds = MS1MDataset(tiny_world / "ms1m")
    expected = _expected_ms1m_yaw()
    assert len(ds) == len(expected)
    got = [float(ds[i]["yaw"]) for i in range(len(ds))]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert max(abs(v) for v in got) <= 0.45 and np.std(got) > 0.1
    batch = default_collate([ds[i] for i in range(6)])
    assert batch["yaw"].dtype == torch.float32 and batch["yaw"].shape == (6,)
    _, labels = VariationAugment(pose={"source": "label", "threshold_deg": 15})(batch["image"], batch=batch)
    assert labels["pose"].tolist() == [float(abs(v) >= math.radians(15)) for v in expected[:6]]


def _copy_rec(world: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        shutil.copy(world / "ms1m" / name, dest / name)
    return dest


def test_pose_sidecar_absent_or_malformed(tiny_world: Path, tmp_path: Path):
    root = _copy_rec(tiny_world, tmp_path / "ms1m")
    ds = MS1MDataset(root)
    assert ds.pose is None and "yaw" not in ds[0]  # real releases: items unchanged
    n = len(ds)
    rows = [f"{i}\t{0.01 * i}\t0\t0" for i in range(n)]
    sidecar = root / "train_pose.tsv"
    sidecar.write_text(POSE_HEADER + "\n" + "\n".join(rows) + "\n")
    assert float(MS1MDataset(root)[3]["yaw"]) == pytest.approx(0.03)

    bad = list(rows)
    bad[1] = "1\t0.1\tzero\t0"  # file line 3
    sidecar.write_text(POSE_HEADER + "\n" + "\n".join(bad) + "\n")
    with pytest.raises(DataFormatError) as err:
        MS1MDataset(root)
    assert err.value.line == 3 and str(sidecar) in str(err.value) and "zero" in str(err.value)

    sidecar.write_text(POSE_HEADER + "\n" + "\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataFormatError, match=f"no row for index {n - 1}"):
        MS1MDataset(root)
    sidecar.write_text("index yaw pitch roll\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataFormatError) as err:
        MS1MDataset(root)
    assert err.value.line == 1
    sidecar.write_text(POSE_HEADER + "\n" + "\n".join(rows + [f"{n}\t0\t0\t0"]) + "\n")
    with pytest.raises(DataFormatError, match="out of range") as err:
        MS1MDataset(root)
    assert err.value.line == n + 2
