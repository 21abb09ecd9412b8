"""MS1M input pipeline throughput: RecordIO + JPEG decode + augmentation vs plain PIL decode of JPEG files.

    python benchmarks/data_throughput.py [--root /data/faces_emore] [--num-images 2000] [--workers 2]

Each worker is a forked process (as DataLoader workers are) that handles its own shard of the images and reports
images/s and peak RSS (``resource.getrusage``; a forked child's peak includes the pages it shares with the parent,
so the growth during the run is shown too). Without ``--root`` a temporary set of smooth random 112×112 JPEGs is
written both as an InsightFace ``.rec`` and as files; with ``--root`` the first images of the real ``.rec`` are also
extracted to files so both paths decode the same bytes.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _smooth_jpeg(rng: np.random.Generator, size: int, quality: int = 95) -> bytes:
    coarse = Image.fromarray(rng.integers(0, 256, size=(7, 7, 3), dtype=np.uint8))
    image = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)).astype(np.int16)
    image = np.clip(image + rng.integers(-6, 7, size=image.shape), 0, 255).astype(np.uint8)  # some JPEG-visible texture
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_synthetic(out: Path, n: int, size: int = 112, classes: int = 100, seed: int = 0) -> Path:
    """Writes ``out/rec`` (InsightFace folder) and returns it."""
    from datamodules.formats.recordio import write_insightface_rec

    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, classes, size=n))
    write_insightface_rec(out / "rec", ((int(label), _smooth_jpeg(rng, size)) for label in labels), num_classes=classes,
                          image_size=(size, size))
    return out / "rec"


def extract_files(rec_root: Path, n: int, out: Path) -> list[Path]:
    """The first ``n`` image records of the ``.rec`` written out as JPEG files (the same bytes)."""
    from datamodules.formats.recordio import InsightFaceRec

    rec = InsightFaceRec(rec_root)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, key in enumerate(list(rec.image_keys[:n])):
        path = out / f"{i:07d}.jpg"
        path.write_bytes(rec.image_bytes(int(key)))
        paths.append(path)
    return paths


def build_augment():
    import albumentations as A

    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=1.0),
        A.ImageCompression(quality_range=(40, 95), p=1.0),
    ])


def _rss_now_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _worker(mode: str, payload, shard: np.ndarray, queue) -> None:
    import torch

    torch.set_num_threads(1)  # as a DataLoader worker does: a forked copy of the parent's thread pool oversubscribes
    try:
        import cv2

        cv2.setNumThreads(0)  # workers are the parallelism, as in datamodules.base.worker_init_fn
    except ImportError:  # pragma: no cover
        pass
    start_rss = _rss_now_kb()
    t0 = time.perf_counter()
    if mode == "rec":
        dataset = payload
        for i in shard:
            item = dataset[int(i)]
            assert item is not None
    elif mode == "rec_decode":
        from datamodules.image_io import decode_image

        rec = payload
        for i in shard:
            _, data = rec.sample(int(rec.image_keys[int(i)]))
            decode_image(data, "bench")
    else:
        for i in shard:
            with Image.open(payload[int(i)]) as im:
                np.asarray(im.convert("RGB"))
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put((len(shard), elapsed, peak, peak - start_rss))


def run_mode(mode: str, payload, n: int, workers: int) -> dict:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    shards = np.array_split(np.arange(n), workers)
    procs = [ctx.Process(target=_worker, args=(mode, payload, shard, queue)) for shard in shards]
    for p in procs:
        p.start()
    results = [queue.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    rates = [count / elapsed for count, elapsed, _, _ in results]
    return {"per_worker": float(np.mean(rates)), "total": float(sum(rates)),
            "peak_rss_mb": max(r[2] for r in results) / 1024, "rss_growth_mb": max(r[3] for r in results) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="a real InsightFace folder (train.rec/.idx/property)")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per mode")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from datamodules.ms1m import MS1MDataset

    with tempfile.TemporaryDirectory(prefix="lrface_bench_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        root = args.root if args.root is not None else make_synthetic(tmp, args.num_images)
        files = extract_files(root, args.num_images, tmp / "files")
        n = len(files)
        setup_s = time.perf_counter() - t0
        augment = build_augment()
        dataset = MS1MDataset(root, transform=lambda image: augment(image=image)["image"])
        rec_bytes = sum(p.stat().st_size for p in files)

        results = {}
        for mode, payload in (("rec", dataset), ("rec_decode", dataset.rec), ("files", files)):
            runs = [run_mode(mode, payload, n, args.workers) for _ in range(args.repeats)]
            results[mode] = max(runs, key=lambda r: r["per_worker"])

    a, b = results["rec"], results["files"]
    print(f"{n} images of {'synthetic 112x112 JPEG' if args.root is None else args.root} "
          f"({rec_bytes / n / 1024:.1f} KiB each), {args.workers} forked worker(s), best of {args.repeats}; "
          f"setup {setup_s:.1f} s")
    header = f"{'pipeline':<58} {'img/s/worker':>12} {'img/s total':>11} {'peak RSS MB':>11} {'RSS growth MB':>13}"
    print(header)
    print("-" * len(header))
    print(f"{'(a) MS1MDataset: RecordIO + JPEG decode + aug + to_tensor':<58} {a['per_worker']:>12.0f} "
          f"{a['total']:>11.0f} {a['peak_rss_mb']:>11.1f} {a['rss_growth_mb']:>13.1f}")
    c = results["rec_decode"]
    print(f"{'    (of which) RecordIO read + PIL decode, no aug/tensor':<58} {c['per_worker']:>12.0f} "
          f"{c['total']:>11.0f} {c['peak_rss_mb']:>11.1f} {c['rss_growth_mb']:>13.1f}")
    print(f"{'(b) PIL decode of the same JPEG files':<58} {b['per_worker']:>12.0f} "
          f"{b['total']:>11.0f} {b['peak_rss_mb']:>11.1f} {b['rss_growth_mb']:>13.1f}")
    print(f"ratio (a)/(b): {a['per_worker'] / b['per_worker']:.2f}   "
          f"(RecordIO read + decode)/(b): {c['per_worker'] / b['per_worker']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
