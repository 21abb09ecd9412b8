"""QMUL-SurvFace loaders on a hand-made release folder: native sizes, .mat pairs / ids, both .mat locations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from datamodules.errors import DataFormatError
from datamodules.qmul_survface import (ResizeCollate, SurvFaceDataModule, SurvFaceIdentification, SurvFaceTrain,
                                       SurvFaceVerification, native_collate)
from tests.fixtures_real_formats import make_survface, truncate_file


@pytest.fixture
def sf(tmp_path):
    return tmp_path / "QMUL-SurvFace", make_survface(tmp_path / "QMUL-SurvFace")


def test_training_set_identities_and_native_sizes(sf):
    root, truth = sf
    ds = SurvFaceTrain(root)
    assert ds.pids == ["2", "7", "10"]  # numeric order, the empty folder 11 ignored
    assert ds.num_identities == 3 and len(ds) == 7
    assert ds.identities.tolist() == [0, 0, 0, 1, 1, 2, 2]
    expected = np.array([truth["sizes"][str(p.relative_to(root))] for p in ds.paths])
    sizes = ds.native_sizes()
    assert sizes.shape == (7, 2) and sizes.dtype == np.int64 and np.array_equal(sizes, expected)
    assert len({tuple(s) for s in sizes.tolist()}) > 3  # genuinely varied
    item = ds[4]
    assert item["image"].shape == (3, *expected[4]) and item["size"].tolist() == expected[4].tolist()
    assert int(item["identity"]) == 1 and item["distractor"] is False
    resized = SurvFaceTrain(root, image_size=24)[4]
    assert resized["image"].shape == (3, 24, 24) and resized["size"].tolist() == expected[4].tolist()


def test_verification_pairs_from_mat(sf):
    root, truth = sf
    ds = SurvFaceVerification(root)
    assert len(ds) == 5 and ds.issame.tolist() == [True, True, True, False, False]
    assert ds.pairs[0] == ("101_cam1_1.jpg", "101_cam1_2.jpg") and ds.pairs[4] == ("103_cam1_2.jpg", "102_cam1_1.jpg")
    item = ds[4]
    h, w = truth["sizes"]["Face_Verification_Test_Set/verification_images/103_cam1_2.jpg"]
    assert item["image1"].shape == (3, h, w) and item["size1"].tolist() == [h, w]
    assert item["issame"] is False


@pytest.mark.parametrize("location", ["Face_Identification_Test_Set", "Face_Identification_Evaluation"])
def test_identification_parts_from_either_mat_location(tmp_path, location):
    truth = make_survface(tmp_path / "sf", mat_location=location)
    ident = SurvFaceIdentification(tmp_path / "sf")
    g, m, u = ident["gallery"], ident["mated_probe"], ident["unmated_probe"]
    assert [p.name for p in g.paths] == truth["gallery"]
    assert g.identities.tolist() == [0, 0, 2] and m.identities.tolist() == [2, 0]  # 1-based uint16 → 0-based
    assert [p.name for p in u.paths] == sorted(truth["unmated"])
    assert u.identities.tolist() == [-1, -1, -1]
    assert u.distractor.tolist() == [False, False, True]
    item = u[2]
    assert item["distractor"] is True and int(item["identity"]) == -1
    assert item["size"].tolist() == list(truth["sizes"]["Face_Identification_Test_Set/unmated_probe/distractors_1.jpg"])


def test_native_collate_keeps_sizes_as_list(sf):
    root, _ = sf
    ds = SurvFaceTrain(root)
    batch = native_collate([ds[0], None, ds[3], ds[5]])
    assert isinstance(batch["image"], list) and len(batch["image"]) == 3
    assert [tuple(im.shape[1:]) for im in batch["image"]] == [tuple(s) for s in batch["size"].tolist()]
    assert batch["identity"].tolist() == [0, 1, 2] and batch["size"].shape == (3, 2)
    assert native_collate([None]) is None


def test_resize_collate(sf):
    root, _ = sf
    ds = SurvFaceVerification(root)
    batch = ResizeCollate(16)([ds[0], ds[3]])
    assert batch["image1"].shape == (2, 3, 16, 16) and batch["image2"].shape == (2, 3, 16, 16)
    assert batch["image1"].min() >= 0 and batch["image1"].max() <= 1
    assert batch["size1"].tolist() == [ds[0]["size1"].tolist(), ds[3]["size1"].tolist()]
    assert batch["issame"].tolist() == [True, False]


def test_datamodule_collate_choices(sf):
    root, _ = sf
    native = SurvFaceDataModule(str(root), batch_size=3)
    native.setup("fit")
    batch = next(iter(native.train_dataloader()))
    assert isinstance(batch["image"], list) and batch["size"].shape == (3, 2)
    assert np.array_equal(native.native_sizes(), native.train_set.native_sizes())
    resized = SurvFaceDataModule(str(root), batch_size=3, resize_to=20)
    resized.setup(None)
    b = next(iter(resized.train_dataloader()))
    assert b["image"].shape == (3, 3, 20, 20) and not (b["size"] == 20).all()
    vb = next(iter(resized.val_dataloader()))
    assert vb["image1"].shape == (3, 3, 20, 20)
    tests = resized.test_dataloader()
    assert [len(dl.dataset) for dl in tests] == [3, 2, 3]
    assert resized.native_sizes("unmated_probe").shape == (3, 2)
    fixed = SurvFaceDataModule(str(root), batch_size=2, image_size=12, train_transform={"flip": 0.5})
    fixed.setup("fit")
    assert next(iter(fixed.train_dataloader()))["image"].shape == (2, 3, 12, 12)


# ---------------------------------------------------------------- bad input

def test_missing_mat_in_both_locations(sf):
    root, truth = sf
    (truth["mat_dir"] / "mated_probe_img_ID_pairs.mat").unlink()
    with pytest.raises(DataFormatError, match="mated_probe_img_ID_pairs.mat: missing annotation file") as exc:
        SurvFaceIdentification(root)
    assert "Face_Identification_Evaluation" in str(exc.value)


def test_mat_missing_variable_and_garbage(sf):
    root, _ = sf
    ver = root / "Face_Verification_Test_Set"
    scipy.io.savemat(ver / "negative_pairs_names.mat", {"pairs": np.zeros((2, 2))})
    with pytest.raises(DataFormatError, match=r"negative_pairs_names.mat: missing variable 'negative_pairs_names'"):
        SurvFaceVerification(root)
    (ver / "negative_pairs_names.mat").write_bytes(b"this is not a mat file" * 10)
    with pytest.raises(DataFormatError, match=r"negative_pairs_names.mat: unreadable .mat file"):
        SurvFaceVerification(root)


def test_mat_wrong_shape_and_bad_cell(sf):
    root, _ = sf
    ver = root / "Face_Verification_Test_Set"
    cells = np.empty((2, 3), dtype=object)
    cells[:] = "a.jpg"
    scipy.io.savemat(ver / "positive_pairs_names.mat", {"positive_pairs_names": cells})
    with pytest.raises(DataFormatError, match=r"has shape \(2, 3\)"):
        SurvFaceVerification(root)
    cells = np.empty((2, 2), dtype=object)
    cells[:] = "a.jpg"
    cells[1, 1] = np.array([1.0, 2.0])
    scipy.io.savemat(ver / "positive_pairs_names.mat", {"positive_pairs_names": cells})
    with pytest.raises(DataFormatError, match=r"record positive_pairs_names\[1\]\[1\]: cell is not a file name"):
        SurvFaceVerification(root)


def test_mated_probe_identity_not_in_gallery(sf):
    root, truth = sf
    cell = np.empty((2, 1), dtype=object)
    cell[:, 0] = truth["mated"]
    scipy.io.savemat(truth["mat_dir"] / "mated_probe_img_ID_pairs.mat",
                     {"mated_probe_set": cell, "mated_probe_ids": np.array([[3], [9]], np.uint16)})
    with pytest.raises(DataFormatError, match=r"record mated_probe_ids\[1\]: mated probe identity 9"):
        SurvFaceIdentification(root)


def test_corrupt_images_error_and_skip(sf):
    root, _ = sf
    bad = root / "training_set" / "7" / "7_cam1_1.jpg"
    truncate_file(bad, 0.3)
    ds = SurvFaceTrain(root)
    with pytest.raises(DataFormatError, match="7_cam1_1.jpg: corrupt or truncated image"):
        ds[3]
    skip = SurvFaceTrain(root, on_corrupt="skip")
    kept = [skip[i] for i in range(len(skip))]
    assert sum(k is None for k in kept) == 1 and skip.corrupt_log.total == 1
    assert torch.equal(native_collate(kept)["index"], torch.tensor([0, 1, 2, 4, 5, 6]))
    (root / "Face_Verification_Test_Set" / "verification_images" / "102_cam1_1.jpg").unlink()
    ver = SurvFaceVerification(root, on_corrupt="skip")
    assert ver[4] is None and ver[0] is not None and ver.corrupt_log.total == 1
    with pytest.raises(DataFormatError, match="102_cam1_1.jpg: missing image file"):
        SurvFaceVerification(root)[1]


def test_missing_training_folder(tmp_path):
    with pytest.raises(DataFormatError, match="training_set: missing folder"):
        SurvFaceTrain(tmp_path)
