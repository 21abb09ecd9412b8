"""The real-photo report (issue #12): checks of this suite against real faces and networks nobody here trained.

:func:`write_real_photos_report` loads the photos once (the face-recognition sdist's test images, extracted by
``lrface weights real-photos``, and ``skimage.data.astronaut()``), runs the report's sections in order and writes
``real_photos.md`` / ``real_photos.json`` into the run directory. A section is ``{_target_: callable, **kwargs}``,
called as ``f(photos=[Photo], out_dir=Path, **kwargs)`` and returning a :class:`Section`; a null section is skipped
(listed as such). In the config a section is built as a partial (``_partial_: true``: the runner's
``instantiate`` builds nested ``_target_`` nodes first). The experiment (``experiments/real_photos_report.yaml``; the
``real_photos`` pipeline trains our networks first and passes them in) has three:

- ``alignment`` (:func:`alignment_section`): our MTCNN vs YuNet vs dlib's 5- and 68-point landmarks,
  :mod:`lrface.landmark_agreement`;
- ``lowres`` (:func:`lowres_section`): verification at 8 … 48 px, :mod:`lrface.real_lowres`;
- ``fig3_demo`` (:func:`lrface.fig3_demo.fig3_demo_section`): the real-photo Fig. 3 demo, a photo upscaled under each
  constraint of Eq. 8 on the DCGAN and the embedded StyleGAN2, scored by F and the judges.

Photos are config entries ``{file, identity, source}``: ``file`` is relative to ``root`` or ``skimage:<name>``;
``source`` names the photograph a file was made from — ``obama_partial_face*.jpg`` are crops of ``obama.jpg`` and
``32bit.png`` is ``obama2.jpg`` re-encoded (checked pixel by pixel: ≤ 2 grey levels mean difference), so pairs
within one source are left out of verification (their "same" verdict is trivial).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lrface.io import atomic_write_text

__all__ = ["Photo", "Section", "alignment_section", "load_photos", "lowres_section", "write_real_photos_report"]

log = logging.getLogger("lrface")

LANDMARK_SOURCES = ("mtcnn", "yunet", "dlib5", "dlib68")


@dataclass
class Photo:
    """One real photo: ``image`` H×W×3 uint8 RGB."""

    name: str
    identity: str
    source: str
    image: np.ndarray


@dataclass
class Section:
    """What a report section returns: flat scalar ``metrics`` (``results.json``), ``markdown`` for the report, and
    ``data`` (anything JSON-serialisable) for ``real_photos.json``."""

    title: str
    markdown: str
    metrics: dict[str, float] = field(default_factory=dict)
    data: Any = None


def load_photos(root: str | Path, entries: Sequence[Mapping[str, str]]) -> list[Photo]:
    """The photos named by ``entries`` (``{file, identity, source}``; ``source`` defaults to the file)."""
    from PIL import Image

    root = Path(root)
    photos = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry.get("file") or not entry.get("identity"):
            raise ValueError(f"photos[{k}]: expected {{file, identity, source}}, got {entry!r}")
        name = str(entry["file"])
        if name.startswith("skimage:"):
            import skimage.data

            loader = getattr(skimage.data, name.split(":", 1)[1], None)
            if loader is None:
                raise ValueError(f"photos[{k}]: {name}: skimage.data has no such image")
            image = np.array(loader())
        else:
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"photos[{k}]: {path}: no such photo; extract the real photos with "
                                        f"`lrface weights real-photos --dest {root}` (make setup does)")
            try:
                with Image.open(path) as im:
                    image = np.array(im.convert("RGB"))
            except OSError as exc:
                raise ValueError(f"photos[{k}]: {path}: not a readable image ({exc})") from None
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"photos[{k}]: {name}: expected an RGB image, got {image.dtype} {image.shape}")
        photos.append(Photo(Path(name).stem if ":" not in name else name.split(":", 1)[1], str(entry["identity"]),
                            str(entry.get("source") or name), image))
    if len({p.name for p in photos}) != len(photos):
        raise ValueError(f"photo names must be distinct: {[p.name for p in photos]}")
    return photos


# -- landmark sources ------------------------------------------------------------------------------------------------

def _landmark_sources(names: Sequence[str], mtcnn_weights: str | Path):
    """{name: image → list of common 5×2 landmarks, one per face found}."""
    from lrface.landmark_agreement import to_common

    out = {}
    for name in names:
        if name == "mtcnn":
            from lrface.nets.mtcnn import MTCNN

            mtcnn = MTCNN(mtcnn_weights)
            out[name] = lambda im, m=mtcnn: [to_common(p, "five_point") for p in m.detect(im)[2]]
        elif name == "yunet":
            from lrface.judges.yunet import YuNetFaces

            yunet = YuNetFaces()
            out[name] = lambda im, y=yunet: [to_common(p, "five_point") for p in y.detect(im)[2]]
        elif name in ("dlib5", "dlib68"):
            from lrface.judges.dlib_faces import DlibFaces
            from lrface.judges.dlib_identity import _require_dlib, dlib_model_file

            _require_dlib()
            points = 5 if name == "dlib5" else 68
            faces = DlibFaces(dlib_model_file(f"shape_predictor_{points}_face_landmarks.dat"))
            out[name] = lambda im, f=faces, fmt=name: [to_common(f.landmarks(im, box), fmt) for box in f.detect(im)]
        else:
            raise ValueError(f"landmark source {name!r}: expected one of {LANDMARK_SOURCES}")
    return out


def _nearest_face(faces: list[np.ndarray], reference: np.ndarray | None) -> np.ndarray | None:
    """The face whose eye midpoint is nearest the reference's, if within one inter-ocular distance of it (else
    another face was found, not this one); the first face when there is no reference."""
    from lrface.landmark_agreement import interocular

    if not faces:
        return None
    if reference is None:
        return faces[0]
    centre = reference[:2].mean(0)
    gaps = [np.linalg.norm(f[:2].mean(0) - centre) for f in faces]
    k = int(np.argmin(gaps))
    return faces[k] if gaps[k] <= interocular(reference) else None


def alignment_section(photos: Sequence[Photo], out_dir: Path, sources: Sequence[str] = LANDMARK_SOURCES,
                      reference: str = "mtcnn", mtcnn_weights: str = "weights/mtcnn") -> Section:
    """Landmark agreement between every pair of ``sources`` on every photo (see :mod:`lrface.landmark_agreement`).

    The face compared is the ``reference`` source's most confident one; the other sources' face nearest it.
    """
    from lrface.landmark_agreement import COMMON_POINTS, agreement_table

    if reference not in sources:
        raise ValueError(f"alignment.reference {reference!r} must be one of the sources {list(sources)}")
    finders = _landmark_sources(sources, mtcnn_weights)
    order = [reference, *[s for s in sources if s != reference]]
    found: dict[str, dict[str, np.ndarray | None]] = {s: {} for s in sources}
    for photo in photos:
        ref = None
        for s in order:
            found[s][photo.name] = _nearest_face(finders[s](photo.image), ref)
            if s == reference:
                ref = found[s][photo.name]
    found = {s: found[s] for s in sources}
    table = agreement_table(found)

    def cell(v: float) -> str:
        return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"

    keys = list(table["mean"])
    lines = [("Mean landmark distance / inter-ocular distance, over the common points both sources give "
              "(dlib 5-point: eye centres only)."), "",
             "| photo | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for photo in photos:
        rows = [table["per_photo"][k][photo.name] for k in keys]
        lines.append(f"| {photo.name} | " + " | ".join(cell(r["mean"]) if r else "not found" for r in rows) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{cell(table['mean'][k]['mean'])}**" for k in keys) + " |")
    lines += ["", "Per point (mean over photos), same units:", "",
              "| sources | " + " | ".join(COMMON_POINTS) + " | photos |", "|---|" + "---:|" * (len(COMMON_POINTS) + 1)]
    for k in keys:
        m = table["mean"][k]
        missing = f" (missed: {', '.join(m['missing'])})" if m["missing"] else ""
        lines.append(f"| {k} | " + " | ".join(cell(m[p]) for p in COMMON_POINTS) + f" | {m['photos']}{missing} |")
    metrics = {f"alignment/{k}/{what}": float(table["mean"][k][what]) for k in keys for what in ("mean", "eyes")}
    data = {"landmarks": {s: {p: (None if v is None else v.tolist()) for p, v in found[s].items()} for s in sources},
            **table}
    return Section("Alignment check: MTCNN vs YuNet vs dlib landmarks", "\n".join(lines) + "\n", metrics,
                   json.loads(json.dumps(data, default=float)))


# -- low-resolution reality check -----------------------------------------------------------------------------------

def _network_scorers(networks: Mapping[str, Any] | None, btnet_strategy: str):
    """(scorers, {name: why it was left out}) from ``{name: null | checkpoint path | {path, kind}}``."""
    from lrface.real_lowres import NetworkScorer
    from lrface.weights import load_btnet, load_feature_extractor

    scorers, omitted = [], {}
    for name, spec in (networks or {}).items():
        if spec is None or (isinstance(spec, Mapping) and not spec.get("path")):
            omitted[name] = f"no checkpoint given (report.sections.lowres.networks.{name}=<run>/checkpoints/last.ckpt)"
            continue
        path = spec if isinstance(spec, (str, Path)) else spec["path"]
        kind = spec.get("kind") if isinstance(spec, Mapping) else None
        kind = kind or ("btnet" if name.lower().startswith("btnet") else "features")
        if kind == "btnet":
            scorers.append(NetworkScorer(load_btnet(path), name, btnet=True, strategy=btnet_strategy))
        elif kind == "features":
            options = dict(spec.get("options") or {}) if isinstance(spec, Mapping) else {}
            scorers.append(NetworkScorer(load_feature_extractor(path, **options).F, name))
        else:
            raise ValueError(f"lowres.networks.{name}.kind: expected 'features' or 'btnet', got {kind!r}")
    return scorers, omitted


def lowres_section(photos: Sequence[Photo], out_dir: Path, sizes: Sequence[int] = (8, 12, 16, 24, 32, 48),
                   crop_size: int = 112, dlib_backend: str = "dlib", networks: Mapping[str, Any] | None = None,
                   btnet_strategy: str = "near", skip_same_source: bool = True,
                   mtcnn_weights: str = "weights/mtcnn") -> Section:
    """Verification on the photos degraded to each size (:func:`lrface.real_lowres.lowres_table`).

    Args:
        sizes: thumbnail sides.
        crop_size: side of the MTCNN-aligned ArcFace crop the thumbnails are made from and brought back to.
        dlib_backend: ``"dlib"`` or ``"torch"`` (:class:`lrface.judges.DlibIdentityJudge`).
        networks: ``{column: null | checkpoint | {path, kind: features|btnet, options: {load kwargs}}}``; null
            columns are left out of the table (and say so). ``dlib`` is dlib's pretrained ResNet as an F.
        btnet_strategy: BTNet's branch routing (``floor`` | ``near`` | ``ceil``).
    """
    from lrface.judges.dlib_identity import DlibIdentityJudge
    from lrface.nets.mtcnn import MTCNN
    from lrface.real_lowres import DlibScorer, align_crop, lowres_table, table_markdown

    mtcnn = MTCNN(mtcnn_weights)
    judge = DlibIdentityJudge(backend=dlib_backend)
    crops, dlib_points = [], []
    for photo in photos:
        five = mtcnn.detect(photo.image)[2]
        if not len(five):
            raise ValueError(f"lowres: photo {photo.name!r}: MTCNN found no face; leave it out of the photos")
        points = [judge.faces.landmarks(photo.image, box) for box in judge.faces.detect(photo.image)]
        if not points:
            raise ValueError(f"lowres: photo {photo.name!r}: dlib's detector found no face (needed for dlib's chip)")
        eyes = five[0][:2].mean(0)  # dlib's face: the one whose eye-corner mean is nearest MTCNN's eyes
        nearest = min(points, key=lambda p: np.linalg.norm(p[:4].mean(0) - eyes))
        crop, carried = align_crop(photo.image, five[0], crop_size, nearest)
        crops.append(crop)
        dlib_points.append(carried)
    scorers, omitted = _network_scorers(networks, btnet_strategy)
    result = lowres_table(np.stack(crops), [p.identity for p in photos], sizes, [DlibScorer(judge), *scorers],
                          np.stack(dlib_points), [p.source for p in photos], skip_same_source,
                          progress=lambda s: log.info("lowres: %s", s))
    markdown = (f"Each photo aligned by MTCNN to the {crop_size}² ArcFace crop, shrunk to s×s (area), brought back "
                f"up (bicubic); `full` = the undegraded crop.\n\n" + table_markdown(result, omitted))
    from lrface.nets.dlib_backbone import is_dlib_features

    pretrained = [name for name, spec in (networks or {}).items() if spec is not None and is_dlib_features(
        spec if isinstance(spec, (str, Path)) else spec.get("path"))]
    if len(scorers) > len(pretrained):
        markdown += ("- Our networks' columns: networks trained by this suite (on this machine: on the synthetic "
                     "world, never on a real face).\n")
    for name in pretrained:
        markdown += (f"- `{name}`: dlib's ResNet as an F (`lrface.nets.dlib_backbone`, what `features: dlib` "
                     "selects): fed the ArcFace crop like our networks and scored like them (flip-sum cosine, best "
                     "threshold), where the `dlib` column cuts dlib's own chip with dlib's landmarks.\n")
    metrics = {f"lowres/{size}/{scorer}/{what}": float(v[what]) for size, row in result["rows"].items()
               for scorer, v in row.items() for what in ("accuracy", "gap")}
    result["photos"] = [{"name": p.name, "identity": p.identity, "source": p.source} for p in photos]
    result["omitted"] = omitted
    return Section("Low-resolution reality check: verification on real photos", markdown, metrics, result)


# -- the report ------------------------------------------------------------------------------------------------------

def write_real_photos_report(out_dir: str | Path, photos: Sequence[Mapping[str, str]], sections: Mapping[str, Any],
                             root: str | Path = "data/real_photos") -> dict[str, float]:
    """Runs the sections, writes ``real_photos.md`` / ``real_photos.json`` into ``out_dir`` (atomically), returns
    the sections' metrics (the report runner's ``results.json``)."""
    from lrface.config import instantiate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_photos(root, photos)
    parts = ["# Real photos", "",
             "Photos: " + ", ".join(f"{p.name} ({p.identity})" for p in loaded) + f" — from {root} (see its "
             "PROVENANCE.txt) and skimage.data.", ""]
    metrics: dict[str, float] = {}
    data: dict[str, Any] = {}
    for name, spec in sections.items():
        if spec is None:
            parts += [f"## {name}", "", "(not part of this run)", ""]
            data[name] = None
            continue
        if isinstance(spec, Mapping) and "_target_" in spec:  # called directly, not through the config
            spec = instantiate({**spec, "_partial_": True})
        if not callable(spec):
            raise TypeError(f"report section {name!r}: expected {{_target_: callable, _partial_: true, ...}} or null, "
                            f"got {spec!r}")
        log.info("real photos: section %s", name)
        section = spec(photos=loaded, out_dir=out_dir)
        if not isinstance(section, Section):
            raise TypeError(f"report section {name!r}: {spec} returned {type(section).__name__}, expected "
                            "lrface.real_photos.Section")
        parts += [f"## {section.title}", "", section.markdown.rstrip(), ""]
        metrics.update(section.metrics)
        data[name] = section.data
    markdown = "\n".join(parts)
    atomic_write_text(out_dir / "real_photos.md", markdown)
    atomic_write_text(out_dir / "real_photos.json", json.dumps(data, indent=2, default=float) + "\n")
    print(markdown, flush=True)
    return metrics
