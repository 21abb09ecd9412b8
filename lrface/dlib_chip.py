"""dlib's face chip (``get_face_chip_details`` + ``extract_image_chip``) in PyTorch: batched and differentiable.

dlib aligns a face for its recognition ResNet by fitting the similarity that maps five points of its mean face
(placed in a size×size chip with ``padding``: u → (u + padding) / (1 + 2·padding) · size) onto the five landmarks of
``shape_predictor_5_face_landmarks``, in dlib's landmark order. ``chip_details`` then keeps only that transform's
scale s, angle θ and where it sends the chip centre c, and ``extract_image_chip`` maps chip pixel (0, 0) to the
corner c + R(θ)·(−(size·s − 1)/2, −(size·s − 1)/2) and pixel size − 1 to the opposite corner — so the chip is
sampled at (size·s − 1)/(size − 1) image pixels per chip pixel, not s (``get_mapping_to_chip``,
``centered_drect``). Both are reproduced exactly here (:func:`dlib_chip_matrix` agrees with
``dlib.get_face_chip_details`` to ~1e-12).

The pixels are close, not bit-exact. Where the face is at most about twice the chip's size dlib samples the image
bilinearly and so does this (0.5–0.7 grey levels mean difference on the real photos, from dlib rounding to uint8).
Larger faces first go down dlib's ``pyramid_down<2>`` (5-tap [1 4 6 4 1] filter, every other pixel, integer
arithmetic), built by dlib on a crop around the chip whose origin this does not reproduce (the whole image is used),
so the sampling phase can differ by a pixel of the original: about 1 grey level mean difference, and descriptors
within 0.03 of dlib's on the real photos (tests/test_dlib_judges.py measures it), against dlib's 0.6 threshold. Use
dlib's own chip where exact dlib descriptors are wanted; this one where gradients must reach the image (an identity
constraint on generated faces).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lrface.align import estimate_similarity

__all__ = ["DLIB_FIVE_POINT_TEMPLATE", "dlib_chip_matrix", "dlib_face_chips"]

# dlib/image_transforms/interpolation.h, get_face_chip_details (5 parts): the mean face's outer and inner corner of
# the image-right eye, outer and inner corner of the image-left eye, base of the nose, in a unit box.
DLIB_FIVE_POINT_TEMPLATE = ((0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
                            (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
                            (0.4901123135679, 0.6277975316475))
# dlib/image_transforms/image_pyramid.h, pyramid_down<2>::point_down: p ↦ p/2 − (1.25, 0.75)
_POINT_DOWN_SHIFT = (1.25, 0.75)


def dlib_chip_matrix(landmarks: Tensor, size: int = 150, padding: float = 0.25) -> Tensor:
    """B×2×3 affine matrices mapping chip pixel (x, y, 1) to image coordinates, as dlib extracts the chip.

    Args:
        landmarks: B×5×2 (x, y) in dlib's 5-point order (``lrface.judges.dlib_faces.DlibFaces.landmarks``).
        size: chip side (150 for the recognition ResNet).
        padding: dlib's padding (0.25 in ``compute_face_descriptor`` / ``get_face_chip``).
    """
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"expected B×5×2 dlib-order landmarks, got {tuple(landmarks.shape)}")
    dtype = torch.promote_types(landmarks.dtype, torch.float64)
    template = torch.tensor(DLIB_FIVE_POINT_TEMPLATE, dtype=dtype, device=landmarks.device)
    template = (template + padding) / (1.0 + 2.0 * padding) * size
    fit = estimate_similarity(template, landmarks.to(dtype))  # chip → image
    centre = fit[:, :, :2] @ torch.full((2,), size / 2.0, dtype=dtype, device=landmarks.device) + fit[:, :, 2]
    # get_mapping_to_chip sends chip pixels 0 and size − 1 to the corners of centered_drect(c, size·s, size·s), which
    # lie size·s − 1 image pixels apart: (size·s − 1)/(size − 1) image pixels per chip pixel, not s
    scale = fit[:, :, 0].norm(dim=-1)
    linear = fit[:, :, :2] * ((size - 1.0 / scale) / (size - 1.0))[:, None, None]
    offset = centre - linear @ torch.full((2,), (size - 1) / 2.0, dtype=dtype, device=landmarks.device)
    return torch.cat([linear, offset[:, :, None]], dim=-1)


def _pyramid_down(image: Tensor) -> Tensor:
    """dlib's ``pyramid_down<2>``: C×H×W → C×⌊(H−3)/2⌋×⌊(W−3)/2⌋, the 5-tap [1 4 6 4 1]/16 filter in each direction
    at every other pixel (output pixel x is centred on input pixel 2x + 2)."""
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=image.dtype, device=image.device) / 16.0
    c = image.shape[0]
    out = F.conv2d(image[None], taps.view(1, 1, 1, 5).expand(c, 1, 1, 5), stride=(1, 2), groups=c)
    out = F.conv2d(out, taps.view(1, 1, 5, 1).expand(c, 1, 5, 1), stride=(2, 1), groups=c)
    return out[0, :, : (image.shape[1] - 3) // 2, : (image.shape[2] - 3) // 2]


def dlib_face_chips(images: Tensor, landmarks: Tensor, size: int = 150, padding: float = 0.25) -> Tensor:
    """B×C×H×W images (any range) + B×5×2 dlib-order landmarks → B×C×size×size chips, differentiable in both.

    As ``extract_image_chip``: while the chip's box, taken one pyramid level down, still covers more than size²
    pixels, the image goes one level down dlib's pyramid (and the chip's mapping through dlib's ``point_down``,
    p/2 − (1.25, 0.75)); then bilinear sampling, 0 outside the image. See the module docstring for how close this is.
    """
    from kornia.geometry.transform import warp_affine

    if images.dim() != 4 or landmarks.shape[0] != images.shape[0]:
        raise ValueError(f"expected images B×C×H×W and landmarks B×5×2, got {tuple(images.shape)} and "
                         f"{tuple(landmarks.shape)}")
    chip_to_image = dlib_chip_matrix(landmarks, size, padding)
    compute = torch.promote_types(images.dtype, torch.float32)
    down_shift = torch.tensor(_POINT_DOWN_SHIFT, dtype=chip_to_image.dtype, device=chip_to_image.device)
    out = []
    for image, m in zip(images.to(compute), chip_to_image):
        width = float(m[:, :2].detach().det().abs().sqrt()) * (size - 1) + 1  # the chip box's side in image pixels
        while ((width - 1) / 2 + 1) ** 2 > size * size and min(image.shape[1:]) > 8:
            image = _pyramid_down(image)
            m = torch.cat([m[:, :2] / 2, (m[:, 2] / 2 - down_shift)[:, None]], dim=1)
            width = (width - 1) / 2 + 1
        full = torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]], dtype=m.dtype, device=m.device)])
        image_to_chip = torch.linalg.inv(full)[:2].to(compute)
        out.append(warp_affine(image[None], image_to_chip[None], dsize=(size, size), mode="bilinear",
                               padding_mode="zeros", align_corners=True)[0])
    return torch.stack(out).to(images.dtype)
