"""The synthetic face world: real layouts, determinism, world management, and that it is a fair stand-in
(identity needs resolution; race and sex are clear at full resolution and ambiguous in 16 px thumbnails;
labels describe what was drawn)."""
from __future__ import annotations

import csv
import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from datamodules import synthetic
from datamodules.synthetic import (
    DATASETS,
    SCALES,
    _id_ranges,
    _plan_pairs,
    ensure_world,
    generate_world,
    main,
    world_is_complete,
)
from datamodules.synthetic_faces import (
    AGE_GROUPS,
    ATTR,
    ATTRIBUTE_NAMES,
    CELEBA_TEMPLATE,
    RACES,
    ImageParams,
    attributes,
    layout_for,
    render_face,
    sample_identities,
    sample_identity,
    sample_image_params,
)

TINY = SCALES["tiny"]
NO_DETECTOR_NOISE = ((0.0, 0.0),) * 5


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    """Box-downscale to ``width`` px wide (a thumbnail), then bicubic back to the original size."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((width, max(1, round(width * h / w))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


# ------------------------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------------------------

def test_celeba_layout(tiny_world):
    root = tiny_world / "celeba"
    attr = _read(root / "list_attr_celeba.txt")
    n = int(attr[0])
    assert attr[1].split() == list(ATTRIBUTE_NAMES)
    assert len(attr) == n + 2 and n >= TINY.celeba_ids * TINY.celeba_images[0]
    names = [f"{k:06d}.jpg" for k in range(1, n + 1)]
    values = np.array([[int(v) for v in row.split()[1:]] for row in attr[2:]])
    assert [row.split()[0] for row in attr[2:]] == names
    assert values.shape == (n, 40) and set(np.unique(values)) == {-1, 1}
    assert any("  1" in row for row in attr[2:])  # the release's irregular padding: " 1" after a separator
    ident = np.array([int(r.split()[1]) for r in _read(root / "identity_CelebA.txt")])
    assert ident.min() == 1 and ident.max() == TINY.celeba_ids and len(np.unique(ident)) == TINY.celeba_ids
    part = np.array([int(r.split()[1]) for r in _read(root / "list_eval_partition.txt")])
    assert list(part) == sorted(part) and set(part) == {0, 1, 2}  # contiguous runs, like the release
    by_part = [set(ident[part == p]) for p in range(3)]
    assert not (by_part[0] & by_part[1] or by_part[0] & by_part[2] or by_part[1] & by_part[2])  # identity-disjoint
    lm_lines = _read(root / "list_landmarks_align_celeba.txt")
    assert int(lm_lines[0]) == n and len(lm_lines[1].split()) == 10
    lm = np.array([[int(v) for v in r.split()[1:]] for r in lm_lines[2:]]).reshape(n, 5, 2)
    assert np.abs(lm.mean(0) - np.array(CELEBA_TEMPLATE)).max() < 6  # aligned: near the CelebA mean positions
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 2, 1] < lm[:, 3, 1]).all()
    bbox = _read(root / "list_bbox_celeba.txt")
    assert bbox[1].split() == ["image_id", "x_1", "y_1", "width", "height"]
    boxes = np.array([[int(v) for v in r.split()[1:]] for r in bbox[2:]])
    outside = (boxes[:, 0] + boxes[:, 2] > 178) | (boxes[:, 1] + boxes[:, 3] > 218)
    assert outside.mean() > 0.9  # in-the-wild boxes: they do not fit the aligned crop
    for k in (0, n - 1):
        with Image.open(root / "img_align_celeba" / names[k]) as im:
            assert im.size == (178, 218) and im.format == "JPEG"
    # the eye landmarks sit on the drawn irises: much darker than the sclera beside them, for every eye
    contrast = []
    for k in range(n):
        img = np.asarray(Image.open(root / "img_align_celeba" / names[k]).convert("L"), np.float32)
        r = int(0.22 * (lm[k, 1, 0] - lm[k, 0, 0]))
        for x, y in lm[k, :2]:
            contrast.append(img[y - 1:y + 2, x - r:x + r + 1].max() - img[y - 1:y + 2, x - 1:x + 2].min())
    assert min(contrast) > 40


def test_fairface_layout(tiny_world):
    root = tiny_world / "fairface"
    for split, n in (("train", TINY.fairface_train), ("val", TINY.fairface_val)):
        with open(root / f"fairface_label_{split}.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["file", "age", "gender", "race", "service_test"]
        rows = rows[1:]
        assert [r[0] for r in rows] == [f"{split}/{k}.jpg" for k in range(1, n + 1)]
        assert {r[1] for r in rows} <= set(AGE_GROUPS) and {r[2] for r in rows} <= {"Male", "Female"}
        assert {r[3] for r in rows} <= set(RACES) and {r[4] for r in rows} <= {"True", "False"}
        chosen = [r for r in rows if r[4] == "True"]
        for age in {r[1] for r in chosen}:  # service_test: balanced over race × gender within each age group
            cells = [sum(1 for r in chosen if r[1] == age and r[2] == g and r[3] == race)
                     for race in RACES for g in ("Male", "Female")]
            assert len(set(cells)) == 1 and cells[0] > 0
        tight = np.asarray(Image.open(root / "fairface-img-margin025-trainval" / rows[0][0]).convert("RGB"))
        loose = np.asarray(Image.open(root / "fairface-img-margin125-trainval" / rows[0][0]).convert("RGB"))
        assert tight.shape == loose.shape == (224, 224, 3)
        assert not np.array_equal(tight, loose)
    with open(root / "fairface_label_train.csv", newline="") as fh:
        train = list(csv.reader(fh))[1:]
    assert sum(r[4] == "True" for r in train) > 0 and len({r[3] for r in train}) == 7


def test_ms1m_layout(tiny_world):
    from datamodules.formats.recordio import InsightFaceRec, read_property
    from datamodules.formats.verification_bin import load_bin

    root = tiny_world / "ms1m"
    rec = InsightFaceRec(root)
    assert rec.num_classes == TINY.ms1m_ids and read_property(root / "property") == (TINY.ms1m_ids, 112, 112)
    labels = [rec.label(k) for k in range(1, len(rec) + 1)]
    assert labels == sorted(labels) and set(labels) == set(range(TINY.ms1m_ids))
    for name in ("lfw", "cfp_fp", "agedb_30"):
        images, issame = load_bin(root / f"{name}.bin")
        assert len(images) == 2 * TINY.bin_pairs and images[0].shape == (112, 112, 3)
        folds = issame.reshape(10, -1)  # 10 folds, each same-person pairs then different-person pairs
        half = folds.shape[1] // 2
        assert folds[:, :half].all() and not folds[:, half:].any()
    info = json.loads((tiny_world / "WORLD.json").read_text())
    ranges = sorted(tuple(v) for v in info["identity_ranges"].values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))  # one pool, disjoint ranges per dataset


def test_bin_protocols_pose_and_age():
    ranges = _id_ranges(TINY)
    people = sample_identities(TINY.bin_ids, 0, start=ranges["cfp_fp"][0])
    pairs, issame = _plan_pairs("cfp_fp", people, 20, 0, 1)
    assert all(abs(a.image.yaw) < 0.2 and abs(b.image.yaw) > 0.4 for a, b in pairs)  # frontal vs turned
    people = sample_identities(TINY.bin_ids, 0, start=ranges["agedb_30"][0], age_probs=synthetic._AGEDB_AGE)
    pairs, issame = _plan_pairs("agedb_30", people, 20, 0, 2)
    gaps = [abs(a.image.age_delta - b.image.age_delta) for (a, b), s in zip(pairs, issame) if s]
    assert min(gaps) > 25  # AgeDB-30: the same person about 30 years apart
    gids = {t.identity.gid for pair in pairs for t in pair}
    assert gids <= set(range(*ranges["agedb_30"])) and not gids & set(range(*ranges["ms1m"]))


def test_qmul_layout(tiny_world):
    root = tiny_world / "qmul_survface"
    train_pids = sorted(int(p.name) for p in (root / "training_set").iterdir())
    assert len(train_pids) == TINY.qmul_train_ids
    sizes = []
    for pid in train_pids:
        for f in (root / "training_set" / str(pid)).iterdir():
            assert f.name.startswith(f"{pid}_cam") and f.suffix == ".jpg"
            with Image.open(f) as im:
                sizes.append(im.size)
    sizes = np.array(sizes)
    assert sizes.min() >= 10 and sizes.max() <= 48 and len({tuple(s) for s in sizes}) > 3
    ident = root / "Face_Identification_Test_Set"
    g = scipy.io.loadmat(str(ident / "gallery_img_ID_pairs.mat"))
    mp = scipy.io.loadmat(str(ident / "mated_probe_img_ID_pairs.mat"))
    assert g["gallery_ids"].dtype == np.uint16 and g["gallery_ids"].shape == (len(g["gallery_set"]), 1)
    gallery_names = [g["gallery_set"].reshape(-1)[i][0] for i in range(len(g["gallery_set"]))]
    assert all(n.startswith(f"{pid}_") for n, pid in zip(gallery_names, g["gallery_ids"].ravel()))
    assert set(mp["mated_probe_ids"].ravel()) <= set(g["gallery_ids"].ravel())
    unmated = [p.name for p in (ident / "unmated_probe").iterdir()]
    distractors = [n for n in unmated if n.startswith("distractors_")]
    assert len(distractors) == TINY.qmul_distractors
    unmated_pids = {int(n.split("_")[0]) for n in unmated if n not in distractors}
    test_pids = unmated_pids | set(g["gallery_ids"].ravel().tolist())
    assert not unmated_pids & set(g["gallery_ids"].ravel().tolist())  # enrolled and unmated people are disjoint
    assert not test_pids & set(train_pids) and len(test_pids) == TINY.qmul_test_ids
    verif = root / "Face_Verification_Test_Set"
    pos = scipy.io.loadmat(str(verif / "positive_pairs_names.mat"))["positive_pairs_names"]
    neg = scipy.io.loadmat(str(verif / "negative_pairs_names.mat"))["negative_pairs_names"]
    assert pos.shape == neg.shape == (TINY.qmul_pairs, 2)
    for i in range(len(pos)):
        a, b = pos[i][0][0], pos[i][1][0]
        assert a != b and a.split("_")[0] == b.split("_")[0]
        c, d = neg[i][0][0], neg[i][1][0]
        assert c.split("_")[0] != d.split("_")[0]
    # verification images are byte-identical copies of identification test images
    copies = {p.name: p.read_bytes() for p in (verif / "verification_images").iterdir()}
    originals = {p.name: p.read_bytes() for part in ("gallery", "mated_probe", "unmated_probe")
                 for p in (ident / part).iterdir()}
    assert copies and all(originals[k] == v for k, v in copies.items())
    assert "training_set" in (root / "readme.txt").read_text()
    # surveillance captures: darker and flatter than the CelebA portraits
    q = np.concatenate([np.asarray(Image.open(p).convert("L"), np.float32).ravel()
                        for p in sorted((root / "training_set").rglob("*.jpg"))])
    c = np.concatenate([np.asarray(Image.open(p).convert("L"), np.float32).ravel()
                        for p in sorted((tiny_world / "celeba" / "img_align_celeba").glob("*.jpg"))[:20]])
    assert q.mean() < c.mean() - 15 and q.std() < c.std()


# ------------------------------------------------------------------------------------------------------------------
# Determinism and world management
# ------------------------------------------------------------------------------------------------------------------

SAMPLED_FILES = ("celeba/list_attr_celeba.txt", "celeba/list_landmarks_align_celeba.txt",
                 "celeba/img_align_celeba/000001.jpg", "fairface/fairface_label_train.csv",
                 "fairface/fairface-img-margin125-trainval/val/3.jpg", "ms1m/train.rec", "ms1m/train.idx",
                 "ms1m/agedb_30.bin", "qmul_survface/Face_Verification_Test_Set/positive_pairs_names.mat",
                 "qmul_survface/training_set/1/" + "{first}")


def _sampled(root: Path) -> dict[str, bytes]:
    first = sorted((root / "qmul_survface/training_set/1").iterdir())[0].name
    return {f: (root / f.format(first=first)).read_bytes() for f in SAMPLED_FILES}


def test_same_seed_same_bytes_any_worker_count(tiny_world, tmp_path):
    # the session world was written with 2 workers; one worker must give the same bytes
    generate_world(tmp_path / "w1", "tiny", seed=0, workers=1)
    assert _sampled(tmp_path / "w1") == _sampled(tiny_world)
    info = json.loads((tmp_path / "w1" / "WORLD.json").read_text())
    assert info == json.loads((tiny_world / "WORLD.json").read_text())
    assert info["scale"] == "tiny" and info["seed"] == 0 and info["datasets"] == list(DATASETS)
    other = generate_world(tmp_path / "s1", "tiny", seed=1, workers=2, datasets=("celeba",))
    assert other["counts"]["celeba"]["identities"] == TINY.celeba_ids
    for f in ("list_attr_celeba.txt", "img_align_celeba/000001.jpg"):
        assert (tmp_path / "s1" / "celeba" / f).read_bytes() != (tiny_world / "celeba" / f).read_bytes()


def test_ensure_world_generates_once_and_repairs(tmp_path, monkeypatch):
    root = tmp_path / "world"
    calls = []
    real = synthetic.generate_world

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_world", counting)
    # two "ranks" at once: the lock lets one generate, the other waits and finds WORLD.json
    threads = [threading.Thread(target=ensure_world, args=(root, "tiny", 0),
                                kwargs=dict(workers=1, datasets=("celeba",))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and world_is_complete(root, "tiny", 0, ("celeba",))
    assert not world_is_complete(root, "tiny", 1, ("celeba",)) and not world_is_complete(root, "tiny", 0)
    stamp = (root / "celeba" / "list_attr_celeba.txt").read_bytes()
    ensure_world(root, "tiny", 0, workers=1, datasets=("celeba",))
    assert len(calls) == 1  # complete: nothing to do
    # a half-written world (no WORLD.json, a stray image) is regenerated from scratch
    (root / "WORLD.json").unlink()
    (root / "celeba" / "img_align_celeba" / "999999.jpg").write_bytes(b"stale")
    ensure_world(root, "tiny", 0, workers=1, datasets=("celeba",))
    assert len(calls) == 2 and (root / "celeba" / "list_attr_celeba.txt").read_bytes() == stamp
    assert not (root / "celeba" / "img_align_celeba" / "999999.jpg").exists()


def test_never_replaces_foreign_data(tmp_path):
    real = tmp_path / "real" / "celeba"
    real.mkdir(parents=True)
    (real / "list_attr_celeba.txt").write_text("202599\n")
    with pytest.raises(FileExistsError, match="not written by the synthetic world generator"):
        generate_world(tmp_path / "real", "tiny", workers=1, datasets=("celeba",))
    assert (real / "list_attr_celeba.txt").read_text() == "202599\n"


def test_cli(tmp_path, capsys):
    args = ["--root", str(tmp_path / "w"), "--scale", "tiny", "--workers", "1", "--datasets", "celeba"]
    assert main(args) == 0 and "wrote tiny world" in capsys.readouterr().out
    assert main(args) == 0 and "already present" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--scale", "enormous"])


# ------------------------------------------------------------------------------------------------------------------
# A fair stand-in
# ------------------------------------------------------------------------------------------------------------------

def test_identity_recognisable_at_112_px_not_at_8_px():
    """Pixel-space nearest neighbour over 40 people (one gallery image each, four probes). Pose is held frontal
    because a pixel comparison cannot handle turning heads; lighting, expression, hairstyle, accessories,
    background and noise still vary."""
    k, m = 40, 5
    people = sample_identities(k, 7, race_probs=synthetic._MS1M_RACE, age_probs=synthetic._CELEB_AGE)
    images = np.stack([[render_face(p, sample_image_params(p, np.random.default_rng([7, p.gid, j]), "ms1m",
                                                           yaw=0.0, pitch=0.0, roll=0.0, det_noise=NO_DETECTOR_NOISE),
                                    112, "arcface") for j in range(m)] for p in people])

    def accuracy(x):
        f = x[:, :, 24:104, 16:96].reshape(k * m, -1, 3).astype(np.float32)
        f = ((f - f.mean(1, keepdims=True)) / (f.std(1, keepdims=True) + 1e-3)).reshape(k, m, -1)
        f /= np.linalg.norm(f, axis=-1, keepdims=True)
        scores = f[:, 1:].reshape(k * (m - 1), -1) @ f[:, 0].T
        return float((scores.argmax(1) == np.repeat(np.arange(k), m - 1)).mean())

    full = accuracy(images)
    tiny = accuracy(np.stack([[_thumbnail(im, 8) for im in row] for row in images]))
    assert full > 0.5  # chance: 1/40
    assert tiny < 0.6 * full


def _component_features(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Gradient-orientation histograms (4 px cells) and coarse colour of patches centred on the landmarks: eyes,
    nose, mouth, brows, jaw, hair (component-based face description)."""
    iod = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    eyes, mouth = (landmarks[0] + landmarks[1]) / 2, (landmarks[3] + landmarks[4]) / 2
    regions = [(landmarks[0], 0.8, 0.5), (landmarks[1], 0.8, 0.5), (landmarks[2] - [0, 0.05 * iod], 0.8, 0.6),
               (mouth + [0, 0.05 * iod], 1.1, 0.6), (eyes - [0, 0.35 * iod], 1.6, 0.4),
               (mouth + [0, 0.45 * iod], 1.4, 0.5), (eyes - [0, 1.45 * iod], 1.6, 0.5)]
    pil = Image.fromarray(image)
    out = []
    for (cx, cy), w, h in regions:
        box = (int(cx - w * iod / 2), int(cy - h * iod / 2), int(cx + w * iod / 2), int(cy + h * iod / 2))
        g = np.asarray(pil.crop(box).resize((32, 20), Image.BILINEAR), np.float32)
        gx, gy = np.zeros_like(g), np.zeros_like(g)
        gx[:, 1:-1], gy[1:-1] = g[:, 2:] - g[:, :-2], g[2:] - g[:-2]
        ch = (gx ** 2 + gy ** 2).argmax(2)[..., None]
        gx, gy = np.take_along_axis(gx, ch, 2)[..., 0], np.take_along_axis(gy, ch, 2)[..., 0]
        bins = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * 8).astype(int), 7)
        cell = (np.arange(20)[:, None] // 4) * 8 + np.arange(32)[None] // 4
        hist = np.sqrt(np.bincount((cell * 8 + bins).ravel(), np.hypot(gx, gy).ravel(), 40 * 8))
        out += [hist / (np.linalg.norm(hist) + 1e-3) * 10, g.reshape(5, 4, 4, 8, 3).mean((1, 3)).ravel() / 255]
    return np.concatenate(out)


def _cv_ridge_accuracy(x: np.ndarray, y: np.ndarray, folds: int = 5, lam: float = 1000.0) -> float:
    """k-fold accuracy of a ridge classifier on one-hot targets (dual form: fewer samples than features)."""
    correct = 0
    for f in range(folds):
        test = np.arange(len(y)) % folds == f
        mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-2
        z = (x - mu) / sd
        alpha = np.linalg.solve(z[~test] @ z[~test].T + lam * np.eye(int((~test).sum())), np.eye(y.max() + 1)[y[~test]])
        correct += int(((z[test] @ (z[~test].T @ alpha)).argmax(1) == y[test]).sum())
    return correct / len(y)


def test_race_and_sex_clear_at_full_resolution_ambiguous_in_16_px_thumbnails():
    """700 one-off people (100 per race), one CelebA-framed photograph each; 5-fold accuracy of a ridge
    classifier on component features, at full resolution and on 16 px wide thumbnails (IOD ≈ 3.5 px)."""
    people = [sample_identity(5, 100_000 + g, race=g % 7, age_probs=synthetic._FAIRFACE_AGE) for g in range(700)]
    shots = [render_face(p, sample_image_params(p, np.random.default_rng([5, p.gid]), "fairface"), None, "celeba",
                         return_landmarks=True) for p in people]
    race = np.array([p.race for p in people])
    male = np.array([int(p.gender == 0) for p in people])
    full = np.stack([_component_features(im, lm) for im, lm in shots])
    thumb = np.stack([_component_features(_thumbnail(im, 16), lm) for im, lm in shots])
    race_full, race_thumb = _cv_ridge_accuracy(full, race), _cv_ridge_accuracy(thumb, race)
    male_full, male_thumb = _cv_ridge_accuracy(full, male), _cv_ridge_accuracy(thumb, male)
    assert race_full > 0.45 and male_full > 0.85  # chance: 1/7 and ~1/2
    assert race_thumb < race_full - 0.06 and male_thumb < male_full - 0.06


def _region_change(a: np.ndarray, b: np.ndarray, centre, half: int = 10) -> float:
    """Fraction of pixels in the window around ``centre`` that visibly changed (any channel by more than 8)."""
    x, y = int(round(centre[0])), int(round(centre[1]))
    window = np.s_[max(0, y - half):y + half, max(0, x - half):x + half]
    return float((np.abs(a[window].astype(np.int16) - b[window]).max(-1) > 8).mean())


def test_attribute_labels_describe_the_rendering():
    people = sample_identities(10, 11, age_probs=synthetic._CELEB_AGE)
    changes = {"Smiling": [], "Wearing_Lipstick": [], "Eyeglasses": []}
    redder = []
    for p in people:
        base = sample_image_params(p, np.random.default_rng([11, p.gid]), "celeba", smile=0.0, mouth_open=0.0,
                                   lipstick=False, glasses=False, makeup=False, hat=False, squint=1.0)
        # a detector-box framing: an aligned crop would move with the mouth corners and blur the comparison
        neutral, lm = render_face(p, base, 160, "loose", return_landmarks=True)
        mouth, eyes = (lm[3] + lm[4]) / 2, (lm[0] + lm[1]) / 2
        half = int(0.5 * (lm[1, 0] - lm[0, 0]))
        # (what is switched on, where it must show, where it must not)
        checks = {"Smiling": (dict(smile=0.95), mouth, eyes), "Wearing_Lipstick": (dict(lipstick=True), mouth, eyes),
                  "Eyeglasses": (dict(glasses=True), lm[0], mouth)}  # the frame rings the eye
        for name, (change, where, elsewhere) in checks.items():
            image = replace(base, **change)
            assert attributes(p, base)[ATTR[name]] == -1 and attributes(p, image)[ATTR[name]] == 1
            other = render_face(p, image, 160, "loose")
            changes[name].append((_region_change(neutral, other, where, half),
                                  _region_change(neutral, other, elsewhere, 10)))
            if name == "Wearing_Lipstick":
                x, y = int(mouth[0]), int(mouth[1])
                redder.append([float((im[y - 4:y + 6, x - 10:x + 11, 0].astype(int) - im[y - 4:y + 6, x - 10:x + 11, 1]
                                      ).mean()) for im in (neutral, other)])
        assert attributes(p, base)[ATTR["Male"]] == (1 if p.gender == 0 else -1)
    for name, pairs in changes.items():  # the change shows where the attribute lives, and only there
        where, elsewhere = np.array(pairs).T
        assert (where > 3 * elsewhere + 0.01).mean() >= 0.9 and np.median(where) > 0.08, name
    redder = np.array(redder)  # lipstick makes the lips redder (R - G) for nearly everyone
    assert (redder[:, 1] > redder[:, 0] + 3).mean() >= 0.8 and (redder[:, 1] - redder[:, 0]).mean() > 15
    # identity-level attributes: arched brows and narrow eyes change what is drawn where the label says
    p = replace(sample_identity(11, 500, race=0, gender=1), bangs=0.0)  # bangs would hide the brows
    image = ImageParams(smile=0.0, squint=1.0, bg_rgb=(128, 128, 128))
    flat, arched = replace(p, brow_arch=0.01), replace(p, brow_arch=0.16)
    assert attributes(flat, image)[ATTR["Arched_Eyebrows"]] == -1 == -attributes(arched, image)[ATTR["Arched_Eyebrows"]]
    a, lm = render_face(flat, image, None, "celeba", return_landmarks=True)
    b = render_face(arched, image, None, "celeba")
    iod = lm[1, 0] - lm[0, 0]
    brow = lm[0] - [0, 0.45 * iod]
    assert _region_change(a, b, brow, 6) > 3 * _region_change(a, b, (lm[3] + lm[4]) / 2, 6) + 0.1
    narrow, wide = replace(p, eye_h=0.05), replace(p, eye_h=0.13)
    assert attributes(narrow, image)[ATTR["Narrow_Eyes"]] == 1 and attributes(wide, image)[ATTR["Narrow_Eyes"]] == -1
    whites = [int((render_face(q, image, None, "celeba")[int(lm[0, 1]) - 4:int(lm[0, 1]) + 5,
                                                          int(lm[0, 0]) - 8:int(lm[0, 0]) + 9].min(2) > 200).sum())
              for q in (narrow, wide)]
    assert whites[1] > 2 * whites[0] + 3  # more sclera shows between the lids


def test_render_face_landmarks_follow_the_template():
    p = sample_identity(3, 9)
    for layout in ("arcface", "celeba"):
        template = np.array(layout_for(layout).template)
        image = sample_image_params(p, np.random.default_rng(0), "ms1m")
        arr, lm = render_face(p, image, None, layout, return_landmarks=True)
        assert arr.dtype == np.uint8 and arr.ndim == 3
        assert np.abs(lm - template).max() < 0.25 * np.linalg.norm(template[1] - template[0])
    # the same inputs give the same pixels; another photograph of the person gives different ones
    again = render_face(p, image, 112, "arcface")
    assert np.array_equal(again, render_face(p, image, 112, "arcface"))
    assert not np.array_equal(again, render_face(p, replace(image, seed=image.seed + 1, smile=1 - image.smile), 112,
                                                 "arcface"))
