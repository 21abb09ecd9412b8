"""The package judges on the real photos (``data/real_photos``, from ``make setup``): per photo, the port's largest
difference from dlib-bin's descriptor, the distance between descriptors of dlib's chip and of the PyTorch chip
(``lrface.dlib_chip``), the judges' gender / age, and the time per face of dlib and of the port; then the dlib
distance matrix.

    python benchmarks/dlib_judges.py [--photos data/real_photos] [--repeats 5]

Times are the median of ``--repeats`` runs on one 150×150 chip, one thread, after one warm-up run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lrface.dlib_chip import dlib_face_chips  # noqa: E402
from lrface.judges import DlibIdentityJudge, GenderAgeJudge  # noqa: E402
from lrface.weights import REAL_PHOTOS  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="data/real_photos")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dlib_judge, port = DlibIdentityJudge(backend="dlib"), DlibIdentityJudge(backend="torch")
    gender_age = GenderAgeJudge()
    names = sorted(REAL_PHOTOS)
    descriptors = []
    print("| photo | identity | max abs port − dlib | torch chip: distance | dlib s/face | port s/face | P(male) "
          "| age |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        image = np.asarray(Image.open(Path(args.photos) / name).convert("RGB"))
        landmarks = dlib_judge.faces.landmarks(image)
        chip = dlib_judge.chip(image, landmarks)
        a, b = dlib_judge.embed_chips(chip)[0], port.embed_chips(chip)[0]
        torch_chip = dlib_face_chips(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float(),
                                     torch.from_numpy(landmarks)[None].float())[0]
        c = port.embed_chips(torch_chip.round().clamp(0, 255).byte().permute(1, 2, 0).numpy())[0]
        descriptors.append(a)
        t_dlib = median_time(lambda c=chip: dlib_judge.embed_chips(c), args.repeats)
        t_port = median_time(lambda c=chip: port.embed_chips(c), args.repeats)
        ga = gender_age.predict(image)
        print(f"| {name} | {REAL_PHOTOS[name]} | {np.abs(a - b).max():.2e} | {np.linalg.norm(a - c):.3f} | "
              f"{t_dlib:.3f} | {t_port:.3f} | "
              f"{ga['p_male']:.3f} | {ga['age']:.1f} |")
    d = np.stack(descriptors)
    dist = np.linalg.norm(d[:, None] - d[None], axis=-1)
    print("\ndlib distance (same person below 0.6)\n")
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for name, row in zip(names, dist):
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
