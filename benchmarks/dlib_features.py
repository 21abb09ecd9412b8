"""dlib's ResNet as an F (``lrface.nets.dlib_backbone.DlibBackbone``) against dlib-bin itself, on the real photos.

dlib-bin: its HOG detector, 5-point landmarks and own 150² chip. The F: our MTCNN's five points → the ArcFace crop of
side S (as every F is fed) → dlib's chip re-cut from the crop in PyTorch → the ported ResNet. Per S: how far each
photo's F descriptor is from dlib-bin's (Euclidean, dlib's units; dlib's same-person threshold is 0.6), the
verification of every cross-photograph pair by distance < 0.6 and by angle < ``SAME_PERSON_ANGLE``, the same /
different means, and the time per face of each path (one thread, median of ``--repeats`` after a warm-up).

    python benchmarks/dlib_features.py [--photos data/real_photos] [--sizes 112 150 224] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.dlib_judges import median_time  # noqa: E402
from lrface.judges import DlibIdentityJudge  # noqa: E402
from lrface.judges.dlib_identity import THRESHOLD  # noqa: E402
from lrface.nets.dlib_backbone import SAME_PERSON_ANGLE, DlibBackbone  # noqa: E402
from lrface.nets.mtcnn import MTCNN  # noqa: E402
from lrface.real_lowres import align_crop, pair_list  # noqa: E402
from lrface.real_photos import load_photos  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _angles(d: np.ndarray) -> np.ndarray:
    u = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(u @ u.T, -1.0, 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="data/real_photos")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 150, 224])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mtcnn", default="weights/mtcnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    entries = yaml.safe_load((ROOT / "experiments/real_photos_report.yaml").read_text())["report"]["photos"]
    photos = load_photos(args.photos, entries)
    judge, mtcnn = DlibIdentityJudge(backend="dlib"), MTCNN(args.mtcnn)
    pairs, _ = pair_list([p.identity for p in photos], [p.source for p in photos])
    same = np.array([s for _, _, s in pairs])

    native, fives = [], []
    for p in photos:
        native.append(np.asarray(judge.embed(p.image)).reshape(-1))
        _, probs, landmarks = mtcnn.detect(p.image)
        fives.append(np.asarray(landmarks[int(np.argmax(probs))], dtype=np.float64))
    native = np.stack(native)
    chip = judge.chip(photos[0].image)
    t_native = median_time(lambda: judge.embed_chips(chip), args.repeats)

    def pair_stats(d: np.ndarray) -> tuple[float, float, float, float]:
        dist = np.linalg.norm(d[:, None] - d[None], axis=-1)
        ang = _angles(d)
        dd = np.array([dist[i, j] for i, j, _ in pairs])
        aa = np.array([ang[i, j] for i, j, _ in pairs])
        return (float(((dd < THRESHOLD) == same).mean()), float(((aa < SAME_PERSON_ANGLE) == same).mean()),
                float(dd[same].mean()), float(dd[~same].mean()))

    print(f"{len(photos)} photos, {len(pairs)} cross-photograph pairs ({int(same.sum())} same); "
          f"α = {SAME_PERSON_ANGLE:.1f}°\n")
    print("| descriptors | vs dlib-bin: mean / max distance | descriptor norms | acc @0.6 | acc @α | same / diff mean "
          "distance | s/face |")
    print("|---|---|---|---|---|---|---|")
    acc, acc_a, s_mean, d_mean = pair_stats(native)
    norms = np.linalg.norm(native, axis=-1)
    print(f"| dlib-bin (HOG + 5 points + own chip) | – | {norms.min():.2f}–{norms.max():.2f} | {acc:.2f} | {acc_a:.2f} | "
          f"{s_mean:.3f} / {d_mean:.3f} | {t_native:.3f} |")
    for size in args.sizes:
        f = DlibBackbone(input_size=size).eval()
        crops = np.stack([align_crop(p.image, five, size)[0] for p, five in zip(photos, fives)])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            ours = f(x).numpy()
            t_ours = median_time(lambda: f(x[:1]), args.repeats)
        gap = np.linalg.norm(ours - native, axis=-1)
        norms = np.linalg.norm(ours, axis=-1)
        acc, acc_a, s_mean, d_mean = pair_stats(ours)
        print(f"| F = DlibBackbone on the MTCNN ArcFace crop, S = {size} | {gap.mean():.3f} / {gap.max():.3f} | "
              f"{norms.min():.2f}–{norms.max():.2f} | {acc:.2f} | {acc_a:.2f} | {s_mean:.3f} / {d_mean:.3f} | "
              f"{t_ours:.3f} |")


if __name__ == "__main__":
    main()
