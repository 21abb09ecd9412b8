"""MTCNN: strict loading of facenet-pytorch's real weights and the full cascade on real photos (scikit-image data)."""

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from lrface.nets.mtcnn import MTCNN, ONet, PNet, RNet, _nms_min, _square

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "mtcnn"
needs_weights = pytest.mark.skipif(
    not all((WEIGHTS / f).is_file() for f in ("pnet.pt", "rnet.pt", "onet.pt")),
    reason=f"MTCNN weights absent from {WEIGHTS}: run `make setup` (or `lrface weights mtcnn`); `make test` does it",
)

# Measured once with this implementation on skimage.data.astronaut() (512×512): the face box and the 5 landmarks.
ASTRONAUT_BOX = np.array([178.0, 59.8, 266.4, 172.9])
ASTRONAUT_LANDMARKS = np.array([[203.7, 100.7], [247.0, 103.5], [224.2, 128.8], [202.1, 139.6], [244.5, 142.1]])


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(1)
    return MTCNN(WEIGHTS)


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def _rescaled(image: np.ndarray, scale: float) -> np.ndarray:
    from skimage.transform import rescale

    return (rescale(image, scale, channel_axis=2, anti_aliasing=True) * 255).round().astype(np.uint8)


@needs_weights
@pytest.mark.parametrize("name,net", [("pnet", PNet), ("rnet", RNet), ("onet", ONet)])
def test_state_dicts_match_facenet_files_strictly(name, net):
    state = torch.load(WEIGHTS / f"{name}.pt", map_location="cpu", weights_only=True)
    model = net()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_output_shapes_of_the_three_nets():
    with torch.no_grad():
        reg, prob = PNet()(torch.zeros(2, 3, 12, 12))
        assert reg.shape == (2, 4, 1, 1) and prob.shape == (2, 2, 1, 1)
        reg, prob = PNet()(torch.zeros(1, 3, 40, 64))
        assert reg.shape == (1, 4, 15, 27) and torch.allclose(prob.sum(1), torch.ones(1, 15, 27))
        reg, prob = RNet()(torch.zeros(3, 3, 24, 24))
        assert reg.shape == (3, 4) and prob.shape == (3, 2)
        reg, points, prob = ONet()(torch.zeros(3, 3, 48, 48))
        assert reg.shape == (3, 4) and points.shape == (3, 10) and prob.shape == (3, 2)


def test_missing_weights_dir_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lrface weights mtcnn.*make setup"):
        MTCNN(tmp_path / "nowhere")


def test_square_and_min_nms():
    sq = _square(torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    assert torch.allclose(sq, torch.tensor([[0.0, 20.0, 40.0, 60.0]]))
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 40.0, 40.0], [200.0, 0.0, 250.0, 50.0]])
    scores = torch.tensor([0.9, 0.95, 0.5])
    # The nested box has IoU 0.09 with the big one (kept by IoU NMS) but intersection/min = 1 (removed here).
    assert _nms_min(boxes, scores, 0.7).tolist() == [1, 2]


@needs_weights
def test_pyramid_scales(detector):
    scales = detector.scales(512, 300)
    assert scales[0] == pytest.approx(12 / 20)
    assert all(b / a == pytest.approx(0.709) for a, b in pairwise(scales))
    assert 300 * scales[-1] >= 12 > 300 * scales[-1] * 0.709


@needs_weights
def test_astronaut_one_face_with_plausible_landmarks(detector, astronaut):
    boxes, probs, landmarks = detector.detect(astronaut)
    assert boxes.shape == (len(probs), 4) and landmarks.shape == (len(probs), 5, 2)
    confident = probs > 0.95
    assert confident.sum() == 1, (boxes, probs)
    box, prob, pts = boxes[0], probs[0], landmarks[0]
    assert prob > 0.999
    # The face (hairline to chin, ear to ear) spans roughly x 180-265, y 60-170.
    assert box[0] < 190 and box[1] < 75 and box[2] > 255 and box[3] > 160
    assert box[2] - box[0] < 120 and box[3] - box[1] < 140
    np.testing.assert_allclose(box, ASTRONAUT_BOX, atol=3.0)
    assert np.all((pts[:, 0] > box[0]) & (pts[:, 0] < box[2]) & (pts[:, 1] > box[1]) & (pts[:, 1] < box[3]))
    left_eye, right_eye, nose, left_mouth, right_mouth = pts
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
    assert 30 < np.linalg.norm(right_eye - left_eye) < 60
    np.testing.assert_allclose(pts, ASTRONAUT_LANDMARKS, atol=2.0)


@needs_weights
@pytest.mark.parametrize("scale", [0.4, 0.75, 1.5])
def test_astronaut_detection_is_scale_consistent(detector, astronaut, scale):
    boxes, probs, landmarks = detector.detect(_rescaled(astronaut, scale))
    assert (probs > 0.95).sum() == 1, probs
    side = ASTRONAUT_BOX[2] - ASTRONAUT_BOX[0]
    np.testing.assert_allclose(boxes[0] / scale, ASTRONAUT_BOX, atol=0.08 * side)
    np.testing.assert_allclose(landmarks[0] / scale, ASTRONAUT_LANDMARKS, atol=0.05 * side)


@needs_weights
def test_lfw_subset_faces_found_and_non_faces_rejected():
    """skimage's LFW subset: 100 tight 25×25 grey face crops, then 100 non-face patches."""
    skimage_data = pytest.importorskip("skimage.data")
    crops = skimage_data.lfw_subset()
    small = MTCNN(WEIGHTS, min_face_size=12)
    hits = []
    for crop in crops:
        grey = (crop * 255).round().astype(np.uint8)
        boxes, probs, _ = small.detect(np.repeat(grey[..., None], 3, axis=2))
        hit = bool((probs > 0.95).any())
        if hit and len(hits) < 100:  # a face crop
            box = boxes[0]
            # A tight crop: the face box is centred in the 25×25 patch and about as large as it.
            centre, size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
            assert np.all(np.abs(centre - 12.0) < 4.0) and np.all((size > 13) & (size < 34)), box
        hits.append(hit)
    faces, non_faces = sum(hits[:100]), sum(hits[100:])
    assert faces >= 85, faces
    assert non_faces <= 3, non_faces


@needs_weights
def test_no_face_images_give_no_confident_detection(detector):
    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    for image in (
        np.full((240, 320, 3), 128, np.uint8),
        rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
        skimage_data.coffee(),
    ):
        boxes, probs, landmarks = detector.detect(image)
        assert not (probs > 0.95).any(), probs
        assert boxes.shape == (len(probs), 4) and landmarks.shape == (len(probs), 5, 2)
    boxes, probs, landmarks = detector.detect(np.zeros((64, 64, 3), np.uint8))
    assert boxes.shape == (0, 4) and probs.shape == (0,) and landmarks.shape == (0, 5, 2)
    assert boxes.dtype == probs.dtype == landmarks.dtype == np.float32


@needs_weights
def test_bad_input_is_rejected(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        detector.detect(np.zeros((50, 50), np.uint8))
