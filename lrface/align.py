"""Five-point face alignment to the ArcFace 112×112 template (insightface's recipe), batched and differentiable.

insightface aligns a face by estimating the similarity transform (rotation, uniform scale, translation) that maps
the five detected landmarks — left eye, right eye, nose tip, left and right mouth corners, in the *image's* left /
right — onto a fixed template, then warping with ``cv2.warpAffine(..., borderValue=0)``. Here the estimate is
Umeyama's closed form (Umeyama, PAMI 1991) written with ``torch.linalg.svd`` so a whole batch is solved at once and
gradients flow through both the landmarks and the pixels; the warp is kornia's ``warp_affine`` with
``align_corners=True``, which reproduces ``cv2.warpAffine`` for the same 2×3 matrix (pixel centres at integer
coordinates, origin top-left). A NumPy single-image path (``estimate_similarity_np`` / ``warp_np``) serves dataset
workers, where images are uint8 arrays.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# insightface eval_ijbc.py: base template with +8 added to every x (the 96→112 width change), in 112×112 pixels.
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),  # left eye
    (73.5318, 51.5014),  # right eye
    (56.0252, 71.7366),  # nose tip
    (41.5493, 92.3655),  # left mouth corner
    (70.7299, 92.2041),  # right mouth corner
)

# Index permutation that keeps the semantic order (left eye, right eye, nose, left mouth, right mouth) after a
# horizontal flip: the image's left eye becomes its right eye.
FIVE_POINT_FLIP = (1, 0, 2, 4, 3)


def arcface_template(image_size: int = 112, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """The ArcFace five-point template scaled to an ``image_size``×``image_size`` crop.

    Returns:
        5×2 tensor of (x, y) pixel coordinates.
    """
    return torch.tensor(ARCFACE_TEMPLATE_112, dtype=dtype, device=device) * (image_size / 112.0)


def arcface_template_np(image_size: int = 112) -> np.ndarray:
    """NumPy twin of :func:`arcface_template`: 5×2 float64."""
    return np.asarray(ARCFACE_TEMPLATE_112, dtype=np.float64) * (image_size / 112.0)


def estimate_similarity(src: Tensor, dst: Tensor) -> Tensor:
    """Batched least-squares similarity transform (Umeyama) mapping ``src`` points onto ``dst``.

    Solves ``min_{s,R,t} sum_i ||s R src_i + t - dst_i||^2`` with ``R`` a proper rotation (det +1): when the
    best orthogonal fit would be a reflection, the smallest singular direction is flipped, as in Umeyama's Eq. 39.

    Args:
        src: B×N×2 (or N×2) source points, N ≥ 2.
        dst: B×N×2 or N×2 destination points (an N×2 ``dst`` is shared by the batch).

    Returns:
        B×2×3 matrices ``[s R | t]`` (2×3 if both inputs were unbatched), in the promoted floating dtype of the
        inputs (at least float32: SVD is not implemented for half precision).
    """
    unbatched = src.dim() == 2 and dst.dim() == 2
    if src.dim() == 2:
        src = src.unsqueeze(0)
    if dst.dim() == 2:
        dst = dst.unsqueeze(0)
    src, dst = torch.broadcast_tensors(src, dst)
    if src.shape[-1] != 2 or src.shape[-2] < 2:
        raise ValueError(f"expected B×N×2 points with N ≥ 2, got {tuple(src.shape)}")
    dtype = torch.promote_types(torch.promote_types(src.dtype, dst.dtype), torch.float32)
    src, dst = src.to(dtype), dst.to(dtype)
    n = src.shape[-2]
    mu_src, mu_dst = src.mean(dim=-2, keepdim=True), dst.mean(dim=-2, keepdim=True)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.transpose(-1, -2) @ src_c / n  # B×2×2, Umeyama's Sigma_xy
    u, sig, vh = torch.linalg.svd(cov)
    d = torch.ones_like(sig)
    d[..., -1] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    # sign() is 0 only for an exactly singular U or V, which orthogonal SVD factors never are.
    rot = u @ torch.diag_embed(d) @ vh
    var_src = src_c.pow(2).sum(dim=(-1, -2)) / n
    scale = (sig * d).sum(dim=-1) / var_src.clamp_min(torch.finfo(dtype).tiny)
    t = mu_dst.squeeze(-2) - scale[:, None] * (rot @ mu_src.transpose(-1, -2)).squeeze(-1)
    m = torch.cat([scale[:, None, None] * rot, t[:, :, None]], dim=-1)
    return m[0] if unbatched else m


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Apply 2×3 affine matrices to points.

    Args:
        points: B×N×2 (x, y).
        matrix: B×2×3 (or 2×3, shared).

    Returns:
        B×N×2 transformed points.
    """
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., None, :, 2]


def align_faces(images: Tensor, landmarks: Tensor, size: int = 112, *, return_matrix: bool = False,
                padding_mode: str = "zeros") -> Tensor | tuple[Tensor, Tensor]:
    """Warp each face so its five landmarks land on the ArcFace template of a ``size``×``size`` crop.

    Differentiable w.r.t. ``images`` and ``landmarks``; pixels outside the source become 0 (``padding_mode``
    ``"zeros"``), as insightface's ``borderValue=0.0``.

    Args:
        images: B×C×H×W float images.
        landmarks: B×5×2 (x, y) pixel coordinates in ``images`` (left eye, right eye, nose, left mouth, right mouth).
        size: output side; the template is scaled by ``size / 112``.
        return_matrix: also return the B×2×3 source→crop matrices (apply with :func:`transform_points`).
        padding_mode: kornia ``warp_affine`` padding mode.

    Returns:
        B×C×size×size aligned crops (and the matrices if asked).
    """
    from kornia.geometry.transform import warp_affine

    if images.dim() != 4 or landmarks.shape[-2:] != (5, 2) or landmarks.shape[0] != images.shape[0]:
        raise ValueError(f"expected images B×C×H×W and landmarks B×5×2, got {tuple(images.shape)} and "
                         f"{tuple(landmarks.shape)}")
    template = arcface_template(size, dtype=torch.float32, device=images.device)
    m = estimate_similarity(landmarks.float(), template)
    compute_dtype = torch.promote_types(images.dtype, torch.float32)
    out = warp_affine(images.to(compute_dtype), m.to(compute_dtype), dsize=(size, size), mode="bilinear",
                      padding_mode=padding_mode, align_corners=True).to(images.dtype)
    return (out, m) if return_matrix else out


def estimate_similarity_np(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Single-set Umeyama similarity in float64 (same maths as :func:`estimate_similarity`).

    Args:
        src: N×2 source points.
        dst: N×2 destination points.

    Returns:
        2×3 float64 matrix ``[s R | t]`` mapping ``src`` onto ``dst``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two N×2 point sets with N ≥ 2, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / len(src)
    u, sig, vh = np.linalg.svd(cov)
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vh))])
    rot = u @ np.diag(d) @ vh
    var_src = (src_c ** 2).sum() / len(src)
    scale = float((sig * d).sum() / max(var_src, np.finfo(np.float64).tiny))
    t = mu_dst - scale * rot @ mu_src
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def transform_points_np(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """N×2 points through a 2×3 affine matrix → N×2 float64."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def _invert_affine_np(matrix: np.ndarray) -> np.ndarray:
    a_inv = np.linalg.inv(matrix[:, :2])
    return np.concatenate([a_inv, (-a_inv @ matrix[:, 2])[:, None]], axis=1)


def warp_np(image: np.ndarray, matrix: np.ndarray, size: int | tuple[int, int] = 112, *,
            backend: str = "cv2", border_value: int = 0) -> np.ndarray:
    """Warp an H×W×C uint8 image with a source→destination 2×3 matrix (``cv2.warpAffine`` semantics, bilinear).

    Args:
        image: H×W×C uint8 (or float32) array.
        matrix: 2×3 source→destination pixel matrix (pixel centres at integer coordinates).
        size: output ``side`` or ``(height, width)``.
        backend: ``"cv2"`` or ``"pil"``; both give the same geometry (PIL samples at half-pixel centres, so the
            inverse matrix is shifted accordingly).
        border_value: fill for pixels mapped from outside the image.

    Returns:
        out_h×out_w×C array of the input dtype.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    matrix = np.asarray(matrix, dtype=np.float64)
    if backend == "cv2":
        import cv2

        out = cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(border_value,) * 4)
        return out[..., None] if out.ndim == 2 and image.ndim == 3 else out
    if backend == "pil":
        from PIL import Image

        inv = _invert_affine_np(matrix)
        # PIL maps output pixel centre (x + 0.5) to input coordinate c, then samples at c - 0.5; fold the two
        # half-pixel shifts into the offset so integer-centre matrices (cv2 / kornia convention) carry over.
        offset = inv[:, 2] + 0.5 - inv[:, :2] @ np.array([0.5, 0.5])
        coeffs = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
        squeeze = image.ndim == 3 and image.shape[2] == 1
        pil = Image.fromarray(image[..., 0] if squeeze else image)
        fill = border_value if pil.mode in ("L", "F", "I") else (border_value,) * len(pil.getbands())
        out = np.asarray(pil.transform((out_w, out_h), Image.Transform.AFFINE, coeffs,
                                       resample=Image.Resampling.BILINEAR, fillcolor=fill))
        return out[..., None] if squeeze else out
    raise ValueError(f"backend must be 'cv2' or 'pil', got {backend!r}")


def align_face_np(image: np.ndarray, landmarks: np.ndarray, size: int = 112, *,
                  backend: str = "cv2") -> tuple[np.ndarray, np.ndarray]:
    """Single-image ArcFace alignment (insightface ``norm_crop``).

    Args:
        image: H×W×C uint8.
        landmarks: 5×2 (x, y) in ``image``.
        size: output side.
        backend: ``"cv2"`` or ``"pil"`` (see :func:`warp_np`).

    Returns:
        (size×size×C crop, 5×2 float64 landmarks in the crop).
    """
    matrix = estimate_similarity_np(landmarks, arcface_template_np(size))
    return warp_np(image, matrix, size, backend=backend), transform_points_np(landmarks, matrix)


# -- generator framing (FFHQ) -------------------------------------------------------------------------------------

# Where the five landmarks sit in an FFHQ-aligned 1024×1024 image. FFHQ's rule (PULSE's align_face, reference
# §8) builds the crop quad from the eye midpoint e and the eye-to-mouth vector: side 2·max(2|e2e|, 1.8|e2m|) and
# centre e + 0.1·e2m. With the typical frontal proportion |e2m| = |e2e| = d the first term wins, so the side is 4d:
# d = 1024/4 = 256, the eyes sit at 512 ∓ 128 on a line 0.1·d = 25.6 px above the centre (y = 486.4), the mouth
# d below them (y = 742.4). The mouth width (0.828·d) and the nose height (0.495 of the eye→mouth drop) are taken
# from the ArcFace template's proportions. Values rounded to whole pixels. A choice, not a measurement: every
# consumer accepts another template (``generator.face_template`` or an explicit argument).
FFHQ_TEMPLATE_1024 = (
    (384.0, 486.0),  # left eye
    (640.0, 486.0),  # right eye
    (512.0, 612.0),  # nose tip
    (406.0, 742.0),  # left mouth corner
    (618.0, 742.0),  # right mouth corner
)


def ffhq_template(resolution: int = 1024, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """The FFHQ five-point template scaled to a ``resolution``×``resolution`` image (plain ``resolution/1024``
    scaling, as :func:`arcface_template`).

    Returns:
        5×2 tensor of (x, y) pixel coordinates.
    """
    return torch.tensor(FFHQ_TEMPLATE_1024, dtype=dtype, device=device) * (resolution / 1024.0)


def ffhq_template_np(resolution: int = 1024) -> np.ndarray:
    """NumPy twin of :func:`ffhq_template`: 5×2 float64."""
    return np.asarray(FFHQ_TEMPLATE_1024, dtype=np.float64) * (resolution / 1024.0)


def generator_resolution(generator) -> int:
    """Output side of a generator: ``size`` (StyleGAN2) or ``resolution`` (StyleGAN1)."""
    for name in ("size", "resolution"):
        value = getattr(generator, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise AttributeError(f"{type(generator).__name__} has neither an int `size` nor `resolution` attribute")


def generator_template(generator, resolution: int | None = None) -> Tensor:
    """Where a generator puts the five landmarks: its own ``face_template`` (5×2, in its output pixels) if it has
    one, else the FFHQ template.

    Args:
        generator: a generator module (``size`` or ``resolution`` gives its output side).
        resolution: the pixel grid of the returned template; default the generator's own output side.

    Returns:
        5×2 float32 (x, y) on the generator's device when it has parameters.
    """
    own = generator_resolution(generator)
    resolution = own if resolution is None else int(resolution)
    device = next((p.device for p in generator.parameters()), None) if hasattr(generator, "parameters") else None
    template = getattr(generator, "face_template", None)
    if template is None:
        return ffhq_template(resolution, device=device)
    template = torch.as_tensor(template, dtype=torch.float32, device=device)
    if template.shape != (5, 2):
        raise ValueError(f"{type(generator).__name__}.face_template must be 5×2, got {tuple(template.shape)}")
    return template * (resolution / own)


class FixedAlignment(torch.nn.Module):
    """A fixed, differentiable similarity warp from a known framing (e.g. a generator's FFHQ template) to the ArcFace
    crop: what feeds the generated images to F during the constrained search (seed paper Eq. 4–8).

    Args:
        landmarks: 5×2 (x, y) landmark positions, in pixels of a ``resolution``×``resolution`` image.
        resolution: the pixel grid of ``landmarks``.
        size: side of the ArcFace crop.
    """

    def __init__(self, landmarks: Tensor, resolution: int, size: int = 112):
        super().__init__()
        landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
        if landmarks.shape != (5, 2):
            raise ValueError(f"expected 5×2 landmarks, got {tuple(landmarks.shape)}")
        self.resolution, self.size = int(resolution), int(size)
        self.register_buffer("matrix", estimate_similarity(landmarks.cpu(), arcface_template(size)))

    @classmethod
    def for_generator(cls, generator, size: int = 112) -> "FixedAlignment":
        """From ``generator_template(generator)`` at the generator's own resolution."""
        resolution = generator_resolution(generator)
        template = generator_template(generator, resolution)
        return cls(template.cpu(), resolution, size).to(template.device)

    def forward(self, images: Tensor) -> Tensor:
        """Warp B×C×R×R images (any R; the landmarks are rescaled by R/resolution) → B×C×size×size.

        Differentiable w.r.t. ``images``; outside pixels are 0 (insightface's border), bilinear, ``align_corners``.
        """
        from kornia.geometry.transform import warp_affine

        if images.dim() != 4:
            raise ValueError(f"expected B×C×H×W images, got {tuple(images.shape)}")
        compute_dtype = torch.promote_types(images.dtype, torch.float32)
        m = self.matrix.to(device=images.device, dtype=compute_dtype).clone()
        m[:, :2] = m[:, :2] * (self.resolution / images.shape[-1])
        out = warp_affine(images.to(compute_dtype), m.expand(images.shape[0], 2, 3), dsize=(self.size, self.size),
                          mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.to(images.dtype)


class MTCNNAlignment(torch.nn.Module):
    """Landmarks detected by MTCNN on the (detached) images, then the differentiable ArcFace warp
    (:func:`align_faces`): for generators whose faces are not at a fixed place.

    Detection runs on every ``redetect_every``-th call (and whenever the batch shape changes); in between, each batch
    row keeps its last landmarks. Rows where MTCNN finds no face use ``fallback``; they are counted in
    :attr:`misses` (once per detection). Without a fallback the images are assumed FFHQ-aligned
    (``FixedAlignment(ffhq_template(R), R, size)``), the framing every generator is trained on here.

    Args:
        mtcnn: an :class:`lrface.nets.mtcnn.MTCNN` (anything with ``detect(uint8 H×W×3) → boxes, probs,
            landmarks N×5×2`` sorted by probability).
        size: side of the ArcFace crop.
        fallback: alignment for rows without a detected face.
        redetect_every: detect on every k-th call.
    """

    def __init__(self, mtcnn, size: int = 112, fallback: FixedAlignment | None = None, redetect_every: int = 1):
        super().__init__()
        if redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1, got {redetect_every}")
        self.mtcnn, self.size, self.fallback, self.redetect_every = mtcnn, int(size), fallback, int(redetect_every)
        self.misses = 0
        self.calls = 0
        self._landmarks: Tensor | None = None  # B×5×2, cached per batch row
        self._found: Tensor | None = None  # B bool
        self._shape: tuple[int, ...] | None = None

    @torch.no_grad()
    def detect(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Most confident face's landmarks per image.

        Args:
            images: B×3×H×W in [0, 1] (detached and quantised to uint8 for MTCNN).

        Returns:
            (B×5×2 float32 landmarks on the images' device, zero where none was found; B bool found).
        """
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        landmarks = torch.zeros(images.shape[0], 5, 2)
        found = torch.zeros(images.shape[0], dtype=torch.bool)
        for i, arr in enumerate(arrays):
            _, probs, points = self.mtcnn.detect(np.ascontiguousarray(arr))
            if len(probs):
                landmarks[i] = torch.from_numpy(np.asarray(points[int(np.argmax(probs))], dtype=np.float32))
                found[i] = True
        return landmarks.to(images.device), found.to(images.device)

    def forward(self, images: Tensor) -> Tensor:
        """B×3×H×W images in [0, 1] → B×3×size×size ArcFace crops, differentiable w.r.t. the images."""
        shape = tuple(images.shape)
        if self._landmarks is None or shape != self._shape or self.calls % self.redetect_every == 0:
            self._landmarks, self._found = self.detect(images)
            self._shape = shape
            self.misses += int((~self._found).sum())
        self.calls += 1
        found = self._found.to(images.device)
        if bool(found.all()):
            return align_faces(images, self._landmarks.to(images.device), self.size)
        # rows are warped separately (not blended with torch.where): the zero landmarks of a missed row give a
        # degenerate similarity whose warp must not enter the graph at all
        fallback = self.fallback
        if fallback is None:
            fallback = FixedAlignment(ffhq_template(images.shape[-1]), images.shape[-1], self.size)
        fallback = fallback.to(images.device)
        hit, miss = found.nonzero().squeeze(1), (~found).nonzero().squeeze(1)
        out = images.new_zeros(images.shape[0], images.shape[1], self.size, self.size)
        out = out.index_put((miss,), fallback(images[miss]))
        if hit.numel():
            out = out.index_put((hit,), align_faces(images[hit], self._landmarks.to(images.device)[hit], self.size))
        return out


# -- dlib face chips (FairFace) -----------------------------------------------------------------------------------

# dlib ``get_face_chip`` / ``get_face_chip_details``: the five landmarks of dlib's mean face (image-left eye,
# image-right eye, nose tip, left / right mouth corner), in a unit box the mean face spans. A chip of side ``size``
# with padding ``p`` maps a unit coordinate u to (u + p) / (1 + 2p) · size (FairFace: p = 0.25 or 1.25, size 224).
DLIB_UNIT_TEMPLATE = ((0.225, 0.23), (0.775, 0.23), (0.5, 0.60), (0.31, 0.86), (0.69, 0.86))


def dlib_chip_template_np(size: int | tuple[int, int], padding: float) -> np.ndarray:
    """Where dlib's face-chip alignment puts the five landmarks in a chip of ``size`` with ``padding``.

    On real FairFace this is the approximation dlib's own alignment implies: each chip was made by the similarity
    that best fits *that* face's landmarks onto the mean-face template, so an individual face only sits near (not
    on) these points; per-image landmarks are not shipped with FairFace.

    Args:
        size: chip side, or ``(height, width)``.
        padding: dlib's ``padding`` (0.25 for FairFace's main margin, 1.25 for the wide one).

    Returns:
        5×2 float64 (x, y) pixel coordinates.
    """
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    unit = (np.asarray(DLIB_UNIT_TEMPLATE, dtype=np.float64) + padding) / (1.0 + 2.0 * padding)
    return unit * np.array([float(w), float(h)])
