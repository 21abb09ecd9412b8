"""The synthetic face world: procedural people written in the real on-disk formats of CelebA, FairFace, MS1M and
QMUL-SurvFace, so the real loaders (and every experiment) run on a laptop without downloads. Deterministic by seed.

Generative model
================

Identity pool. World ``seed`` defines an unbounded pool of people; person ``gid`` is drawn from its own generator
``default_rng([seed, 1, gid])`` (:func:`~datamodules.synthetic_faces.sample_identity`), so a person never depends on
which other people or datasets were generated. Each dataset takes a disjoint ``gid`` range (fixed order: CelebA,
MS1M train, LFW / CFP-FP / AgeDB-30 pair sets, QMUL train, QMUL test, FairFace, QMUL distractors), with the
dataset's demographic prior (CelebA and MS1M mostly White, FairFace race-balanced, ...).

A person (~90 stable parameters):

* demographics: race (7 FairFace groups), gender, age in years (→ the 9 FairFace age groups);
* skin: a melanin index and a yellow undertone from race-specific Gaussians that overlap between neighbouring groups,
  so skin colour alone is ambiguous once lighting varies;
* head: widths at forehead / cheekbones / jaw / chin, chin height, depth, chubbiness, double chin;
* eyes: spacing, width, opening, canthal tilt, iris size and colour, double-eyelid crease, epicanthic fold,
  lashes, eye-socket depth; brows: gap, length, thickness, arch height and peak, tilt, darkness;
  nose: length, alar width, bridge height, tip size and pointiness, nostril size; mouth: width, height, upper and
  lower lip fullness, cupid's bow, lip colour; ears;
* hair: length class (bald / short / medium / long), volume, hairline, recession, parting, bangs, texture (straight,
  wavy, curly, coily) with identity-fixed strands or curls, colour (black / brown / blond / red, shade), graying;
* facial hair (none, stubble, goatee, full beard, mustache, goatee + mustache), density, sideburns;
* fine marks: moles, freckles, chin cleft, dimples, forehead lines, philtrum, wrinkles with age;
* habits: probabilities of glasses (frame shape / colour / sunglasses), lipstick (its colour), heavy makeup,
  earrings, necklace, necktie, hat; smiling and open-mouth propensities; a latent attractiveness.

Race is carried by *fine* structure as well as by skin: eye fold, crease and socket depth, nose width and bridge,
lip fullness, brow thickness and hair texture differ between groups, while skin tones overlap. Sex is carried by the
jaw, brow thickness and height, lashes, shaved-skin stipple and Adam's apple as well as by hair length and beards.

A photograph (:func:`~datamodules.synthetic_faces.sample_image_params`, per-dataset
:data:`~datamodules.synthetic_faces.VARIATIONS`): yaw / pitch (a 3-D ellipsoidal head, features at their depth),
roll, scale and shift; landmark-detector noise fed to the alignment; ambient level, directional light (head
shading plus an image gradient), colour tint and contrast; expression (smile: raised, wider mouth corners, cheeks,
narrowed eyes; mouth opening with teeth); gaze; the day's hairstyle (length class, volume, bangs, parting, shade);
glasses, lipstick, makeup, hat, jewellery, tie as Bernoulli draws from the person's habits; capture age (AgeDB);
background clutter and clothes; blur, sensor noise and JPEG quality.

Rendering (:func:`~datamodules.synthetic_faces.render_face`): PIL polygons on a 2-4× supersampled canvas, box-
downsampled (anti-aliased). Points go through yaw / pitch, then one similarity: roll / scale / shift, then the
dataset's alignment, estimated from the (noisy) projected five landmarks exactly as a real pipeline aligns detected
landmarks: CelebA's aligned 178×218 crop, dlib face chips (FairFace, padding 0.25 and 1.25), the ArcFace 112×112
template (MS1M, ``.bin`` sets), or a loose detector box (QMUL-SurvFace). The landmark files record where the
renderer actually put the eyes, nose tip and mouth corners.

Labels are read off what was rendered (:func:`~datamodules.synthetic_faces.attributes`): e.g. ``Smiling`` is the
drawn smile > 0.5, ``Narrow_Eyes`` the drawn lid opening, ``Wearing_Lipstick`` whether lipstick was drawn.

Resolution. Identity lives in the fine geometry (eye, brow, nose and mouth shapes, marks, iris colour) plus coarse
cues (skin, hair, face shape) that lighting, restyling and pose perturb; at 112 px the fine detail is resolved, at
7-14 px only the perturbed coarse cues remain. Race and attributes are likewise resolved at high resolution and
ambiguous in 16-32 px thumbnails of a portrait crop. ``tests/test_synthetic.py`` measures both.

Datasets written (``root/<name>/``; counts per :data:`SCALES`)
---------------------------------------------------------------

* ``celeba/``: torchvision flat layout; ``img_align_celeba/000001.jpg ...`` (178×218), ``list_attr_celeba.txt``
  (count, the 40 names, rows of ±1 with the release's padding), ``identity_CelebA.txt`` (1-based ids),
  ``list_eval_partition.txt`` (identity-disjoint 0 / 1 / 2 in contiguous runs), ``list_landmarks_align_celeba.txt``,
  ``list_bbox_celeba.txt`` (in-the-wild boxes that do not fit the aligned crops, like the real file).
* ``fairface/``: ``fairface_label_{train,val}.csv`` and 224×224 images in ``fairface-img-margin025-trainval/`` and
  ``fairface-img-margin125-trainval/`` (the same photograph framed both ways); one-off people, race-balanced-ish;
  ``service_test`` marks a race × gender balanced subset within each age group.
* ``ms1m/``: ``train.rec`` / ``train.idx`` / ``property`` (InsightFace RecordIO, 112×112 ArcFace-aligned) and
  ``lfw.bin``, ``cfp_fp.bin`` (frontal vs strongly turned), ``agedb_30.bin`` (same person ~30 years apart), each
  with its own people, disjoint from the training ids, 10 folds of half same / half different pairs; and
  ``train_pose.tsv``, the rendered head pose of every training record (ground truth only a synthetic world has:
  ``index`` = 0-based image record in write order, ``yaw`` / ``pitch`` / ``roll`` in radians before the alignment,
  which undoes most of the roll), read by :class:`datamodules.ms1m.MS1MDataset` for URL's pose variation.
* ``qmul_survface/``: ``training_set/<pid>/<pid>_camX_Y.jpg``, verification images and pair ``.mat`` files,
  identification gallery / mated / unmated probes (with ``distractors_<N>.jpg``) and their ``.mat`` files,
  ``readme.txt``; 10-40 px, dark, low-contrast, blurred, noisy, heavily compressed, per-camera colour casts.

``root/WORLD.json`` is written last (atomically): a world without it is incomplete and :func:`ensure_world`
regenerates it under a file lock, so concurrent DDP ranks generate once.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from datamodules.synthetic_faces import (
    AGE_GROUPS,
    ATTRIBUTE_NAMES,
    RACES,
    Identity,
    ImageParams,
    attributes,
    encode_jpeg,
    render_face,
    sample_identities,
    sample_identity,
    sample_image_params,
)
from lrface.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "DATASETS",
    "SCALES",
    "WORLD_VERSION",
    "Scale",
    "attributes",
    "ensure_world",
    "generate_world",
    "main",
    "render_face",
    "sample_identities",
    "sample_identity",
    "sample_image_params",
    "world_is_complete",
]

WORLD_VERSION = 2  # 2: ms1m/train_pose.tsv
DATASETS = ("celeba", "fairface", "ms1m", "qmul_survface")
MARKER = ".lrface_synthetic"  # inside every dataset folder we write: only such folders are ever replaced


@dataclass(frozen=True)
class Scale:
    """Sizes of one world. Image counts per identity are uniform in the (lo, hi) ranges."""

    celeba_ids: int
    celeba_images: tuple[int, int]
    fairface_train: int
    fairface_val: int
    ms1m_ids: int
    ms1m_images: tuple[int, int]
    bin_ids: int                    # people per .bin set (each set has its own)
    bin_pairs: int                  # pairs per .bin set: 10 folds × (half same, half different)
    qmul_train_ids: int
    qmul_train_images: tuple[int, int]
    qmul_test_ids: int              # half enrolled (gallery + mated probes), half unmated
    qmul_test_images: tuple[int, int]
    qmul_distractors: int
    qmul_pairs: int                 # positive pairs, and as many negative ones

    def __post_init__(self):
        if self.bin_pairs % 20:
            raise ValueError(f"bin_pairs must be a multiple of 20 (10 folds of same + different), got {self.bin_pairs}")
        if self.qmul_test_ids < 4 or self.celeba_ids < 3 or self.bin_ids < 2:
            raise ValueError("a world needs ≥ 3 CelebA ids (train / valid / test), ≥ 2 ids per .bin set and ≥ 4 QMUL "
                             "test ids")


SCALES: dict[str, Scale] = {
    # tests: ~390 photographs over ~80 identities, a few seconds
    "tiny": Scale(celeba_ids=12, celeba_images=(4, 8), fairface_train=40, fairface_val=16, ms1m_ids=10,
                  ms1m_images=(5, 8), bin_ids=6, bin_pairs=20, qmul_train_ids=6, qmul_train_images=(4, 6),
                  qmul_test_ids=10, qmul_test_images=(4, 6), qmul_distractors=6, qmul_pairs=12),
    # laptop experiments: ~10,100 photographs, 630 recurring identities (+ 1,150 one-off people)
    "quickstart": Scale(celeba_ids=180, celeba_images=(12, 18), fairface_train=800, fairface_val=200, ms1m_ids=130,
                        ms1m_images=(16, 24), bin_ids=20, bin_pairs=200, qmul_train_ids=120,
                        qmul_train_images=(8, 14), qmul_test_ids=140, qmul_test_images=(6, 10), qmul_distractors=150,
                        qmul_pairs=300),
    # generator training (experiment stylegan2_synthetic): the quickstart world with ~17,000 CelebA photographs
    "gan": Scale(celeba_ids=1000, celeba_images=(14, 20), fairface_train=800, fairface_val=200, ms1m_ids=130,
                 ms1m_images=(16, 24), bin_ids=20, bin_pairs=200, qmul_train_ids=120, qmul_train_images=(8, 14),
                 qmul_test_ids=140, qmul_test_images=(6, 10), qmul_distractors=150, qmul_pairs=300),
}

# Demographic priors per dataset (race in RACES order; ages over AGE_GROUPS).
_CELEBA_RACE = (0.72, 0.08, 0.06, 0.05, 0.02, 0.03, 0.04)
_MS1M_RACE = (0.62, 0.10, 0.06, 0.10, 0.03, 0.04, 0.05)
_FAIRFACE_RACE = (0.19, 0.14, 0.155, 0.14, 0.125, 0.14, 0.11)
_QMUL_RACE = (0.40, 0.15, 0.10, 0.12, 0.08, 0.08, 0.07)
_FAIRFACE_AGE = (0.02, 0.12, 0.10, 0.30, 0.22, 0.12, 0.07, 0.035, 0.015)
_CELEB_AGE = (0.0, 0.0, 0.02, 0.30, 0.30, 0.20, 0.10, 0.06, 0.02)
_AGEDB_AGE = (0.0, 0.0, 0.0, 0.0, 0.25, 0.35, 0.25, 0.15, 0.0)
_QMUL_AGE = (0.0, 0.0, 0.08, 0.40, 0.30, 0.14, 0.06, 0.02, 0.0)

# Stream codes keep every random draw independent of the others (and of which datasets are generated).
_S_CELEBA, _S_FAIRFACE, _S_MS1M, _S_LFW, _S_CFP, _S_AGEDB, _S_QMUL, _S_LAYOUT = range(10, 18)


def _scale(scale: str | Scale) -> tuple[str, Scale]:
    if isinstance(scale, Scale):
        return "custom", scale
    if scale not in SCALES:
        raise ValueError(f"unknown world scale {scale!r}; expected one of {sorted(SCALES)}")
    return scale, SCALES[scale]


def _id_ranges(sc: Scale) -> dict[str, tuple[int, int]]:
    """Disjoint ``gid`` ranges of the global identity pool, in a fixed order."""
    sizes = [("celeba", sc.celeba_ids), ("ms1m", sc.ms1m_ids), ("lfw", sc.bin_ids), ("cfp_fp", sc.bin_ids),
             ("agedb_30", sc.bin_ids), ("qmul_train", sc.qmul_train_ids), ("qmul_test", sc.qmul_test_ids),
             ("fairface", sc.fairface_train + sc.fairface_val), ("qmul_distractors", sc.qmul_distractors)]
    out, start = {}, 0
    for name, n in sizes:
        out[name] = (start, start + n)
        start += n
    return out


# --------------------------------------------------------------------------------------------------------------------
# Rendering tasks (run in worker processes; a task's output depends on the task alone)
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Task:
    identity: Identity
    image: ImageParams
    size: object
    layout: str


def _render_task(task: _Task) -> tuple[bytes, np.ndarray]:
    arr, lm = render_face(task.identity, task.image, task.size, task.layout, return_landmarks=True)
    return encode_jpeg(arr, task.image.jpeg), lm


def _render_pair_task(tasks: tuple[_Task, _Task]) -> tuple[tuple[bytes, np.ndarray], tuple[bytes, np.ndarray]]:
    return _render_task(tasks[0]), _render_task(tasks[1])


class _Renderer:
    """Maps tasks to encoded images in order, in a process pool (or inline with one worker)."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.pool = None
        if self.workers > 1:
            # fork is cheap and needs no importable __main__; workers use only NumPy and PIL
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self.pool = ctx.Pool(self.workers)

    def map(self, fn, tasks: Sequence) -> Iterator:
        if self.pool is None:
            return map(fn, tasks)
        return self.pool.imap(fn, tasks, chunksize=max(1, min(16, len(tasks) // (4 * self.workers) or 1)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _per_identity_counts(rng: np.random.Generator, n: int, lo_hi: tuple[int, int]) -> np.ndarray:
    lo, hi = lo_hi
    return rng.integers(lo, hi + 1, n)


def _image_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), *[int(k) for k in keys]])


# --------------------------------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------------------------------

def _write_celeba(out: Path, sc: Scale, seed: int, ranges, renderer: _Renderer) -> dict:
    lo, hi = ranges["celeba"]
    people = sample_identities(hi - lo, seed, start=lo, race_probs=_CELEBA_RACE, male_prob=0.42)
    rng = _image_rng(seed, _S_CELEBA, 0)
    counts = _per_identity_counts(rng, len(people), sc.celeba_images)
    # identity-disjoint partitions in the release's proportions (train 80 %, valid 10 %, test 10 %)
    order = rng.permutation(len(people))
    n_valid = n_test = max(1, round(0.1 * len(people)))
    part_of = np.zeros(len(people), np.int64)
    part_of[order[len(people) - n_valid - n_test:len(people) - n_test]] = 1
    part_of[order[len(people) - n_test:]] = 2
    celeba_id = rng.permutation(len(people)) + 1  # the release numbers identities in no particular order
    rows = []  # (partition, person, image index)
    for p in range(3):
        block = [(p, k, j) for k in np.flatnonzero(part_of == p) for j in range(counts[k])]
        rows += [block[t] for t in rng.permutation(len(block))]  # identities interleave within a split
    tasks, meta = [], []
    for part, k, j in rows:
        person = people[k]
        image = sample_image_params(person, _image_rng(seed, _S_CELEBA, person.gid, j), "celeba")
        tasks.append(_Task(person, image, (218, 178), "celeba"))
        meta.append((part, k, image))
    img_dir = out / "img_align_celeba"
    img_dir.mkdir(parents=True)
    n = len(tasks)
    names = [f"{t + 1:06d}.jpg" for t in range(n)]
    attr_rows, lm_rows, bbox_rows = [], [], []
    for t, (data, lm) in enumerate(renderer.map(_render_task, tasks)):
        (img_dir / names[t]).write_bytes(data)
        part, k, image = meta[t]
        attr_rows.append(names[t] + " " + " ".join(f"{v:2d}" for v in attributes(people[k], image)))
        pts = np.rint(lm).astype(int).ravel()
        lm_rows.append(f"{names[t]}{pts[0]:6d}" + "".join(f"{v:5d}" for v in pts[1:]))
        bbox_rows.append(names[t] + _wild_bbox(lm, _image_rng(seed, _S_CELEBA, 1, t)))
    header = " ".join(ATTRIBUTE_NAMES)
    atomic_write_text(out / "list_attr_celeba.txt", f"{n}\n{header}\n" + "\n".join(attr_rows) + "\n")
    atomic_write_text(out / "identity_CelebA.txt",
                 "".join(f"{names[t]} {celeba_id[meta[t][1]]}\n" for t in range(n)))
    atomic_write_text(out / "list_eval_partition.txt", "".join(f"{names[t]} {meta[t][0]}\n" for t in range(n)))
    cols = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    atomic_write_text(out / "list_landmarks_align_celeba.txt", f"{n}\n{cols}\n" + "\n".join(lm_rows) + "\n")
    atomic_write_text(out / "list_bbox_celeba.txt", f"{n}\nimage_id x_1 y_1 width height\n" + "\n".join(bbox_rows) + "\n")
    return {"images": n, "identities": len(people),
            "partition": {s: int(sum(1 for m in meta if m[0] == p)) for p, s in enumerate(("train", "valid", "test"))}}


def _wild_bbox(landmarks: np.ndarray, rng: np.random.Generator) -> str:
    """A face box in an imagined in-the-wild original (larger photo, face elsewhere), like ``list_bbox_celeba.txt``,
    whose boxes belong to ``img_celeba`` and do not fit the aligned crops (pytorch/vision #9008)."""
    iod = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    zoom = rng.uniform(1.6, 5.0)  # the original is that much larger than the aligned crop
    w = int(round(2.4 * iod * zoom * rng.uniform(0.92, 1.08)))
    h = int(round(w * rng.uniform(1.3, 1.45)))
    x = int(rng.integers(0, max(1, int(3.5 * w))))
    y = int(rng.integers(0, max(1, int(1.5 * h))))
    return f"{x:6d}{y:4d}{w:4d}{h:4d}"


# --------------------------------------------------------------------------------------------------------------------
# FairFace
# --------------------------------------------------------------------------------------------------------------------

def _service_test(race: np.ndarray, gender: np.ndarray, age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """True on a subset balanced across race × gender within each age group (joojs/fairface #9)."""
    flag = np.zeros(len(race), bool)
    for a in np.unique(age):
        cells = [np.flatnonzero((age == a) & (race == r) & (gender == g)) for r in range(7) for g in range(2)]
        m = min(len(c) for c in cells)
        for c in cells:
            if m:
                flag[rng.choice(c, m, replace=False)] = True
    return flag


def _fairface_people(n: int, seed: int, start: int, rng: np.random.Generator) -> list[Identity]:
    """Half the people come in blocks of one per race × gender cell sharing an age group (the balanced core that
    ``service_test`` marks), the rest follow the dataset's race prior; file order is shuffled."""
    people = []
    for _block in range((n // 2) // 14):
        onehot = np.eye(9)[rng.choice(9, p=_FAIRFACE_AGE)]
        people += [sample_identity(seed, start + len(people), race=cell % 7, gender=cell // 7, age_probs=onehot)
                   for cell in range(14)]
    while len(people) < n:
        people.append(sample_identity(seed, start + len(people), race_probs=_FAIRFACE_RACE, age_probs=_FAIRFACE_AGE,
                                      male_prob=0.53))
    return [people[i] for i in rng.permutation(n)]


def _write_fairface(out: Path, sc: Scale, seed: int, ranges, renderer: _Renderer) -> dict:
    lo, _ = ranges["fairface"]
    dirs = {0.25: out / "fairface-img-margin025-trainval", 1.25: out / "fairface-img-margin125-trainval"}
    result = {}
    start = lo
    for k, (split, n) in enumerate((("train", sc.fairface_train), ("val", sc.fairface_val))):
        people = _fairface_people(n, seed, start, _image_rng(seed, _S_FAIRFACE, 2, k))
        start += n
        images = [sample_image_params(p, _image_rng(seed, _S_FAIRFACE, p.gid), "fairface") for p in people]
        # the same photograph, cropped as a dlib face chip with padding 0.25 and with padding 1.25
        tasks = [(_Task(p, im, 224, "fairface025"), _Task(p, im, 224, "fairface125")) for p, im in zip(people, images)]
        for d in dirs.values():
            (d / split).mkdir(parents=True)
        for t, (tight, loose) in enumerate(renderer.map(_render_pair_task, tasks)):
            (dirs[0.25] / split / f"{t + 1}.jpg").write_bytes(tight[0])
            (dirs[1.25] / split / f"{t + 1}.jpg").write_bytes(loose[0])
        race = np.array([p.race for p in people])
        gender = np.array([p.gender for p in people])
        age = np.array([p.age_group for p in people])
        service = _service_test(race, gender, age, _image_rng(seed, _S_FAIRFACE, 1, k))
        lines = ["file,age,gender,race,service_test"] + [
            f"{split}/{t + 1}.jpg,{AGE_GROUPS[age[t]]},{('Male', 'Female')[gender[t]]},{RACES[race[t]]},"
            f"{bool(service[t])}" for t in range(n)]
        atomic_write_text(out / f"fairface_label_{split}.csv", "\n".join(lines) + "\n")
        result[split] = {"images": n, "service_test": int(service.sum())}
    return result


# --------------------------------------------------------------------------------------------------------------------
# MS1M (RecordIO) and the .bin verification sets
# --------------------------------------------------------------------------------------------------------------------

def _write_ms1m(out: Path, sc: Scale, seed: int, ranges, renderer: _Renderer) -> dict:
    from datamodules.formats.recordio import write_insightface_rec
    from datamodules.formats.verification_bin import write_bin
    from datamodules.ms1m import POSE_HEADER, POSE_SIDECAR

    lo, hi = ranges["ms1m"]
    people = sample_identities(hi - lo, seed, start=lo, race_probs=_MS1M_RACE, age_probs=_CELEB_AGE, male_prob=0.55)
    counts = _per_identity_counts(_image_rng(seed, _S_MS1M, 0), len(people), sc.ms1m_images)
    tasks, labels = [], []
    for label, (person, c) in enumerate(zip(people, counts)):
        for j in range(c):
            tasks.append(_Task(person, sample_image_params(person, _image_rng(seed, _S_MS1M, person.gid, j), "ms1m"),
                               112, "arcface"))
            labels.append(label)
    samples = ((labels[t], data) for t, (data, _) in enumerate(renderer.map(_render_task, tasks)))
    rec = write_insightface_rec(out, samples, num_classes=len(people), image_size=(112, 112), meta=True)
    # ground-truth head pose of every training image (synthetic only; URL's pose variation, datamodules.variations)
    atomic_write_text(out / POSE_SIDECAR, POSE_HEADER + "\n" + "".join(
        f"{t}\t{task.image.yaw:.9g}\t{task.image.pitch:.9g}\t{task.image.roll:.9g}\n" for t, task in enumerate(tasks)))
    result = {"images": rec["num_images"], "identities": len(people)}
    for name, stream in (("lfw", _S_LFW), ("cfp_fp", _S_CFP), ("agedb_30", _S_AGEDB)):
        lo, hi = ranges[name]
        priors = dict(race_probs=_MS1M_RACE, male_prob=0.55,
                      age_probs=_AGEDB_AGE if name == "agedb_30" else _CELEB_AGE)
        bin_people = sample_identities(hi - lo, seed, start=lo, **priors)
        pairs, issame = _plan_pairs(name, bin_people, sc.bin_pairs, seed, stream)
        encoded = []
        for first, second in renderer.map(_render_pair_task, pairs):
            encoded += [first[0], second[0]]
        write_bin(out / f"{name}.bin", encoded, issame)
        result[name] = {"pairs": len(issame), "identities": len(bin_people)}
    return result


def _plan_pairs(name: str, people: list[Identity], n_pairs: int, seed: int, stream: int):
    """10 folds, each ``n/20`` same-person pairs followed by ``n/20`` different-person pairs (lfw.bin's layout)."""
    rng = _image_rng(seed, stream, 0)
    half = n_pairs // 20
    pairs, issame = [], []
    for _fold in range(10):
        for same in (True, False):
            for _ in range(half):
                if same:
                    a = b = people[int(rng.integers(len(people)))]
                else:
                    ia, ib = rng.choice(len(people), 2, replace=False)
                    a, b = people[int(ia)], people[int(ib)]
                k = len(pairs)
                ra, rb = _image_rng(seed, stream, 1, k, 0), _image_rng(seed, stream, 1, k, 1)
                if name == "cfp_fp":  # CFP-FP: a frontal and a strongly turned capture
                    im_a = sample_image_params(a, ra, "cfp_frontal")
                    im_b = sample_image_params(b, rb, "cfp_profile")
                elif name == "agedb_30" and same:  # AgeDB-30: the same person about 30 years apart
                    gap = rng.uniform(26.0, 34.0)
                    split = rng.uniform(0.3, 0.7)
                    young = max(8.0 - a.age, -gap * split)
                    im_a = sample_image_params(a, ra, "agedb", age_delta=float(young))
                    im_b = sample_image_params(b, rb, "agedb", age_delta=float(young + gap))
                elif name == "agedb_30":
                    im_a = sample_image_params(a, ra, "agedb", age_delta=float(rng.uniform(-15, 15)))
                    im_b = sample_image_params(b, rb, "agedb", age_delta=float(rng.uniform(-15, 15)))
                else:
                    im_a, im_b = sample_image_params(a, ra, "lfw"), sample_image_params(b, rb, "lfw")
                pairs.append((_Task(a, im_a, 112, "arcface"), _Task(b, im_b, 112, "arcface")))
                issame.append(same)
    return pairs, issame


# --------------------------------------------------------------------------------------------------------------------
# QMUL-SurvFace
# --------------------------------------------------------------------------------------------------------------------

def _camera(seed: int, cam: int) -> dict:
    """A surveillance camera: its colour cast, exposure, optics blur and how large faces appear in it."""
    r = _image_rng(seed, _S_QMUL, 99, cam)
    return {"tint": tuple(float(t) for t in np.clip(r.normal(1.0, 0.07, 3), 0.8, 1.2)),
            "exposure": float(r.uniform(0.75, 1.1)), "blur": float(r.uniform(0.2, 0.9)),
            "width": float(r.uniform(15, 28))}


def _qmul_task(person: Identity, seed: int, key: tuple, cam: int) -> _Task:
    r = _image_rng(seed, _S_QMUL, *key)
    c = _camera(seed, cam)
    image = sample_image_params(person, r, "qmul")
    w = int(np.clip(round(c["width"] * np.exp(r.normal(0, 0.3))), 10, 40))
    h = int(np.clip(round(w * r.uniform(1.0, 1.35)), 10, 48))
    image = replace(image, tint=tuple(a * b for a, b in zip(image.tint, c["tint"])),
                    ambient=image.ambient * c["exposure"], blur_px=c["blur"] * float(r.uniform(0.7, 1.4)))
    return _Task(person, image, (h, w), "loose")


def _mat_cells(names: Sequence[str] | Sequence[Sequence[str]], cols: int) -> np.ndarray:
    cells = np.empty((len(names), cols), dtype=object)
    for i, row in enumerate(names):
        for j, v in enumerate([row] if cols == 1 else row):
            cells[i, j] = str(v)
    return cells


def _savemat(path: Path, variables: dict) -> None:
    """``scipy.io.savemat`` (MAT v5), with the header's creation time replaced by a fixed description so equal
    content gives equal bytes; written atomically."""
    import io

    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, written by the lrface synthetic world".ljust(116, b" ")
    atomic_write_bytes(path, bytes(data))


def _write_qmul(out: Path, sc: Scale, seed: int, ranges, renderer: _Renderer) -> dict:
    rng = _image_rng(seed, _S_QMUL, 0)
    lo, hi = ranges["qmul_train"]
    train_people = sample_identities(hi - lo, seed, start=lo, race_probs=_QMUL_RACE, age_probs=_QMUL_AGE,
                                     male_prob=0.6)
    lo, hi = ranges["qmul_test"]
    test_people = sample_identities(hi - lo, seed, start=lo, race_probs=_QMUL_RACE, age_probs=_QMUL_AGE,
                                    male_prob=0.6)
    # person ids as in the release: integers, training and test disjoint
    train_pids = np.arange(1, len(train_people) + 1)
    test_pids = np.arange(len(train_people) + 1, len(train_people) + len(test_people) + 1)

    def shoot(people, pids, lo_hi, tag):
        counts = _per_identity_counts(rng, len(people), lo_hi)
        items = []  # (pid, name, task)
        for person, pid, c in zip(people, pids, counts):
            cams = rng.choice(np.arange(1, 7), size=int(rng.integers(1, 4)), replace=False)
            seen = {}
            for j in range(c):
                cam = int(cams[j % len(cams)])
                seen[cam] = seen.get(cam, 0) + 1
                items.append((int(pid), f"{pid}_cam{cam}_{seen[cam]}.jpg",
                              _qmul_task(person, seed, (tag, person.gid, j), cam)))
        return items

    train = shoot(train_people, train_pids, sc.qmul_train_images, 1)
    for pid in train_pids:
        (out / "training_set" / str(pid)).mkdir(parents=True)
    for (pid, name, _), (data, _) in zip(train, renderer.map(_render_task, [t for *_, t in train])):
        (out / "training_set" / str(pid) / name).write_bytes(data)

    test = shoot(test_people, test_pids, sc.qmul_test_images, 2)
    rendered = renderer.map(_render_task, [t for *_, t in test])
    encoded = {name: data for (_, name, _), (data, _) in zip(test, rendered)}
    # identification: half the test people are enrolled (gallery + mated probes), the rest are unmated probes
    enrolled = set(int(p) for p in rng.choice(test_pids, len(test_pids) // 2, replace=False))
    ident = out / "Face_Identification_Test_Set"
    for part in ("gallery", "mated_probe", "unmated_probe"):
        (ident / part).mkdir(parents=True)
    gallery, mated = [], []
    by_pid: dict[int, list[str]] = {}
    for pid, name, _ in test:
        by_pid.setdefault(pid, []).append(name)
    for pid in sorted(by_pid):
        names = by_pid[pid]
        if pid in enrolled:
            k = max(1, len(names) // 2)
            for name in names[:k]:
                (ident / "gallery" / name).write_bytes(encoded[name])
                gallery.append((name, pid))
            for name in names[k:]:
                (ident / "mated_probe" / name).write_bytes(encoded[name])
                mated.append((name, pid))
        else:
            for name in names:
                (ident / "unmated_probe" / name).write_bytes(encoded[name])
    lo, hi = ranges["qmul_distractors"]
    strangers = sample_identities(hi - lo, seed, start=lo, race_probs=_QMUL_RACE, age_probs=_QMUL_AGE, male_prob=0.6)
    distractor_tasks = [_qmul_task(p, seed, (3, p.gid), int(rng.integers(1, 7))) for p in strangers]
    for k, (data, _) in enumerate(renderer.map(_render_task, distractor_tasks)):
        (ident / "unmated_probe" / f"distractors_{k + 1}.jpg").write_bytes(data)
    for stem, rows in (("gallery", gallery), ("mated_probe", mated)):
        _savemat(ident / f"{stem}_img_ID_pairs.mat", {f"{stem}_set": _mat_cells([n for n, _ in rows], 1),
                                                      f"{stem}_ids": np.array([[p] for _, p in rows], dtype=np.uint16)})
    # verification: pairs over all test people; the referenced images are byte-identical copies
    multi = [pid for pid in sorted(by_pid) if len(by_pid[pid]) >= 2]
    positive, negative = [], []
    for _ in range(sc.qmul_pairs):
        pid = int(rng.choice(multi))
        a, b = rng.choice(len(by_pid[pid]), 2, replace=False)
        positive.append((by_pid[pid][a], by_pid[pid][b]))
        pa, pb = rng.choice(sorted(by_pid), 2, replace=False)
        negative.append((by_pid[int(pa)][int(rng.integers(len(by_pid[int(pa)])))],
                         by_pid[int(pb)][int(rng.integers(len(by_pid[int(pb)])))]))
    verif = out / "Face_Verification_Test_Set"
    (verif / "verification_images").mkdir(parents=True)
    for name in sorted({n for pair in positive + negative for n in pair}):
        (verif / "verification_images" / name).write_bytes(encoded[name])
    _savemat(verif / "positive_pairs_names.mat", {"positive_pairs_names": _mat_cells(positive, 2)})
    _savemat(verif / "negative_pairs_names.mat", {"negative_pairs_names": _mat_cells(negative, 2)})
    counts = {"train_identities": len(train_people), "train_images": len(train), "test_identities": len(test_people),
              "test_images": len(test), "gallery": len(gallery), "mated_probe": len(mated),
              "unmated_probe": len(test) - len(gallery) - len(mated) + len(strangers), "distractors": len(strangers),
              "positive_pairs": len(positive), "negative_pairs": len(negative)}
    atomic_write_text(out / "readme.txt", _QMUL_README.format(**counts))
    return counts


_QMUL_README = """QMUL-SurvFace (synthetic stand-in written by lrface; same layout as the v1 release)

training_set/<pid>/<pid>_camX_Y.jpg                 {train_identities} identities, {train_images} images
Face_Verification_Test_Set/verification_images/      images referenced by the pair lists (copies of test images)
Face_Verification_Test_Set/positive_pairs_names.mat  'positive_pairs_names' {positive_pairs}x2 cell of image names
Face_Verification_Test_Set/negative_pairs_names.mat  'negative_pairs_names' {negative_pairs}x2 cell of image names
Face_Identification_Test_Set/gallery/                {gallery} images ('gallery_img_ID_pairs.mat')
Face_Identification_Test_Set/mated_probe/            {mated_probe} images ('mated_probe_img_ID_pairs.mat')
Face_Identification_Test_Set/unmated_probe/          {unmated_probe} images incl. {distractors} distractors_<N>.jpg

Test identities ({test_identities}) are disjoint from training identities; gallery / mated identities are disjoint
from unmated-probe identities. Ids in the .mat files are the 1-based person ids of the file names.
Protocols: verification TAR@FAR and AUC; open-set identification TPIR@FPIR (rank 20) and AUC.
"""

_WRITERS = {"celeba": _write_celeba, "fairface": _write_fairface, "ms1m": _write_ms1m,
            "qmul_survface": _write_qmul}


# --------------------------------------------------------------------------------------------------------------------
# World management
# --------------------------------------------------------------------------------------------------------------------

def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished dataset folder into place; only a folder this module wrote may be replaced."""
    if final.exists():
        if not (final / MARKER).is_file():
            raise FileExistsError(f"{final} exists and was not written by the synthetic world generator; refusing to "
                                  "replace it (point data.root / --root elsewhere)")
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


def generate_world(root: str | Path, scale: str | Scale = "quickstart", seed: int = 0, workers: int = 2,
                   datasets: Iterable[str] = DATASETS) -> dict:
    """Write the synthetic world under ``root`` (``root/celeba``, ``root/fairface``, ``root/ms1m``,
    ``root/qmul_survface``), then ``root/WORLD.json`` last.

    Args:
        root: destination folder (created).
        scale: a :data:`SCALES` name or a :class:`Scale`.
        seed: world seed; the same seed gives byte-identical files whatever ``workers`` is.
        workers: rendering processes (1 = in this process).
        datasets: which of :data:`DATASETS` to write.

    Returns:
        The ``WORLD.json`` content: ``version``, ``scale`` (name and sizes), ``seed``, ``datasets``, ``counts``.
    """
    root = Path(root)
    scale_name, sc = _scale(scale)
    datasets = tuple(datasets)
    unknown = [d for d in datasets if d not in _WRITERS]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; expected a subset of {DATASETS}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "WORLD.json").unlink(missing_ok=True)  # from here on the world is incomplete until rewritten
    ranges = _id_ranges(sc)
    renderer = _Renderer(workers)
    counts = {}
    t0 = time.time()
    try:
        for name in datasets:
            tmp = root / f".{name}.tmp-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            counts[name] = _WRITERS[name](tmp, sc, int(seed), ranges, renderer)
            (tmp / MARKER).write_text(f"synthetic {name}: scale {scale_name}, seed {seed}\n")
            _replace_dir(tmp, root / name)
        renderer.close()
    except BaseException:
        renderer.terminate()
        raise
    info = {"version": WORLD_VERSION, "scale": scale_name, "sizes": asdict(sc), "seed": int(seed),
            "datasets": list(datasets), "counts": counts, "identity_ranges": {k: list(v) for k, v in ranges.items()}}
    atomic_write_text(root / "WORLD.json", json.dumps(info, indent=2) + "\n")
    return {**info, "seconds": round(time.time() - t0, 2)}


def world_is_complete(root: str | Path, scale: str | Scale = "quickstart", seed: int = 0,
                      datasets: Iterable[str] = DATASETS) -> bool:
    """Whether ``root/WORLD.json`` describes a finished world of this scale, seed and datasets."""
    root = Path(root)
    try:
        info = json.loads((root / "WORLD.json").read_text())
    except (OSError, ValueError):
        return False
    scale_name, sc = _scale(scale)
    return (info.get("version") == WORLD_VERSION and info.get("scale") == scale_name
            and info.get("sizes") == json.loads(json.dumps(asdict(sc))) and info.get("seed") == int(seed)
            and all(d in info.get("datasets", ()) and (root / d / MARKER).is_file() for d in datasets))


def ensure_world(root: str | Path, scale: str | Scale = "quickstart", seed: int = 0, workers: int | None = None,
                 datasets: Iterable[str] = DATASETS) -> Path:
    """Generate the world at ``root`` unless a complete one of this scale and seed is already there.

    Safe to call from every DDP rank at once: an exclusive ``fcntl`` lock on ``root/.lock`` lets one process
    generate while the others wait, then find ``WORLD.json`` and return.
    """
    import fcntl

    root = Path(root)
    datasets = tuple(datasets)
    if world_is_complete(root, scale, seed, datasets):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not world_is_complete(root, scale, seed, datasets):
                generate_world(root, scale, seed, workers=workers or min(2, os.cpu_count() or 1), datasets=datasets)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``lrface data synth [--root R] [--scale S] [--seed N] [--workers W] [--datasets ...]``."""
    parser = argparse.ArgumentParser(prog="lrface data synth",
                                     description="Write the synthetic face world in the real dataset formats.")
    parser.add_argument("--root", default=None, help="destination (default: data/synthetic/<scale>-<seed>)")
    parser.add_argument("--scale", default="quickstart", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete world is there")
    args = parser.parse_args(argv)
    root = Path(args.root or f"data/synthetic/{args.scale}-{args.seed}")
    if not args.force and world_is_complete(root, args.scale, args.seed, args.datasets):
        print(f"{root}: complete {args.scale} world (seed {args.seed}) already present")
        return 0
    info = generate_world(root, args.scale, args.seed, workers=args.workers, datasets=args.datasets)
    print(f"{root}: wrote {args.scale} world (seed {args.seed}) in {info['seconds']:.1f} s")
    print(json.dumps(info["counts"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
