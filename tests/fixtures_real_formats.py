"""Tiny hand-made folders in the real CelebA / FairFace / QMUL-SurvFace formats, quirks included.

Written independently of ``datamodules/synthetic.py`` so the loaders are tested against the formats as documented
(``reference/datasets.md``), not against our own writer: irregular padding spaces in the CelebA tables, both CelebA
layouts, a bbox file in in-the-wild coordinates, FairFace's ``more than 70`` next to ``70+``, SurvFace cell-array
``.mat`` files in either identification folder and an unlabelled distractor.

Every builder returns the ground truth it wrote, so tests compare parsed values with it.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lrface.align import arcface_template_np

CELEBA_W, CELEBA_H = 178, 218
# Line 2 of the real list_attr_celeba.txt (typed from reference/datasets.md §1.4, not imported from the loader).
CELEBA_ATTR_HEADER = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young")
# Distinct colours painted at the five landmarks (left eye, right eye, nose, left mouth, right mouth).
LANDMARK_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255]], np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg(path: Path, image: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(image, quality))
    return path


def truncate_file(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def smooth_image(rng: np.random.Generator, h: int, w: int, level: int | None = None) -> np.ndarray:
    """A dark, smooth random image (so painted landmark dots stand out), or a flat grey ``level``."""
    if level is not None:
        return np.full((h, w, 3), level, np.uint8)
    base = rng.integers(20, 90, size=(max(h // 8, 2), max(w // 8, 2), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))


def paint_landmarks(image: np.ndarray, landmarks: np.ndarray, radius: int = 3) -> np.ndarray:
    out = image.copy()
    h, w = out.shape[:2]
    for (x, y), colour in zip(np.round(landmarks).astype(int), LANDMARK_COLOURS):
        out[max(y - radius, 0):min(y + radius + 1, h), max(x - radius, 0):min(x + radius + 1, w)] = colour
    return out


def celeba_landmarks(rng: np.random.Generator, n: int) -> np.ndarray:
    """n×5×2 integer landmarks of aligned CelebA crops: a random similarity of the ArcFace template (eyes near
    (69, 111) / (107, 111), as in the real file)."""
    tpl = arcface_template_np(112)
    out = np.zeros((n, 5, 2))
    for i in range(n):
        s = rng.uniform(0.95, 1.15)
        a = np.deg2rad(rng.uniform(-8, 8))
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        centre = np.array([89.0, 128.0]) + rng.uniform(-3, 3, 2)
        out[i] = (tpl - tpl.mean(0)) @ (s * rot).T + centre
    return np.round(out)


def make_celeba(root: Path, *, layout: str = "flat", n_images: int = 12, n_identities: int = 4,
                partition: list[int] | None = None, seed: int = 0) -> dict:
    """A CelebA copy in the torchvision flat layout or the original ``Img/ Anno/ Eval/`` layout.

    Returns:
        dict with ``names``, ``identity`` (1-based, as written), ``attributes`` (±1, N×40), ``landmarks`` (N×5×2),
        ``partition`` (0/1/2), ``images`` (the uint8 arrays before JPEG), and the written paths.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    if layout == "flat":
        img_dir, anno, ev = root / "img_align_celeba", root, root
    elif layout == "original":
        img_dir, anno, ev = root / "Img" / "img_align_celeba", root / "Anno", root / "Eval"
    else:
        raise ValueError(layout)
    for d in (img_dir, anno, ev):
        d.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n_images)]
    identity = np.array([1 + (i // 2) % n_identities for i in range(n_images)])  # pairs of images per id
    attributes = rng.choice([-1, 1], size=(n_images, 40))
    landmarks = celeba_landmarks(rng, n_images)
    if partition is None:  # like the real ranges: train first, then valid, then test
        partition = [0] * (n_images // 2) + [1] * (n_images // 4)
        partition += [2] * (n_images - len(partition))
    partition = np.asarray(partition)
    images = []
    for name, lm in zip(names, landmarks):
        img = paint_landmarks(smooth_image(rng, CELEBA_H, CELEBA_W), lm)
        images.append(img)
        write_jpeg(img_dir / name, img, quality=98)
    # Irregular spacing as in the release: values right-aligned, so '-1' follows one space and ' 1' two.
    attr_lines = [str(n_images), CELEBA_ATTR_HEADER + " "]
    attr_lines += [name + "".join(f"{v:>3d}" for v in row) for name, row in zip(names, attributes)]
    (anno / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (anno / "identity_CelebA.txt").write_text("".join(f"{n} {i}\n" for n, i in zip(names, identity)))
    (ev / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, partition)))
    lm_cols = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
               "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")  # written independently of the loader
    lm_lines = [str(n_images), lm_cols]
    lm_lines += [f"{n:<10}" + "".join(f"{int(v):>5d}" for v in lm.reshape(-1)) for n, lm in zip(names, landmarks)]
    (anno / "list_landmarks_align_celeba.txt").write_text("\n".join(lm_lines) + "\n")
    # In-the-wild boxes (outside the aligned crop, as image 9's (600, 274, 343, 475)): a loader must ignore them.
    bbox = [str(n_images), "image_id x_1 y_1 width height"]
    bbox += [f"{n}   {600 + i} 274 343 475" for i, n in enumerate(names)]
    (anno / "list_bbox_celeba.txt").write_text("\n".join(bbox) + "\n")
    return {"names": names, "identity": identity, "attributes": attributes, "landmarks": landmarks,
            "partition": partition, "images": images, "img_dir": img_dir,
            "attr_file": anno / "list_attr_celeba.txt", "identity_file": anno / "identity_CelebA.txt",
            "partition_file": ev / "list_eval_partition.txt",
            "landmarks_file": anno / "list_landmarks_align_celeba.txt"}


FAIRFACE_TRAIN_ROWS = [
    ("train/1.jpg", "50-59", "Male", "East Asian", "True"),
    ("train/2.jpg", "more than 70", "Female", "White", "False"),
    ("train/3.jpg", "70+", "Male", "Middle Eastern", "True"),
    ("train/4.jpg", "3-9", "Female", "Latino_Hispanic", "True"),
    ("train/5.jpg", "0-2", "Male", "Southeast Asian", "False"),
    ("train/6.jpg", "10-19", "Female", "Black", "True"),
    ("train/7.jpg", "20-29", "Male", "Indian", "False"),
    ("train/8.jpg", "60-69", "Female", "White", "True"),
]
FAIRFACE_VAL_ROWS = [
    ("val/1.jpg", "30-39", "Female", "Indian", "True"),
    ("val/2.jpg", "40-49", "Male", "Black", "False"),
    ("val/3.jpg", "more than 70", "Female", "East Asian", "True"),
    ("val/4.jpg", "20-29", "Male", "Latino_Hispanic", "True"),
]


def make_fairface(root: Path, *, train_rows=None, val_rows=None, size: tuple[int, int] = (40, 36),
                  header: str = "file,age,gender,race,service_test") -> dict:
    """FairFace CSVs plus both margin folders. Margin-0.25 images are dark (level 40 + 10·k), margin-1.25 images
    bright (level 200), so a test can tell which folder was read.

    Returns:
        dict with ``train_rows``, ``val_rows`` and the CSV paths.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train_rows = FAIRFACE_TRAIN_ROWS if train_rows is None else train_rows
    val_rows = FAIRFACE_VAL_ROWS if val_rows is None else val_rows
    rng = np.random.default_rng(0)
    for split, rows in (("train", train_rows), ("val", val_rows)):
        lines = [header] + [",".join(r) for r in rows]
        (root / f"fairface_label_{split}.csv").write_text("\n".join(lines) + "\n")
        for k, row in enumerate(rows):
            h, w = size
            write_jpeg(root / "fairface-img-margin025-trainval" / row[0], smooth_image(rng, h, w, level=40 + 10 * k))
            write_jpeg(root / "fairface-img-margin125-trainval" / row[0], smooth_image(rng, h, w, level=200))
    return {"train_rows": train_rows, "val_rows": val_rows, "train_csv": root / "fairface_label_train.csv",
            "val_csv": root / "fairface_label_val.csv"}


def _cell(names: list[str]) -> np.ndarray:
    arr = np.empty((len(names), 1), dtype=object)
    arr[:, 0] = names
    return arr


def make_survface(root: Path, *, mat_location: str = "Face_Identification_Test_Set", seed: int = 0) -> dict:
    """A QMUL-SurvFace release folder: training pids 2, 7, 10 (numeric ≠ lexicographic order), verification pairs,
    a gallery / mated probe of test pids 1 and 3 (1-based uint16 ids), an unmated probe of pid 5 plus one
    ``distractors_1.jpg``. Every image has its own tiny native size.

    Returns:
        dict of what was written (names, sizes, ids).
    """
    import scipy.io

    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes: dict[str, tuple[int, int]] = {}

    def img(path: Path) -> None:
        h, w = int(rng.integers(12, 40)), int(rng.integers(10, 34))
        write_jpeg(path, smooth_image(rng, h, w))
        sizes[str(path.relative_to(root))] = (h, w)

    train = {"2": 3, "7": 2, "10": 2}
    for pid, n in train.items():
        for k in range(n):
            img(root / "training_set" / pid / f"{pid}_cam{k + 1}_{k + 1}.jpg")
    (root / "training_set" / "11").mkdir(parents=True)  # an empty pid folder: ignored

    ver = root / "Face_Verification_Test_Set"
    vnames = [f"{p}_cam1_{k}.jpg" for p in (101, 102, 103) for k in (1, 2)]
    for n in vnames:
        img(ver / "verification_images" / n)
    pos = np.empty((3, 2), dtype=object)
    neg = np.empty((2, 2), dtype=object)
    for i, p in enumerate((101, 102, 103)):
        pos[i] = [f"{p}_cam1_1.jpg", f"{p}_cam1_2.jpg"]
    neg[0] = ["101_cam1_1.jpg", "102_cam1_2.jpg"]
    neg[1] = ["103_cam1_2.jpg", "102_cam1_1.jpg"]
    scipy.io.savemat(ver / "positive_pairs_names.mat", {"positive_pairs_names": pos})
    scipy.io.savemat(ver / "negative_pairs_names.mat", {"negative_pairs_names": neg})

    ident = root / "Face_Identification_Test_Set"
    gallery = ["1_cam1_1.jpg", "1_cam2_1.jpg", "3_cam1_1.jpg"]
    gallery_ids = [1, 1, 3]
    mated = ["3_cam2_5.jpg", "1_cam3_2.jpg"]
    mated_ids = [3, 1]
    unmated = ["5_cam1_1.jpg", "5_cam2_1.jpg", "distractors_1.jpg"]
    for part, names in (("gallery", gallery), ("mated_probe", mated), ("unmated_probe", unmated)):
        for n in names:
            img(ident / part / n)
    mat_dir = root / mat_location
    mat_dir.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(mat_dir / "gallery_img_ID_pairs.mat",
                     {"gallery_set": _cell(gallery), "gallery_ids": np.array(gallery_ids, np.uint16)[:, None]})
    scipy.io.savemat(mat_dir / "mated_probe_img_ID_pairs.mat",
                     {"mated_probe_set": _cell(mated), "mated_probe_ids": np.array(mated_ids, np.uint16)[:, None]})
    return {"train": train, "sizes": sizes, "pos": pos, "neg": neg, "gallery": gallery, "gallery_ids": gallery_ids,
            "mated": mated, "mated_ids": mated_ids, "unmated": unmated, "mat_dir": mat_dir}
