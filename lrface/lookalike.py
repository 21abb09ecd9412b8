"""The seed paper's lookalike dataset (``seeds/000_*.txt`` §3.3 "Siamese angle loss", Appendix A Algorithm 2).

Before each meta-epoch k ≥ 1 of Alg. 2, random CelebA-train identities are chosen (``choose-random-identity``) and,
for each, two distinct images i_GT, i'_GT (``choose-random-images``). Each is downscaled to a thumbnail i_LR
(32×32 in the paper) and upscaled by the PULSE search with the *current* F, minimising L_SR + λ·L_sim(i_LR), giving
the lookalikes i and i'. The triples (i_GT, i, i') are added to the set — the set only grows — and L_siam (§3.3)
then teaches F that i differs from i_GT and from i' while matching its own mirror image.

The reference of L_sim(i_LR): Eq. 5 defines L_sim(I_r) = sim(I_r, I, 0) on an *image* I_r, and §3.3 writes
"L_SR + L_sim(i_LR)", so I_r is the thumbnail itself, not the high-resolution i_GT (which would leak the answer into
the search). F needs a face crop, so I_r is the thumbnail bicubically upscaled to the generator's resolution and
warped like every generated image (``lrface.align.FixedAlignment.for_generator``): reference features
``F(align(upscale(i_LR)))``, as ``PulseSearchModule`` does for a thumbnail without ground truth.

No rejection (§3.2's L_sim > 0.1 rule) is applied: a lookalike that stays far from its thumbnail's features is still a
different face that downscales to i_LR, which is exactly what L_siam must learn to call "different".

On disk (issue #6 contract): ``<dir>/index.jsonl``, one JSON object per line
``{"id", "meta_epoch", "identity", "gt", "i", "i_prime", "gt_prime", "alpha_thr", "seed", "downscale_loss",
"L_sim"}`` with image paths relative to ``<dir>`` (``i_prime`` / ``gt_prime`` may be null), and
``<dir>/images/<id>_{gt,i,iprime,gtprime}.png`` (RGB uint8 at the generator's resolution, FFHQ framing). Every PNG is
written atomically before the index that names it; the index is rewritten atomically (temporary file + rename) with
the old lines first, so readers see either the previous set or the complete new one.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from lrface.align import FixedAlignment, generator_resolution
from lrface.io import atomic_write_bytes, atomic_write_text
from lrface.losses.identity import L_sim, PulseConstraints, theta
from lrface.losses.pulse import BicubicDownsample
from lrface.pulse import PulseSearch

__all__ = [
    "IMAGE_FIELDS",
    "INDEX_FIELDS",
    "INDEX_NAME",
    "PRIME_SEED_OFFSET",
    "add_to_index",
    "choose_identity_pairs",
    "encode_png",
    "generate_lookalikes",
    "make_thumbnails",
    "read_index",
    "write_lookalikes",
    "write_record_images",
]

INDEX_NAME = "index.jsonl"
IMAGES_DIR = "images"
#: Record image field → file-name suffix (``images/<id>_<suffix>.png``).
IMAGE_FIELDS = {"gt": "gt", "i": "i", "i_prime": "iprime", "gt_prime": "gtprime"}
#: Keys of one index line, in the order they are written.
INDEX_FIELDS = ("id", "meta_epoch", "identity", "gt", "i", "i_prime", "gt_prime", "alpha_thr", "seed",
                "downscale_loss", "L_sim")
#: i' is searched from seed + this offset. torch's CPU generator keeps only the low 32 bits of a seed, so i' starts
#: apart from i and from every other pair whose seed is below 2³¹ (the callback draws seeds there).
PRIME_SEED_OFFSET = 1 << 31

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OPTIONAL_IMAGES = ("i_prime", "gt_prime")


# -- Alg. 2: choose-random-identity / choose-random-images -----------------------------------------------------------


def choose_identity_pairs(celeba_identities, n: int, rng: np.random.Generator | int | None
                          ) -> list[tuple[int, int, int]]:
    """Alg. 2's ``choose-random-identity`` then ``choose-random-images``, ``n`` times.

    Only identities with at least two images can give (i_GT, i'_GT). Identities are drawn uniformly without
    replacement while the split has enough (then another shuffled round starts), and within an identity two
    *distinct* images uniformly at random.

    Args:
        celeba_identities: N identity labels, one per dataset index (``CelebADataset.identities``).
        n: number of pairs.
        rng: a ``numpy.random.Generator`` or a seed for one.

    Returns:
        n tuples ``(identity, index of i_GT, index of i'_GT)`` with the two indices different.

    Raises:
        ValueError: no identity has two images (and n > 0).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ids = np.asarray(celeba_identities).reshape(-1)
    order = np.argsort(ids, kind="stable")
    uniq, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    eligible = [(int(u), order[s:s + c]) for u, s, c in zip(uniq, starts, counts) if c >= 2]
    if n and not eligible:
        raise ValueError(f"no identity has two images among {len(ids)} (need one to pair i_GT with i'_GT)")
    picks: list[int] = []
    while len(picks) < n:
        picks.extend(int(j) for j in rng.permutation(len(eligible))[: n - len(picks)])
    out = []
    for j in picks:
        identity, members = eligible[j]
        a, b = rng.choice(members, size=2, replace=False)
        out.append((identity, int(a), int(b)))
    return out


# -- generation ------------------------------------------------------------------------------------------------------


def make_thumbnails(images: Tensor, thumbnail_size: int) -> Tensor:
    """i_LR: PULSE's bicubic downscale (the operator the search inverts), clamped to [0, 1].

    Args:
        images: B×3×R×R in [0, 1]; R a multiple of ``thumbnail_size``.
        thumbnail_size: thumbnail side (paper: 32).

    Returns:
        B×3×thumbnail_size×thumbnail_size.
    """
    res = images.shape[-1]
    if images.dim() != 4 or images.shape[-2] != res or res % int(thumbnail_size):
        raise ValueError(f"need B×3×R×R images with R a multiple of thumbnail_size={thumbnail_size}, got "
                         f"{tuple(images.shape)}")
    with torch.no_grad():
        return BicubicDownsample(res // int(thumbnail_size))(images.float()).clamp_(0.0, 1.0)


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics) for the duration; each submodule's own mode restored after."""
    if not isinstance(module, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _as_image(x: Any, what: str, res: int | None) -> Tensor:
    t = torch.as_tensor(x).float()
    if t.dim() != 3 or t.shape[0] != 3 or t.shape[1] != t.shape[2] or (res is not None and t.shape[1] != res):
        raise ValueError(f"{what}: expected a 3×R×R image in [0, 1] at the generator's resolution R={res}, got "
                         f"shape {tuple(t.shape)}")
    return t


def generate_lookalikes(
    nets: Any,
    generator: nn.Module,
    gaussian: Mapping[str, Tensor],
    pairs: Sequence[tuple[int, Tensor, Tensor | None]],
    thumbnail_size: int,
    search_kwargs: Mapping[str, Any] | None,
    lambda_sim: float,
    alpha_thr: float,
    gamma_temp: float,
    seeds: Sequence[int],
    device: torch.device | str,
    *,
    meta_epoch: int = 0,
    ids: Sequence[str] | None = None,
    batch_size: int = 8,
    align_size: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Alg. 2's inner step: lookalikes i, i' of i_GT, i'_GT by PULSE with L_SR + λ·L_sim(i_LR) under the current F.

    For every pair both sources are downscaled (:func:`make_thumbnails`) and searched as independent samples of one
    batched :class:`lrface.pulse.PulseSearch` (``batch_size`` pairs, i.e. up to 2·batch_size thumbnails, per search);
    L_sim (Eq. 5) enters through :class:`lrface.losses.identity.PulseConstraints` with reference features
    F(align(bicubic upscale of i_LR)) (see the module docstring) and the fixed FFHQ → ArcFace warp of
    :meth:`lrface.align.FixedAlignment.for_generator`. i is searched from ``seed``, i' from
    ``seed + PRIME_SEED_OFFSET``; every sample draws its start from its own seed, so a record does not depend on the
    batch it shares (nor on how pairs are sharded across ranks) beyond floating-point rounding. F runs in eval mode
    (restored after).

    Args:
        nets: :class:`lrface.weights.FeatureNets` (only ``F`` is used: aligned faces in [0, 1] → B×D), on ``device``.
        generator: the StyleGAN (``lrface.pulse`` protocol); moved to ``device``.
        gaussian: ``{"mean", "std"}`` Gaussian fit of the generator's mapping (:func:`lrface.pulse.gaussian_fit`).
        pairs: ``(identity, i_GT, i'_GT or None)`` with images 3×R×R in [0, 1], FFHQ-framed at the generator's
            resolution R (``CelebADataset(align="ffhq", image_size=R)``).
        thumbnail_size: side of i_LR (paper 32; R must be a multiple).
        search_kwargs: ``PulseSearch`` keyword arguments (``steps``, ``eps``, ``lr``, ``restarts``, ...).
        lambda_sim: λ of L_sim; 0 searches with L_SR only (L_sim is still measured).
        alpha_thr: α_thr of Eq. 4 in degrees (Alg. 1's current threshold).
        gamma_temp: γ_temp of Eq. 4 in degrees.
        seeds: one search seed per pair.
        device: where to search.
        meta_epoch: recorded in every record.
        ids: one unique id per pair (file names); default ``"m{meta_epoch:02d}-{seed}"``.
        batch_size: pairs per search.
        align_size: side of F's ArcFace crop; default ``nets.F.input_size`` (else 112).
        on_batch: ``on_batch(done, total)`` after every search (progress).

    Returns:
        One record per pair: ``id``, ``meta_epoch``, ``identity``, ``seed``, ``alpha_thr``, ``gamma_temp``,
        ``lambda_sim``; images (3×R×R float CPU in [0, 1]) ``gt``, ``i``, ``gt_prime``, ``i_prime`` (the last two
        None without i'_GT), thumbnails ``lr``, ``lr_prime`` and ``seed_prime`` (i''s search seed); per lookalike
        (``*_prime`` for i'): ``downscale_loss`` (unclamped MSE of DS(i) vs i_LR), ``L_sim`` (Eq. 5 toward the
        reference, measured on the returned image), ``angle_to_gt`` (θ(F(i), F(i_GT)) in degrees),
        ``angle_to_reference``, ``converged`` (within eps) and ``steps``.
    """
    if len(seeds) != len(pairs):
        raise ValueError(f"need one seed per pair: {len(seeds)} seeds for {len(pairs)} pairs")
    if ids is not None and len(ids) != len(pairs):
        raise ValueError(f"need one id per pair: {len(ids)} ids for {len(pairs)} pairs")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = [f"m{int(meta_epoch):02d}-{int(s)}" for s in seeds] if ids is None else [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("lookalike ids must be unique")
    device = torch.device(device)
    res = generator_resolution(generator)
    if res % int(thumbnail_size):
        raise ValueError(f"generator resolution {res} is not a multiple of thumbnail_size={thumbnail_size}")
    feat = nets.F
    size = int(align_size or getattr(feat, "input_size", 112))
    generator.to(device)
    align = FixedAlignment.for_generator(generator, size=size).to(device)
    kwargs = dict(search_kwargs or {})
    records: list[dict[str, Any]] = []
    with eval_mode(feat):
        for start in range(0, len(pairs), batch_size):
            chunk = list(range(start, min(start + batch_size, len(pairs))))
            sources, sample_seeds, owner = [], [], []
            for j in chunk:
                _, gt, gt_prime = pairs[j]
                sources.append(_as_image(gt, f"pair {j} i_GT", res))
                sample_seeds.append(int(seeds[j]))
                owner.append((j, "i"))
                if gt_prime is not None:
                    sources.append(_as_image(gt_prime, f"pair {j} i'_GT", res))
                    sample_seeds.append(int(seeds[j]) + PRIME_SEED_OFFSET)
                    owner.append((j, "i_prime"))
            hr = torch.stack(sources).to(device)
            thumbs = make_thumbnails(hr, thumbnail_size)
            with torch.no_grad():
                upscaled = F_.interpolate(thumbs, size=(res, res), mode="bicubic", align_corners=False).clamp(0, 1)
                reference = feat(align(upscaled)).float()
                f_gt = feat(align(hr)).float()
            constraints = None
            if lambda_sim:
                constraints = PulseConstraints(feat, align_fn=align, lambdas=(float(lambda_sim), 0.0, 0.0),
                                               alpha_thr=alpha_thr, gamma_temp=gamma_temp,
                                               reference_features=reference)
            search = PulseSearch(generator, {k: torch.as_tensor(v) for k, v in gaussian.items()}, **kwargs,
                                 extra_losses=constraints.as_extra_losses() if constraints is not None else None)
            with torch.enable_grad():
                out = search.search(thumbs, sample_seeds)
            if constraints is not None:
                constraints.clear_cache()
            images = out["images"].detach()
            with torch.no_grad():
                f_img = feat(align(images)).float()
                l_sim = L_sim(f_img, reference, alpha_thr, gamma_temp)
                to_gt, to_ref = theta(f_img, f_gt), theta(f_img, reference)
            per: dict[int, dict[str, Any]] = {}
            for row, (j, which) in enumerate(owner):
                rec = per.setdefault(j, {})
                suffix = "" if which == "i" else "_prime"
                rec[which] = images[row].float().cpu()
                rec["gt" + suffix] = hr[row].float().cpu()
                rec["lr" + suffix] = thumbs[row].float().cpu()
                rec["downscale_loss" + suffix] = float(out["downscale_loss"][row])
                rec["L_sim" + suffix] = float(l_sim[row])
                rec["angle_to_gt" + suffix] = float(to_gt[row])
                rec["angle_to_reference" + suffix] = float(to_ref[row])
                rec["converged" + suffix] = bool(out["converged"][row])
                rec["steps" + suffix] = int(out["steps"][row])
            for j in chunk:
                rec = {"id": ids[j], "meta_epoch": int(meta_epoch), "identity": int(pairs[j][0]),
                       "seed": int(seeds[j]), "alpha_thr": float(alpha_thr), "gamma_temp": float(gamma_temp),
                       "lambda_sim": float(lambda_sim), "i_prime": None, "gt_prime": None, "lr_prime": None,
                       "seed_prime": int(seeds[j]) + PRIME_SEED_OFFSET if pairs[j][2] is not None else None}
                rec.update(per[j])
                records.append(rec)
            if on_batch is not None:
                on_batch(len(records), len(pairs))
    return records


# -- on disk ---------------------------------------------------------------------------------------------------------


def encode_png(image: Any) -> bytes:
    """An image as PNG bytes (RGB uint8).

    Args:
        image: 3×H×W float tensor / array in [0, 1] (rounded to 8 bits), H×W×3 uint8 array, or PNG bytes (returned
            as they are).

    Returns:
        the PNG file's bytes.
    """
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        if not bytes(image[:8]) == _PNG_SIGNATURE:
            raise ValueError("encode_png: bytes given are not a PNG file")
        return bytes(image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        arr = image
    else:
        t = torch.as_tensor(image).detach().float().cpu()
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"encode_png: expected a 3×H×W image in [0, 1] or H×W×3 uint8, got {tuple(t.shape)}")
        arr = t.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"encode_png: expected H×W×3 uint8, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_id(rid: Any) -> str:
    rid = str(rid)
    if not rid or rid in (".", "..") or any(c in rid for c in "/\\\n\r\0"):
        raise ValueError(f"lookalike id {rid!r} cannot name a file")
    return rid


def write_record_images(directory: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Any]:
    """Writes one record's PNGs atomically and returns its index line (not yet in the index).

    Args:
        directory: the lookalike set's folder.
        record: a record of :func:`generate_lookalikes` (images as tensors, uint8 arrays or PNG bytes); needs the
            keys of :data:`INDEX_FIELDS` (image fields ``i_prime`` / ``gt_prime`` may be None or absent).

    Returns:
        the index line: a dict with exactly :data:`INDEX_FIELDS`, image paths relative to ``directory``.
    """
    directory = Path(directory)
    rid = _check_id(record.get("id"))
    missing = [k for k in INDEX_FIELDS if k not in record and k not in _OPTIONAL_IMAGES]
    if missing:
        raise KeyError(f"lookalike record {rid!r} lacks {missing}")
    line: dict[str, Any] = {}
    for key in INDEX_FIELDS:
        value = record.get(key)
        if key in IMAGE_FIELDS:
            if value is None:
                if key not in _OPTIONAL_IMAGES:
                    raise ValueError(f"lookalike record {rid!r}: image {key!r} is None")
                line[key] = None
                continue
            rel = f"{IMAGES_DIR}/{rid}_{IMAGE_FIELDS[key]}.png"
            atomic_write_bytes(directory / rel, encode_png(value))
            line[key] = rel
        elif key in ("meta_epoch", "identity", "seed"):
            line[key] = int(value)
        elif key in ("alpha_thr", "downscale_loss", "L_sim"):
            line[key] = float(value)
        else:
            line[key] = rid
    return line


def _validate_line(obj: Any, path: Path, lineno: int) -> dict[str, Any]:
    def bad(problem: str, expected: str) -> ValueError:
        return ValueError(f"{path}:{lineno}: {problem}; expected {expected}")

    if not isinstance(obj, dict):
        raise bad(f"a JSON {type(obj).__name__}", "one JSON object per line")
    missing = [k for k in INDEX_FIELDS if k not in obj]
    if missing:
        raise bad(f"missing keys {missing}", f"the keys {list(INDEX_FIELDS)}")
    for key in ("meta_epoch", "identity", "seed"):
        if not isinstance(obj[key], int) or isinstance(obj[key], bool):
            raise bad(f"{key}={obj[key]!r}", "an integer")
    for key in ("alpha_thr", "downscale_loss", "L_sim"):
        if not isinstance(obj[key], (int, float)) or isinstance(obj[key], bool):
            raise bad(f"{key}={obj[key]!r}", "a number")
    if not isinstance(obj["id"], str) or not obj["id"]:
        raise bad(f"id={obj['id']!r}", "a non-empty string")
    for key in IMAGE_FIELDS:
        value = obj[key]
        if value is None and key in _OPTIONAL_IMAGES:
            continue
        if not isinstance(value, str) or not value.endswith(".png") or value.startswith("/") or ".." in value:
            raise bad(f"{key}={value!r}", "a .png path relative to the set's folder" +
                      (" or null" if key in _OPTIONAL_IMAGES else ""))
    return obj


def read_index(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The lookalike set's index lines, in file order (oldest first); [] when there is no index yet.

    Raises:
        ValueError: a line is not a JSON object with :data:`INDEX_FIELDS` of the right types (the message names the
            file and the 1-based line), or an id repeats.
    """
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        return []
    out, seen = [], set()
    for lineno, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg}); expected one JSON object per line") from None
        line = _validate_line(obj, path, lineno)
        if line["id"] in seen:
            raise ValueError(f"{path}:{lineno}: id {line['id']!r} repeats; expected unique ids")
        seen.add(line["id"])
        out.append(line)
    return out


def add_to_index(directory: str | os.PathLike, lines: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Appends index lines (whose images are already written) and rewrites ``index.jsonl`` atomically.

    A line whose id is already in the index replaces the old line in place (writing the same record twice, e.g.
    after a crash between the images and the index, does not duplicate it); all other old lines stay as they were.

    Returns:
        the whole index after the addition.
    """
    directory = Path(directory)
    current = read_index(directory)
    position = {line["id"]: k for k, line in enumerate(current)}
    for new in lines:
        new = {k: new[k] for k in INDEX_FIELDS}
        for key in IMAGE_FIELDS:
            if new[key] is not None and not (directory / new[key]).is_file():
                raise FileNotFoundError(f"{directory / new[key]}: image of lookalike {new['id']!r} not written "
                                        "before its index line")
        if new["id"] in position:
            current[position[new["id"]]] = new
        else:
            position[new["id"]] = len(current)
            current.append(new)
    text = "".join(json.dumps(line, allow_nan=True) + "\n" for line in current)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / INDEX_NAME, text)
    return current


def write_lookalikes(directory: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Adds records to the lookalike set on disk: every PNG first (atomically), then the index (atomically).

    Args:
        directory: the set's folder (created if needed).
        records: records of :func:`generate_lookalikes` (or with images as uint8 arrays / PNG bytes).

    Returns:
        the index lines of ``records``, in order.
    """
    lines = [write_record_images(directory, r) for r in records]
    add_to_index(directory, lines)
    return lines

