"""CelebA loader on hand-made release-format folders: both layouts, parsing quirks, alignment, pairs, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.celeba import (CELEBA_ATTRIBUTES, CelebADataModule, CelebADataset, CelebAPairs,
                                find_celeba_files)
from datamodules.errors import DataFormatError
from datamodules.transforms import build_train_augment
from lrface.align import arcface_template_np
from tests.fixtures_real_formats import CELEBA_ATTR_HEADER, LANDMARK_COLOURS, make_celeba, truncate_file


def test_attribute_names_official_order():
    assert len(CELEBA_ATTRIBUTES) == 40 == len(set(CELEBA_ATTRIBUTES))
    assert CELEBA_ATTRIBUTES[0] == "5_o_Clock_Shadow" and CELEBA_ATTRIBUTES[20] == "Male"
    assert CELEBA_ATTRIBUTES[31] == "Smiling" and CELEBA_ATTRIBUTES[39] == "Young"
    assert CELEBA_ATTRIBUTES[1] == "Arched_Eyebrows" and CELEBA_ATTRIBUTES[23] == "Narrow_Eyes"
    assert CELEBA_ATTRIBUTES[36] == "Wearing_Lipstick"
    assert CELEBA_ATTRIBUTES == tuple(CELEBA_ATTR_HEADER.split())


@pytest.fixture
def flat(tmp_path):
    return tmp_path / "celeba", make_celeba(tmp_path / "celeba", layout="flat")


def test_flat_layout_parse_and_items(flat):
    root, truth = flat
    ds = CelebADataset(root, split="train")
    rows = np.flatnonzero(truth["partition"] == 0)
    assert len(ds) == len(rows) == 6
    assert ds.names == [truth["names"][r] for r in rows]
    for i in (0, len(ds) - 1):
        item = ds[i]
        r = rows[i]
        assert item["image"].shape == (3, 218, 178) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["identity"].dtype == torch.int64 and int(item["identity"]) == truth["identity"][r] - 1
        assert torch.equal(item["attributes"], torch.tensor((truth["attributes"][r] + 1) // 2, dtype=torch.float32))
        assert np.allclose(item["landmarks"].numpy(), truth["landmarks"][r])
        assert item["size"].tolist() == [218, 178] and item["index"] == i
        # pixels are the written image (JPEG quality 98)
        written = torch.from_numpy(truth["images"][r]).permute(2, 0, 1).float() / 255
        assert (item["image"] - written).abs().mean() < 0.01
    assert len(CelebADataset(root, "valid")) == 3 and len(CelebADataset(root, "test")) == 3
    assert len(CelebADataset(root, "all")) == 12
    assert ds.num_identities == 4


def test_original_layout_and_torchvision_base_folder_give_the_same_items(tmp_path, flat):
    root, _ = flat
    make_celeba(tmp_path / "orig", layout="original")
    assert find_celeba_files(tmp_path / "orig").layout == "original"
    assert find_celeba_files(tmp_path).layout == "flat"  # <root>/celeba/ as torchvision lays it out
    a, b, c = (CelebADataset(r, "test") for r in (root, tmp_path / "orig", tmp_path))
    for i in range(len(a)):
        ia, ib, ic = a[i], b[i], c[i]
        assert torch.equal(ia["image"], ib["image"]) and torch.equal(ia["image"], ic["image"])
        assert torch.equal(ia["attributes"], ib["attributes"]) and int(ia["identity"]) == int(ib["identity"])


def _colour_at(image: torch.Tensor, x: float, y: float) -> np.ndarray:
    return image[:, int(round(y)), int(round(x))].numpy() * 255


def test_align_to_arcface_crop_moves_image_and_landmarks_together(flat):
    root, truth = flat
    ds = CelebADataset(root, "all", align=True)
    tpl = arcface_template_np(112)
    for i in (0, 5):
        item = ds[i]
        assert item["image"].shape == (3, 112, 112) and item["size"].tolist() == [218, 178]
        pts = item["landmarks"].numpy()
        # fixture landmarks are an exact similarity of the template up to integer rounding
        assert np.abs(pts - tpl).max() < 1.5
        for (x, y), colour in zip(pts, LANDMARK_COLOURS):
            assert np.abs(_colour_at(item["image"], x, y) - colour).max() < 60, (i, colour)
    assert CelebADataset(root, "all", align=True, image_size=64)[0]["image"].shape == (3, 64, 64)


def test_resize_scales_landmarks(flat):
    root, truth = flat
    item = CelebADataset(root, "train", image_size=(109, 89))[1]
    assert item["image"].shape == (3, 109, 89) and item["size"].tolist() == [218, 178]
    expected = (truth["landmarks"][1] + 0.5) * 0.5 - 0.5
    assert np.allclose(item["landmarks"].numpy(), expected, atol=1e-4)
    for (x, y), colour in zip(item["landmarks"].numpy(), LANDMARK_COLOURS):
        assert np.abs(_colour_at(item["image"], x, y) - colour).max() < 70


def test_flip_augmentation_keeps_left_eye_left(flat):
    root, truth = flat
    t = build_train_augment(flip=1.0, color=None, blur=None, jpeg=None, coarse_dropout=None)
    item = CelebADataset(root, "train", transform=t)[0]
    pts = item["landmarks"].numpy()
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]
    assert np.allclose(pts[0], [177 - truth["landmarks"][0][1][0], truth["landmarks"][0][1][1]])
    # the point now called "left eye" sits on what was painted as the right eye (green)
    assert np.abs(_colour_at(item["image"], *pts[0]) - LANDMARK_COLOURS[1]).max() < 60


def test_attribute_frequencies(flat):
    root, truth = flat
    ds = CelebADataset(root, "train")
    freq = ds.attribute_frequencies()
    expected = ((truth["attributes"][truth["partition"] == 0] + 1) // 2).mean(0)
    assert freq.shape == (40,) and np.allclose(freq.numpy(), expected)


def test_pairs_same_and_diff(flat):
    root, _ = flat
    ds = CelebADataset(root, "all")
    same = CelebAPairs(ds, 10, same=True, seed=3)
    diff = CelebAPairs(ds, 10, same=False, seed=3)
    assert len(same) == len(diff) == 10
    for a, b in same.pairs:
        assert a != b and ds.identities[a] == ds.identities[b]
    for a, b in diff.pairs:
        assert ds.identities[a] != ds.identities[b]
    assert len({tuple(sorted(p)) for p in same.pairs.tolist()}) == 10  # unique while the split allows
    assert np.array_equal(same.pairs, CelebAPairs(ds, 10, same=True, seed=3).pairs)
    assert not np.array_equal(same.pairs, CelebAPairs(ds, 10, same=True, seed=4).pairs)
    item = same[0]
    assert item["issame"] is True and int(item["identity1"]) == int(item["identity2"])
    assert item["image1"].shape == (3, 218, 178)
    assert diff[0]["issame"] is False and int(diff[0]["identity1"]) != int(diff[0]["identity2"])


def test_datamodule(flat):
    root, _ = flat
    dm = CelebADataModule(str(root), batch_size=4, align=True, val_pairs=3, train_transform={"flip": 0.5})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 112, 112) and batch["attributes"].shape == (4, 40)
    assert batch["identity"].dtype == torch.int64 and batch["landmarks"].shape == (4, 5, 2)
    val = next(iter(dm.val_dataloader()))
    assert val["issame"].tolist() == [True, True, True, False]
    assert dm.num_identities == 4 and dm.attribute_frequencies().shape == (40,)


# ---------------------------------------------------------------- bad input

def test_missing_annotation_file(flat):
    root, truth = flat
    truth["identity_file"].unlink()
    with pytest.raises(DataFormatError, match="identity_CelebA.txt: missing annotation file"):
        CelebADataset(root)


def test_missing_image_folder(tmp_path):
    truth = make_celeba(tmp_path / "c", layout="original")
    for f in truth["img_dir"].iterdir():
        f.unlink()
    truth["img_dir"].rmdir()
    with pytest.raises(DataFormatError, match="img_align_celeba: missing image folder"):
        CelebADataset(tmp_path / "c")


def test_wrong_attribute_header(flat):
    root, truth = flat
    lines = truth["attr_file"].read_text().splitlines()
    names = lines[1].split()
    names[20], names[31] = names[31], names[20]  # Male <-> Smiling
    lines[1] = " ".join(names)
    truth["attr_file"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"list_attr_celeba.txt:2: wrong header: column 20 is 'Smiling'"):
        CelebADataset(root)


def test_count_line_mismatch(flat):
    root, truth = flat
    text = truth["landmarks_file"].read_text().replace("12\n", "13\n", 1)
    truth["landmarks_file"].write_text(text)
    with pytest.raises(DataFormatError, match=r"list_landmarks_align_celeba.txt:1: the count line says 13 rows"):
        CelebADataset(root)


def test_bad_attribute_value_names_the_line(flat):
    root, truth = flat
    lines = truth["attr_file"].read_text().splitlines()
    lines[6] = lines[6][:-2] + " 0"  # data row of image 5 (line 7)
    truth["attr_file"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"list_attr_celeba.txt:7: bad value") as exc:
        CelebADataset(root)
    assert exc.value.line == 7


def test_wrong_column_count(flat):
    root, truth = flat
    lines = truth["identity_file"].read_text().splitlines()
    lines[3] += " 7"
    truth["identity_file"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"identity_CelebA.txt:4: 3 columns"):
        CelebADataset(root)


def test_name_mismatch_names_both_files(flat):
    root, truth = flat
    lines = truth["identity_file"].read_text().splitlines()
    lines[4] = lines[4].replace("000005.jpg", "000050.jpg")
    truth["identity_file"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as exc:
        CelebADataset(root)
    msg = str(exc.value)
    assert "identity_CelebA.txt:5" in msg and "list_eval_partition.txt line 5" in msg and "000050.jpg" in msg


def test_row_count_mismatch_between_files(flat):
    root, truth = flat
    lines = truth["partition_file"].read_text().splitlines()
    truth["partition_file"].write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataFormatError, match=r"more rows than .*list_eval_partition.txt \(from image '000012.jpg'\)"):
        CelebADataset(root)


def test_bbox_file_is_never_read(flat):
    root, _ = flat
    (root / "list_bbox_celeba.txt").write_text("garbage that no parser could accept\n")
    assert len(CelebADataset(root, "all")) == 12


def test_corrupt_and_missing_images_error_or_skip(flat):
    root, truth = flat
    truncate_file(truth["img_dir"] / "000002.jpg", 0.4)
    (truth["img_dir"] / "000004.jpg").unlink()
    (truth["img_dir"] / "000005.jpg").write_bytes(b"not a jpeg at all")
    ds = CelebADataset(root, "train")
    with pytest.raises(DataFormatError, match=r"000002.jpg: corrupt or truncated image"):
        ds[1]
    with pytest.raises(DataFormatError, match=r"000004.jpg: missing image file"):
        ds[3]
    with pytest.raises(DataFormatError, match=r"000005.jpg: corrupt or truncated image"):
        ds[4]
    skip = CelebADataset(root, "train", on_corrupt="skip")
    dm = CelebADataModule(str(root), batch_size=6, on_corrupt="skip")
    batch = dm.loader(skip, train=False).__iter__().__next__()
    assert batch["index"].tolist() == [0, 2, 5]
    assert skip.corrupt_log.total == 3
    pairs = CelebAPairs(skip, 6, same=True, seed=0)
    kept = [pairs[i] for i in range(len(pairs))]
    bad = {1, 3, 4}
    assert all((p is None) == bool({a, b} & bad) for p, (a, b) in zip(kept, pairs.pairs.tolist()))


def test_non_numeric_value_names_the_line(flat):
    root, truth = flat
    lines = truth["landmarks_file"].read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split()[3], "abc", 1)
    truth["landmarks_file"].write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"list_landmarks_align_celeba.txt:6: non-numeric value 'abc'"):
        CelebADataset(root)


def test_crlf_blank_lines_and_tabs_are_tolerated(flat):
    root, truth = flat
    for key in ("attr_file", "landmarks_file", "identity_file", "partition_file"):
        text = truth[key].read_text().replace(" ", "\t", 3)
        truth[key].write_bytes((text + "\n\n").replace("\n", "\r\n").encode())
    ds = CelebADataset(root, "all")
    assert len(ds) == 12 and int(ds[11]["identity"]) == truth["identity"][11] - 1
    assert np.allclose(ds.landmarks, truth["landmarks"])
