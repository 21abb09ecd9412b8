"""MS1M datasets / DataModule over a tiny InsightFace folder, corrupt-record policy, and the image-folder packer."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.errors import DataFormatError, skip_collate
from datamodules.formats.recordio import InsightFaceRec, write_insightface_rec
from datamodules.formats.verification_bin import write_bin
from datamodules.ms1m import MS1MDataModule, MS1MDataset, VerificationPairs
from datamodules.pack import main as pack_main
from datamodules.pack import pack_image_folder

K, PER_ID, H, W = 4, 3, 24, 20


def _picture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture()
def world(tmp_path):
    """K identities × PER_ID JPEGs of H×W, plus lfw.bin (3 pairs) and cfp_fp.bin (2 pairs)."""
    root = tmp_path / "ms1m"
    samples = [(label, _jpeg(_picture(10 * label + j))) for label in range(K) for j in range(PER_ID)]
    write_insightface_rec(root, samples, num_classes=K, image_size=(H, W))
    write_bin(root / "lfw.bin", [_jpeg(_picture(100 + i)) for i in range(6)], [True, False, True])
    write_bin(root / "cfp_fp.bin", [_jpeg(_picture(200 + i, 30, 30)) for i in range(4)], [False, True])
    return root, samples


def test_dataset_counts_labels_and_pixels(world):
    root, samples = world
    ds = MS1MDataset(root)
    assert len(ds) == K * PER_ID and ds.num_classes == K
    assert [ds[i]["identity"] for i in range(len(ds))] == [label for label, _ in samples]
    item = ds[4]
    assert set(item) == {"image", "identity", "size", "index"} and item["index"] == 4
    assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.float32
    assert item["size"].tolist() == [H, W] and item["size"].dtype == torch.int64
    expected = torch.from_numpy(_decode(samples[4][1])).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(item["image"], expected)

    flipped = MS1MDataset(root, transform=lambda im: im[:, ::-1], image_size=16)
    item = flipped[4]
    assert item["image"].shape == (3, 16, 16) and item["size"].tolist() == [H, W]  # size stays the native one
    resized = np.asarray(Image.fromarray(_decode(samples[4][1])).resize((16, 16), Image.Resampling.BICUBIC))
    torch.testing.assert_close(item["image"], torch.from_numpy(resized[:, ::-1].copy()).permute(2, 0, 1) / 255)


def test_on_corrupt_skip_counts_bad_jpeg(tmp_path):
    root = tmp_path / "bad"
    good = _jpeg(_picture(1))
    samples = [(0, good), (0, good[: len(good) // 3]), (1, good), (1, good)]
    write_insightface_rec(root, samples, num_classes=2, image_size=(H, W))
    with pytest.raises(DataFormatError) as e:
        MS1MDataset(root)[1]
    assert e.value.record == 2 and "train.rec" in str(e.value)  # image key = index + 1 under the meta layout
    ds = MS1MDataset(root, on_corrupt="skip")
    assert ds[1] is None and ds.corrupt_log.total == 1
    batches = list(DataLoader(ds, batch_size=4, collate_fn=skip_collate))
    assert len(batches) == 1 and batches[0]["index"].tolist() == [0, 2, 3]
    assert batches[0]["identity"].tolist() == [0, 1, 1] and ds.corrupt_log.total == 2
    with pytest.raises(ValueError, match="on_corrupt"):
        MS1MDataset(root, on_corrupt="ignore")


def test_verification_pairs(world):
    root, _ = world
    eager = VerificationPairs(root / "lfw.bin")
    lazy = VerificationPairs(root / "lfw.bin", lazy=True)
    assert len(eager) == len(lazy) == 3 and eager.name == "lfw"
    for i in range(3):
        a, b = eager[i], lazy[i]
        assert set(a) == {"image1", "image2", "issame", "index"} and a["index"] == i
        assert a["issame"] == [True, False, True][i] == b["issame"]
        torch.testing.assert_close(a["image1"], b["image1"])
        torch.testing.assert_close(a["image2"], b["image2"])
    expected = torch.from_numpy(_decode(_jpeg(_picture(103)))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(eager[1]["image2"], expected)
    assert VerificationPairs(root / "cfp_fp.bin", image_size=16)[0]["image1"].shape == (3, 16, 16)


def test_datamodule_val_sets_and_num_classes(world):
    root, _ = world
    dm = MS1MDataModule(root, image_size=16, batch_size=2)
    assert dm.num_classes == K  # before setup, from property
    assert dm.val_set_names == ["lfw", "cfp_fp"]  # default list: only the sets that exist, in order
    loaders = dm.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [3, 2]
    batch = next(iter(loaders[1]))
    assert batch["image1"].shape == (2, 3, 16, 16) and batch["issame"].tolist() == [False, True]
    with pytest.raises(FileNotFoundError, match=r"agedb_30.*present: \['cfp_fp', 'lfw'\]"):
        MS1MDataModule(root, val_sets=["lfw", "agedb_30"]).setup("fit")
    assert MS1MDataModule(root, val_sets=["cfp_fp"]).val_set_names == ["cfp_fp"]
    assert MS1MDataModule(root, val_sets=[]).val_dataloader() == []
    (root / "property").unlink()
    assert MS1MDataModule(root).num_classes == K  # from meta record 0


class _PidProbe(MS1MDataset):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["pid"] = os.getpid()
        item["handle_pid"] = self.rec.reader.handle_pid
        return item


def test_train_loader_two_workers_own_handles(world):
    root, samples = world
    dm = MS1MDataModule(root, image_size=16, batch_size=4, num_workers=2)
    dm.setup("fit")
    assert dm.num_classes == K and len(dm.train_set) == K * PER_ID
    dm.train_set = _PidProbe(root, image_size=16)
    dm.train_set[0]  # the parent opens its handle first; workers inherit it through fork
    parent_handle = dm.train_set.rec.reader.handle_pid
    assert parent_handle == os.getpid()
    seen, pids = [], set()
    loader = dm.train_dataloader()
    for batch in loader:
        assert batch["image"].shape == (4, 3, 16, 16)
        assert torch.equal(batch["pid"], batch["handle_pid"])  # every worker reads through a handle it opened
        pids.update(batch["pid"].tolist())
        seen += list(zip(batch["index"].tolist(), batch["identity"].tolist()))
    assert len(pids) == 2 and os.getpid() not in pids
    assert sorted(seen) == [(i, label) for i, (label, _) in enumerate(samples)]
    assert dm.train_set.rec.reader.handle_pid == os.getpid()
    del loader


def _save(path, image, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def test_pack_image_folder(tmp_path, capsys):
    src = tmp_path / "src"
    _save(src / "bob" / "a.jpg", _picture(1, 32, 32), "JPEG")
    _save(src / "bob" / "b.png", _picture(2, 32, 32), "PNG")
    _save(src / "alice" / "c.jpg", _picture(3, 40, 40), "JPEG")
    (src / "alice" / "notes.txt").write_text("not an image")
    (src / "zed").mkdir()
    summary = pack_image_folder(src, tmp_path / "out")
    assert summary["identities"] == ["alice", "bob", "zed"] and summary["num_classes"] == 3
    assert (summary["num_images"], summary["copied"], summary["reencoded"]) == (3, 2, 1)
    assert summary["empty_identities"] == ["zed"] and summary["ignored_files"] == [str(src / "alice" / "notes.txt")]
    assert summary["native_sizes"] == {"32x32": 2, "40x40": 1} and summary["image_size"] == (40, 40)
    assert (tmp_path / "out" / "property").read_text() == "3,40,40\n"
    rec = InsightFaceRec(tmp_path / "out")
    assert [rec.label(k) for k in rec.image_keys] == [0, 1, 1]
    assert rec.image_bytes(1) == (src / "alice" / "c.jpg").read_bytes()  # JPEG stored byte for byte
    assert rec.image_bytes(2) == (src / "bob" / "a.jpg").read_bytes()
    png_as_jpeg = rec.image_bytes(3)
    assert png_as_jpeg[:3] == b"\xff\xd8\xff"
    assert np.abs(_decode(png_as_jpeg).astype(int) - _picture(2, 32, 32)).mean() < 4
    assert rec.identity_range(2) == (4, 4)

    assert pack_main([str(src), str(tmp_path / "small"), "--size", "24", "--quality", "90"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["reencoded"] == 3 and printed["copied"] == 0 and printed["identities"] == 3
    ds = MS1MDataset(tmp_path / "small")
    assert [ds[i]["size"].tolist() for i in range(3)] == [[24, 24]] * 3
    assert (tmp_path / "small" / "property").read_text() == "3,24,24\n"


def test_pack_rejects_corrupt_image(tmp_path):
    src = tmp_path / "src"
    _save(src / "a" / "x.jpg", _picture(1), "JPEG")
    data = (src / "a" / "x.jpg").read_bytes()
    (src / "a" / "y.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="y.jpg"):
        pack_image_folder(src, tmp_path / "out")
    assert not (tmp_path / "out" / "train.rec").exists()  # nothing half-written is left in place
