"""FairFace loader on hand-made CSV + image folders: vocabularies, 70+ alias, margins, balanced subset, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.errors import DataFormatError
from datamodules.fairface import (FAIRFACE_AGES, FAIRFACE_GENDERS, FAIRFACE_RACES, FairFaceDataModule,
                                  FairFaceDataset, read_fairface_csv)
from tests.fixtures_real_formats import FAIRFACE_TRAIN_ROWS, make_fairface, truncate_file


def test_vocabularies_exact_and_ordered():
    assert FAIRFACE_RACES == ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian",
                              "Middle Eastern")
    assert FAIRFACE_GENDERS == ("Male", "Female")
    assert FAIRFACE_AGES == ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")


@pytest.fixture
def ff(tmp_path):
    return tmp_path / "fairface", make_fairface(tmp_path / "fairface")


def test_labels_and_items(ff):
    root, truth = ff
    ds = FairFaceDataset(root, "train")
    assert len(ds) == 8
    assert ds.races.tolist() == [FAIRFACE_RACES.index(r[3]) for r in FAIRFACE_TRAIN_ROWS]
    assert ds.races.tolist() == [3, 0, 6, 2, 4, 1, 5, 0]
    assert ds.ages.tolist() == [6, 8, 8, 1, 0, 2, 3, 7]  # 'more than 70' and '70+' are both index 8
    assert ds.genders.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert ds.service_test.tolist() == [True, False, True, True, False, True, False, True]
    item = ds[2]
    assert item["image"].shape == (3, 40, 36) and item["size"].tolist() == [40, 36]
    assert int(item["race"]) == 6 and int(item["age"]) == 8 and int(item["gender"]) == 0
    assert item["service_test"] is True and item["index"] == 2
    # margin 0.25 image k has grey level 40 + 10·k
    assert abs(float(item["image"].mean()) * 255 - 60) < 2
    assert ds.label_counts("race").tolist() == [2, 1, 1, 1, 1, 1, 1]
    val = FairFaceDataset(root, "val")
    assert len(val) == 4 and val.ages.tolist() == [4, 5, 8, 3]


def test_margin_and_balanced_subset_and_resize(ff):
    root, _ = ff
    wide = FairFaceDataset(root, "train", margin=1.25)
    assert abs(float(wide[2]["image"].mean()) * 255 - 200) < 2
    bal = FairFaceDataset(root, "train", balanced_only=True)
    assert len(bal) == 5 and bal.service_test.all()
    assert bal.files == ["train/1.jpg", "train/3.jpg", "train/4.jpg", "train/6.jpg", "train/8.jpg"]
    small = FairFaceDataset(root, "val", image_size=16)[0]
    assert small["image"].shape == (3, 16, 16) and small["size"].tolist() == [40, 36]
    with pytest.raises(ValueError, match="margin"):
        FairFaceDataset(root, "train", margin=0.5)


def test_zip_extracted_into_root_is_found(tmp_path):
    make_fairface(tmp_path)
    (tmp_path / "fairface-img-margin025-trainval").rename(tmp_path / "elsewhere")
    for split in ("train", "val"):
        (tmp_path / "elsewhere" / split).rename(tmp_path / split)
    assert FairFaceDataset(tmp_path, "val").image_root == tmp_path


def test_datamodule(ff):
    root, _ = ff
    dm = FairFaceDataModule(str(root), batch_size=4, image_size=32, train_transform={"flip": 0.5})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["race"].dtype == torch.int64
    assert set(batch) == {"image", "race", "gender", "age", "service_test", "size", "index"}
    assert len(list(dm.val_dataloader())) == 1


# ---------------------------------------------------------------- bad input

def _rewrite(path, lines):
    path.write_text("\n".join(lines) + "\n")


def test_wrong_header(ff):
    root, truth = ff
    lines = truth["train_csv"].read_text().splitlines()
    _rewrite(truth["train_csv"], ["file,age,gender,race"] + [line.rsplit(",", 1)[0] for line in lines[1:]])
    with pytest.raises(DataFormatError, match=r"fairface_label_train.csv:1: wrong header") as exc:
        FairFaceDataset(root, "train")
    assert "file,age,gender,race,service_test" in str(exc.value)


@pytest.mark.parametrize("column,value,allowed", [
    (3, "Asian", "'Middle Eastern'"),
    (1, "70-79", "'more than 70'"),
    (2, "male", "'Female'"),
])
def test_unknown_label_names_line_and_allowed_values(ff, column, value, allowed):
    root, truth = ff
    lines = truth["train_csv"].read_text().splitlines()
    row = lines[4].split(",")
    row[column] = value
    lines[4] = ",".join(row)
    _rewrite(truth["train_csv"], lines)
    name = ("race", "age", "gender")[(3, 1, 2).index(column)]
    with pytest.raises(DataFormatError, match=rf"fairface_label_train.csv:5: unknown {name} '{value}'") as exc:
        FairFaceDataset(root, "train")
    assert exc.value.line == 5 and allowed in str(exc.value)


def test_bad_service_test_and_field_count(ff):
    root, truth = ff
    lines = truth["val_csv"].read_text().splitlines()
    _rewrite(truth["val_csv"], lines[:2] + [lines[2].replace("False", "maybe")] + lines[3:])
    with pytest.raises(DataFormatError, match=r"fairface_label_val.csv:3: bad service_test 'maybe'"):
        read_fairface_csv(truth["val_csv"])
    _rewrite(truth["val_csv"], lines[:3] + [lines[3] + ",extra"] + lines[4:])
    with pytest.raises(DataFormatError, match=r"fairface_label_val.csv:4: 6 fields"):
        read_fairface_csv(truth["val_csv"])


def test_missing_csv_and_missing_image_folder(ff):
    root, truth = ff
    import shutil

    shutil.rmtree(root / "fairface-img-margin125-trainval")
    with pytest.raises(DataFormatError, match=r"fairface-img-margin125-trainval: missing image folder for margin 1.25"):
        FairFaceDataset(root, "train", margin=1.25)
    truth["val_csv"].unlink()
    with pytest.raises(DataFormatError, match=r"fairface_label_val.csv: missing annotation file"):
        FairFaceDataset(root, "val")


def test_corrupt_missing_images_error_and_skip(ff):
    root, _ = ff
    img = root / "fairface-img-margin025-trainval" / "train"
    truncate_file(img / "3.jpg", 0.5)
    (img / "6.jpg").unlink()
    ds = FairFaceDataset(root, "train")
    with pytest.raises(DataFormatError, match=r"train/3.jpg: corrupt or truncated image"):
        ds[2]
    with pytest.raises(DataFormatError, match=r"train/6.jpg: missing image file"):
        ds[5]
    dm = FairFaceDataModule(str(root), batch_size=8, on_corrupt="skip", image_size=None)
    dm.setup("fit")
    batches = list(dm.loader(dm.train_set, train=False))
    assert len(batches) == 1 and sorted(batches[0]["index"].tolist()) == [0, 1, 3, 4, 6, 7]
    assert dm.train_set.corrupt_log.total == 2
    assert np.array_equal(batches[0]["race"].numpy(), dm.train_set.races[[0, 1, 3, 4, 6, 7]])
