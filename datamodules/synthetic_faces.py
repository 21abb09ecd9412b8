"""Procedural faces: the identity model, the per-image model and the anti-aliased renderer of the synthetic world.

Everything is drawn from seeded NumPy generators and rendered with PIL polygons on a supersampled canvas, so a face
is a pure function of ``(Identity, ImageParams, size, layout)``. The generative model is documented in
:mod:`datamodules.synthetic`; this module implements it:

* :func:`sample_identities` / :func:`sample_identity` — the person: race, gender, age and ~60 continuous geometry,
  colour and style parameters (stable across that person's images).
* :func:`sample_image_params` — one photograph of that person: pose, lighting, expression, accessories, background,
  capture degradations, controlled by a :class:`Variation` preset per dataset.
* :func:`render_face` — the picture (uint8 H×W×3) and where the five landmarks landed.
* :func:`attributes` — the 40 CelebA attribute labels read off the parameters that were actually rendered.

Coordinates: a face is modelled in a canonical frame (x right, y down, unit = the mean inter-ocular distance, eye
centres near (±0.5, 0)) with a depth z from an ellipsoidal head, rotated by yaw / pitch, projected orthographically,
then mapped by one similarity (roll, scale, shift, then the dataset's alignment) straight to supersampled pixels.
Nothing is warped after drawing, so edges stay sharp until the final box downsample.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from datamodules.celeba import CELEBA_ATTRIBUTES
from datamodules.fairface import FAIRFACE_AGES, FAIRFACE_GENDERS, FAIRFACE_RACES
from lrface.align import ARCFACE_TEMPLATE_112, DLIB_UNIT_TEMPLATE

# the vocabularies and the attribute order of the real datasets the world imitates
RACES, GENDERS, AGE_GROUPS = FAIRFACE_RACES, FAIRFACE_GENDERS, FAIRFACE_AGES
AGE_BOUNDS = (0, 3, 10, 20, 30, 40, 50, 60, 70)
ATTRIBUTE_NAMES = CELEBA_ATTRIBUTES
ATTR = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}

# Five landmarks (image-left eye, image-right eye, nose tip, left / right mouth corner) in output pixels.
ARCFACE_TEMPLATE = ARCFACE_TEMPLATE_112
CELEBA_TEMPLATE = ((69.0, 111.0), (108.0, 111.0), (88.5, 134.5), (72.0, 152.5), (105.5, 152.5))
# DLIB_UNIT_TEMPLATE (lrface.align): dlib get_face_chip's mean face; padding p maps u -> (u + p) / (1 + 2p) * size.

HAIR_COLOURS = ("black", "brown", "blond", "red")
HAIR_RGB = {"black": (28, 24, 22), "brown": (92, 62, 40), "blond": (206, 170, 108), "red": (150, 68, 36)}
GRAY_RGB = (172, 170, 168)
TEXTURES = ("straight", "wavy", "curly", "coily")
EYE_RGB = ((58, 36, 22), (110, 74, 40), (70, 110, 160), (84, 120, 80))

# Per-race priors. Skin (melanin mean, sd, yellow undertone) overlaps between neighbours on purpose; what separates
# races reliably is the fine structure (eye fold, nose width and bridge, lip fullness, hair texture) that is lost in a
# 16-32 px thumbnail, where lighting makes the remaining colour cue ambiguous.
_RACE = {
    # White
    0: dict(m=0.17, msd=0.09, u=0.0, nw=0.175, nl=0.63, lip=0.8, eh=1.0, cr=0.95, epi=0.02, fw=1.06, br=1.0,
            bridge=1.0, socket=0.9, tex=(0.45, 0.38, 0.17, 0.0), col=(0.18, 0.55, 0.22, 0.05),
            eye=(0.20, 0.30, 0.35, 0.15)),
    # Black
    1: dict(m=0.70, msd=0.13, u=0.05, nw=0.30, nl=0.58, lip=1.5, eh=1.0, cr=0.90, epi=0.03, fw=1.08, br=1.0,
            bridge=0.2, socket=0.5, tex=(0.03, 0.07, 0.25, 0.65), col=(0.93, 0.07, 0.0, 0.0),
            eye=(0.85, 0.15, 0.0, 0.0)),
    # Latino_Hispanic
    2: dict(m=0.38, msd=0.13, u=0.10, nw=0.225, nl=0.60, lip=1.1, eh=1.0, cr=0.90, epi=0.08, fw=1.08, br=1.05,
            bridge=0.55, socket=0.6, tex=(0.30, 0.42, 0.25, 0.03), col=(0.55, 0.40, 0.05, 0.0),
            eye=(0.60, 0.35, 0.03, 0.02)),
    # East Asian
    3: dict(m=0.24, msd=0.09, u=0.18, nw=0.235, nl=0.55, lip=0.95, eh=0.7, cr=0.25, epi=0.85, fw=1.14, br=0.8,
            bridge=0.1, socket=0.1, tex=(0.90, 0.08, 0.02, 0.0), col=(0.85, 0.15, 0.0, 0.0),
            eye=(0.95, 0.05, 0.0, 0.0)),
    # Southeast Asian
    4: dict(m=0.44, msd=0.12, u=0.16, nw=0.255, nl=0.56, lip=1.1, eh=0.84, cr=0.5, epi=0.5, fw=1.11, br=0.9,
            bridge=0.2, socket=0.25, tex=(0.72, 0.22, 0.06, 0.0), col=(0.90, 0.10, 0.0, 0.0),
            eye=(0.93, 0.07, 0.0, 0.0)),
    # Indian
    5: dict(m=0.53, msd=0.13, u=0.15, nw=0.225, nl=0.62, lip=1.05, eh=1.08, cr=0.92, epi=0.03, fw=1.04, br=1.3,
            bridge=0.65, socket=0.75, tex=(0.35, 0.50, 0.15, 0.0), col=(0.88, 0.12, 0.0, 0.0),
            eye=(0.85, 0.15, 0.0, 0.0)),
    # Middle Eastern
    6: dict(m=0.32, msd=0.11, u=0.12, nw=0.195, nl=0.68, lip=0.95, eh=1.05, cr=0.93, epi=0.03, fw=1.04, br=1.35,
            bridge=1.1, socket=0.9, tex=(0.22, 0.43, 0.35, 0.0), col=(0.70, 0.28, 0.02, 0.0),
            eye=(0.60, 0.30, 0.05, 0.05)),
}


def age_group(years: float) -> int:
    """Age in years → index into :data:`AGE_GROUPS`."""
    return int(np.searchsorted(AGE_BOUNDS, years, side="right") - 1)


def _clip_rgb(c) -> tuple[int, int, int]:
    r, g, b = c
    return (min(255, max(0, int(r + 0.5))), min(255, max(0, int(g + 0.5))), min(255, max(0, int(b + 0.5))))


def _mix(a, b, t: float) -> tuple[float, float, float]:
    return tuple(float(x) * (1 - t) + float(y) * t for x, y in zip(a, b))


def skin_rgb(melanin: float, yellow: float) -> tuple[float, float, float]:
    """Skin colour from a melanin index in [0, 1] (light → dark) and a yellow undertone."""
    stops = np.array([[246, 214, 192], [214, 170, 136], [170, 118, 84], [112, 72, 50], [70, 44, 32]], float)
    t = float(np.clip(melanin, 0, 1)) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    c = stops[i] * (1 - (t - i)) + stops[i + 1] * (t - i)
    c += np.array([-4.0, 6.0, -14.0]) * yellow
    return tuple(float(v) for v in np.clip(c, 0, 255))


# --------------------------------------------------------------------------------------------------------------------
# Identity model
# --------------------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Identity:
    """One synthetic person; every field is stable across the person's images (see :mod:`datamodules.synthetic`)."""

    gid: int
    race: int
    gender: int                 # 0 Male, 1 Female (FairFace / DESIGN convention)
    age: float                  # years
    melanin: float
    skin: tuple
    # head outline (canonical units; the mean inter-ocular distance is 1)
    head_w: float
    fore_w: float
    jaw_w: float
    chin_w: float
    chin_y: float
    depth: float
    chubby: float
    double_chin: bool
    # eyes
    eye_sep: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris_r: float
    iris_rgb: tuple
    crease: float
    epicanthus: float
    lash: float
    # brows
    brow_gap: float
    brow_len: float
    brow_thick: float
    brow_arch: float
    brow_peak: float
    brow_tilt: float
    brow_inner: float
    # nose
    nose_len: float
    nose_w: float
    bridge: float
    nose_tip: float
    nose_pointy: float
    # mouth
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_low: float
    lip_rgb: tuple
    cupid: float
    # ears
    ear_size: float
    ear_y: float
    # hair
    hair_len: int               # 0 bald / buzz, 1 short, 2 medium, 3 long
    hair_vol: float
    hairline: float
    receding: float
    part: float
    bangs: float                # 0 = none, else how far down the forehead they reach
    texture: int                # index into TEXTURES
    hair_colour: int            # index into HAIR_COLOURS
    hair_rgb: tuple
    gray: float                 # fraction of gray at the identity's base age
    # facial hair (0 none, 1 stubble, 2 goatee, 3 full beard, 4 mustache, 5 goatee + mustache)
    beard: int
    beard_density: float
    sideburns: bool
    # marks and skin
    moles: tuple
    freckles: int
    rosy: float
    cheekbones: float
    bags: float
    # accessories and habits (per-image probabilities)
    glasses_p: float
    glasses_shape: int
    glasses_rgb: tuple
    glasses_frame: float
    sunglasses: bool
    lipstick_p: float
    lipstick_rgb: tuple
    makeup_p: float
    shadow_rgb: tuple
    earrings_p: float
    necklace_p: float
    necktie_p: float
    hat_p: float
    smile_p: float
    open_p: float
    attractive: float
    tex_seed: int
    # small identity marks (visible at 112 px, sub-pixel in thumbnails)
    chin_cleft: float = 0.0
    socket: float = 0.5
    dimples: float = 0.0
    brow_dark: float = 0.8
    nostril: float = 1.0
    philtrum: float = 0.5
    forehead_lines: int = 0

    @property
    def age_group(self) -> int:
        return age_group(self.age)


DEFAULT_AGE_PROBS = (0.0, 0.0, 0.02, 0.42, 0.30, 0.13, 0.08, 0.04, 0.01)  # CelebA-like adults


def sample_identity(seed: int, gid: int, *, race_probs=None, age_probs=None, male_prob: float = 0.5,
                    race: int | None = None, gender: int | None = None) -> Identity:
    """Person ``gid`` of the global identity pool of world ``seed``.

    Args:
        seed: world seed.
        gid: global identity index (datasets use disjoint ranges).
        race_probs: 7 probabilities in :data:`RACES` order (uniform if None); ignored when ``race`` is given.
        age_probs: 9 probabilities over :data:`AGE_GROUPS` (CelebA-like adults if None).
        male_prob: P(Male).
        race, gender: force the demographics (tests, balanced sets).
    """
    rng = np.random.default_rng([int(seed), 1, int(gid)])
    if race is None:
        p = np.full(7, 1 / 7) if race_probs is None else np.asarray(race_probs, float) / np.sum(race_probs)
        race = int(rng.choice(7, p=p))
    if gender is None:
        gender = 0 if rng.random() < male_prob else 1
    ap = np.asarray(DEFAULT_AGE_PROBS if age_probs is None else age_probs, float)
    g = int(rng.choice(9, p=ap / ap.sum()))
    hi = AGE_BOUNDS[g + 1] if g + 1 < len(AGE_BOUNDS) else 85
    age = float(rng.uniform(AGE_BOUNDS[g], hi))
    R = _RACE[race]
    male = gender == 0
    child = age < 12
    n = rng.normal

    def pick(probs):
        pr = np.asarray(probs, float)
        return int(rng.choice(len(pr), p=pr / pr.sum()))

    melanin = float(np.clip(n(R["m"], R["msd"]), 0.0, 1.0))
    yellow = float(np.clip(n(R["u"], 0.12), -0.15, 0.6))
    skin = skin_rgb(melanin, yellow)
    if race == 0 and rng.random() < 0.5:
        skin = (skin[0] + 4, skin[1] - 2, skin[2] + 2)  # pinkish undertone

    fw = R["fw"]
    chubby = float(np.clip(n(0.15, 0.18) + (0.1 if age > 45 else 0.0), 0, 1))
    head_w = n(fw, 0.05) + 0.08 * chubby + (0.03 if male else -0.02)
    jaw_w = head_w * float(np.clip(n(0.80 + (0.05 if male else -0.02), 0.05), 0.62, 0.98)) + 0.06 * chubby
    chin_w = float(np.clip(n(0.30 + (0.06 if male else 0.0), 0.06), 0.14, 0.5))
    chin_y = n(1.78 + (0.06 if male else 0.0), 0.07) - (0.22 if child else 0.0)
    eye_scale = 1.18 if child else 1.0
    lip = R["lip"] * (1.1 if not male else 1.0) * (0.85 if age > 55 else 1.0)

    hair_colour = pick(R["col"])
    if child and hair_colour == 2:
        hair_colour = 2
    hair_rgb = np.array(HAIR_RGB[HAIR_COLOURS[hair_colour]], float) * float(np.clip(n(1.0, 0.12), 0.7, 1.3))
    gray = float(np.clip((age - 42) / 30 + n(0, 0.15), 0, 1))

    if male:
        hair_len = pick((0.10, 0.62, 0.18, 0.10))
    else:
        hair_len = pick((0.01, 0.28, 0.34, 0.37))
    if child:
        hair_len = max(hair_len, 1)
    texture = pick(R["tex"])
    receding = float(np.clip(n(-0.2, 0.3) + (0.035 * (age - 25) if male else 0.0), 0, 1)) if male else 0.0
    if male and hair_len == 0:
        receding = max(receding, 0.5)
    bangs = float(rng.uniform(0.35, 0.7)) if (rng.random() < (0.2 if not male else 0.06) and hair_len > 0) else 0.0

    beard = 0
    if male and age >= 17:
        beard = pick((0.56, 0.15, 0.07, 0.11, 0.05, 0.06))
    beard_density = float(rng.uniform(0.55, 1.0))
    sideburns = bool(male and age >= 17 and (beard == 3 or rng.random() < 0.12) and hair_len > 0)

    moles = tuple((float(rng.uniform(-0.9, 0.9)), float(rng.uniform(-0.8, 1.6)), float(rng.uniform(0.02, 0.04)))
                  for _ in range(int(rng.poisson(2.2))))
    freckles = int(rng.integers(25, 60)) if (melanin < 0.2 and rng.random() < 0.18) else 0

    lipstick_p = 0.0
    makeup_p = 0.0
    if not male and age >= 16:
        lipstick_p = float(rng.choice([0.03, 0.9], p=[0.25, 0.75]))
        makeup_p = float(rng.choice([0.1, 0.9], p=[0.2, 0.8])) if lipstick_p > 0.5 else 0.08
    wears_glasses = rng.random() < (0.10 + 0.004 * max(0.0, age - 30))
    attractive = n(0.0, 1.0) - 0.04 * max(0.0, age - 30) - 1.2 * chubby + (0.4 if not male else -0.2)
    return Identity(
        gid=int(gid), race=race, gender=gender, age=age, melanin=melanin, skin=skin,
        head_w=float(head_w), fore_w=float(head_w * np.clip(n(0.93, 0.04), 0.82, 1.02)), jaw_w=float(jaw_w),
        chin_w=chin_w, chin_y=float(chin_y), depth=float(n(1.0 if race not in (3, 4) else 0.88, 0.06)),
        chubby=chubby, double_chin=bool(chubby > 0.45 and rng.random() < 0.6 and age > 25),
        eye_sep=float(n(0.5, 0.03)), eye_y=float(n(0.0, 0.03)),
        eye_w=float(n(0.205, 0.02) * (1.05 if child else 1.0)),
        eye_h=float(np.clip(n(0.105 * R["eh"], 0.02), 0.045, 0.17) * eye_scale),
        eye_tilt=float(n(0.07 if race in (3, 4) else 0.0, 0.08)),
        iris_r=float(n(0.085, 0.006) * eye_scale), iris_rgb=tuple(float(c) for c in np.clip(
            np.asarray(EYE_RGB[pick(R["eye"])]) * np.exp(n(0, 0.12)) + n(0, 12, 3), 0, 255)),
        crease=float(rng.uniform(0.04, 0.08)) if rng.random() < R["cr"] else 0.0,
        epicanthus=float(rng.uniform(0.4, 0.9)) if rng.random() < R["epi"] else 0.0,
        lash=float(np.clip(n(1.0 if not male else 0.6, 0.2), 0.3, 1.6)),
        brow_gap=float(n(0.27 if not male else 0.22, 0.04)), brow_len=float(n(0.5, 0.06)),
        brow_thick=float(np.clip(n((0.065 if male else 0.048) * R["br"], 0.016), 0.022, 0.12)),
        brow_arch=float(np.clip(n(0.05 if male else 0.085, 0.028), 0.0, 0.17)),
        brow_peak=float(np.clip(n(0.65, 0.08), 0.45, 0.85)), brow_tilt=float(n(0.0, 0.05)),
        brow_inner=float(n(0.12, 0.025)),
        nose_len=float(n(R["nl"], 0.035) * (0.9 if child else 1.0)),
        nose_w=float(n(R["nw"], 0.026) * (0.85 if child else 1.0) * (1.05 if male else 1.0)),
        bridge=float(np.clip(n(R["bridge"], 0.2), 0, 1.3)), nose_tip=float(n(0.07, 0.015)),
        nose_pointy=float(np.clip(n(0.4 if race in (0, 6) else 0.2, 0.25), 0, 1)),
        mouth_y=float(n(1.1, 0.045) - (0.08 if child else 0.0)),
        mouth_w=float(n(0.42, 0.04) * (0.85 if child else 1.0)),
        lip_up=float(np.clip(n(0.07 * lip, 0.015), 0.025, 0.14)),
        lip_low=float(np.clip(n(0.095 * lip, 0.018), 0.035, 0.18)),
        lip_rgb=(_mix(_shade(skin, 0.85), (150, 55, 65), 0.4) if melanin < 0.55
                 else _mix(_shade(skin, 0.75), (95, 45, 50), 0.35)),
        cupid=float(rng.uniform(0.1, 0.5)), ear_size=float(n(1.0, 0.08)), ear_y=float(n(0.3, 0.05)),
        hair_len=hair_len, hair_vol=float(np.clip(n(0.18, 0.06) + (0.12 if texture == 3 else 0.0), 0.04, 0.6)),
        hairline=float(n(-1.12, 0.07)), receding=receding, part=float(rng.uniform(-0.45, 0.45)), bangs=bangs,
        texture=texture, hair_colour=hair_colour, hair_rgb=tuple(float(v) for v in np.clip(hair_rgb, 0, 255)),
        gray=gray, beard=beard, beard_density=beard_density, sideburns=sideburns, moles=moles, freckles=freckles,
        rosy=float(np.clip(n(0.15, 0.2), 0, 1)) if melanin < 0.45 else 0.0,
        cheekbones=float(np.clip(n(0.4, 0.25), 0, 1)), bags=float(np.clip(n(-0.2, 0.25) + 0.02 * (age - 25), 0, 1)),
        glasses_p=float(rng.uniform(0.6, 1.0)) if wears_glasses else 0.01,
        glasses_shape=int(rng.integers(0, 4)),
        glasses_rgb=[(20, 20, 20), (90, 60, 30), (180, 160, 90), (160, 160, 170), (120, 20, 30)][int(rng.integers(5))],
        glasses_frame=float(rng.uniform(0.018, 0.05)), sunglasses=bool(rng.random() < 0.15),
        lipstick_p=lipstick_p, lipstick_rgb=_mix(skin, [(190, 30, 50), (200, 70, 100), (140, 30, 60), (215, 90, 90),
                                                        (170, 40, 40), (160, 90, 80)][int(rng.integers(6))],
                                                  float(rng.uniform(0.6, 0.95))),
        makeup_p=makeup_p,
        shadow_rgb=[(120, 80, 130), (90, 70, 60), (60, 80, 120), (150, 100, 80)][int(rng.integers(4))],
        earrings_p=(float(rng.choice([0.05, 0.8], p=[0.55, 0.45])) if not male else 0.01),
        necklace_p=(float(rng.choice([0.03, 0.6], p=[0.7, 0.3])) if not male else 0.01),
        necktie_p=(float(rng.choice([0.02, 0.7], p=[0.8, 0.2])) if male and age >= 18 else 0.0),
        hat_p=float(rng.choice([0.02, 0.4], p=[0.9, 0.1])),
        smile_p=float(np.clip(n(0.5, 0.2), 0.05, 0.95)), open_p=float(np.clip(n(0.45, 0.2), 0.05, 0.95)),
        attractive=float(attractive), tex_seed=int(rng.integers(2 ** 31)),
        chin_cleft=float(rng.uniform(0.5, 1.0)) if rng.random() < 0.25 else 0.0,
        socket=float(np.clip(n(R["socket"], 0.15), 0, 1.2)),
        dimples=float(rng.uniform(0.4, 1.0)) if rng.random() < 0.3 else 0.0,
        brow_dark=float(rng.uniform(0.45, 1.0)), nostril=float(np.exp(n(0, 0.25))), philtrum=float(rng.uniform(0, 1)),
        forehead_lines=int(rng.integers(0, 4)) if age > 28 else 0,
    )


def sample_identities(n: int, seed: int, *, start: int = 0, race_probs=None, age_probs=None,
                      male_prob: float = 0.5) -> list[Identity]:
    """Persons ``start .. start + n - 1`` of the global pool (see :func:`sample_identity`)."""
    return [sample_identity(seed, start + i, race_probs=race_probs, age_probs=age_probs, male_prob=male_prob)
            for i in range(n)]


# --------------------------------------------------------------------------------------------------------------------
# Per-image model
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Variation:
    """How much one dataset's photographs vary (the capture model of that dataset)."""

    yaw: float = 0.14            # sd, radians
    yaw_max: float = 0.45
    pitch: float = 0.06
    roll: float = 0.12
    scale: float = 0.07
    shift: float = 0.06
    det_noise: float = 0.025     # landmark detector error (canonical units) fed to the alignment
    ambient: tuple = (0.62, 1.25)
    light: tuple = (0.0, 0.65)
    tint: float = 0.11
    contrast: tuple = (0.85, 1.1)
    blur_p: float = 0.04         # chance of a Blurry capture
    jpeg: tuple = (88, 96)
    noise: tuple = (0.0, 2.0)
    age_delta: float = 0.0       # sd of the capture age around the identity's age, years
    restyle: float = 0.2         # how often the hairstyle changes between photographs


VARIATIONS = {
    "celeba": Variation(yaw=0.2),
    "fairface": Variation(yaw=0.2, roll=0.15, jpeg=(82, 95), noise=(0.0, 3.0)),
    "ms1m": Variation(yaw=0.25, roll=0.1, jpeg=(85, 95), noise=(0.0, 3.0), age_delta=2.0, restyle=0.3),
    "lfw": Variation(yaw=0.22, jpeg=(85, 95), noise=(0.0, 3.0), age_delta=2.0, restyle=0.3),
    "cfp_frontal": Variation(yaw=0.05, roll=0.05, jpeg=(88, 95)),
    "cfp_profile": Variation(yaw=0.0, yaw_max=0.75, roll=0.05, jpeg=(88, 95)),
    "agedb": Variation(yaw=0.12, jpeg=(80, 95), noise=(0.0, 4.0)),
    "qmul": Variation(yaw=0.22, yaw_max=0.6, pitch=0.12, roll=0.12, scale=0.1, shift=0.08, det_noise=0.08,
                      ambient=(0.45, 0.85), light=(0.0, 0.3), tint=0.08, contrast=(0.55, 0.85), blur_p=0.0,
                      jpeg=(30, 70), noise=(2.0, 8.0)),
}


@dataclass(slots=True)
class ImageParams:
    """One photograph of an identity (pose, light, expression, accessories, background, degradation)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    det_noise: tuple = ((0.0, 0.0),) * 5
    light_az: float = 0.0
    light: float = 0.0
    ambient: float = 1.0
    tint: tuple = (1.0, 1.0, 1.0)
    contrast: float = 1.0
    smile: float = 0.0
    mouth_open: float = 0.0
    squint: float = 1.0
    gaze: tuple = (0.0, 0.0)
    glasses: bool = False
    lipstick: bool = False
    makeup: bool = False
    hat: bool = False
    earrings: bool = False
    necklace: bool = False
    necktie: bool = False
    age_delta: float = 0.0
    hair_jitter: float = 0.0
    hair_len_delta: int = 0
    hair_vol: float = 1.0
    bangs_flip: bool = False
    part_flip: bool = False
    hair_shade: float = 1.0
    bg_rgb: tuple = (128, 128, 128)
    bg_seed: int = 0
    clothes_rgb: tuple = (60, 60, 90)
    hat_rgb: tuple = (40, 40, 40)
    blur: float = 0.0           # Gaussian sigma per 178 px of output width (CelebA 'Blurry')
    blur_px: float = 0.0        # extra Gaussian sigma in output pixels (optics of a surveillance camera)
    noise: float = 0.0
    jpeg: int = 95
    seed: int = 0


def _white_balance(rng: np.random.Generator, spread: float) -> tuple[float, float, float]:
    """Channel gains of an uncorrected white balance: warm/cool colour temperature plus a small green-magenta shift."""
    temp = float(np.clip(rng.normal(0.0, 6.0 * spread), -1.6, 1.6))
    green = float(np.clip(rng.normal(0.0, 0.5), -1.0, 1.0))
    return 1.0 + 0.12 * temp + 0.02 * green, 1.0 + 0.01 * temp - 0.05 * green, 1.0 - 0.15 * temp + 0.02 * green


def sample_image_params(identity: Identity, rng: np.random.Generator, variation: Variation | str = "celeba",
                        **overrides) -> ImageParams:
    """Draw one photograph of ``identity`` under a dataset's :class:`Variation`; ``overrides`` pin fields."""
    v = VARIATIONS[variation] if isinstance(variation, str) else variation
    n, u = rng.normal, rng.uniform
    yaw = float(np.clip(n(0, v.yaw), -v.yaw_max, v.yaw_max)) if v.yaw > 0 else 0.0
    if v.yaw == 0.0 and v.yaw_max > 0:  # profile-like captures: a large turn to either side
        yaw = float(rng.choice([-1, 1]) * u(0.6 * v.yaw_max, v.yaw_max))
    adult = identity.age >= 16
    smile = float(np.clip(u(0.55, 1.0) if rng.random() < identity.smile_p else u(0.0, 0.3), 0, 1))
    mouth_open = float(u(0.45, 1.0)) if rng.random() < identity.open_p else float(u(0.0, 0.25))
    makeup = bool(adult and rng.random() < identity.makeup_p)
    lipstick = bool(adult and rng.random() < identity.lipstick_p)
    bg_kind = rng.random()
    if bg_kind < 0.4:
        bg = u(20, 240, 3)
    elif bg_kind < 0.7:
        bg = np.full(3, u(30, 230)) + n(0, 8, 3)
    else:
        bg = np.array([u(60, 200), u(70, 200), u(80, 230)])
    p = ImageParams(
        yaw=yaw, pitch=float(n(0, v.pitch)), roll=float(n(0, v.roll)),
        scale=float(np.exp(n(0, v.scale))), dx=float(n(0, v.shift)), dy=float(n(0, v.shift)),
        det_noise=tuple((float(n(0, v.det_noise)), float(n(0, v.det_noise))) for _ in range(5)),
        light_az=float(u(0, 2 * math.pi)), light=float(u(*v.light)), ambient=float(u(*v.ambient)),
        tint=_white_balance(rng, v.tint), contrast=float(u(*v.contrast)),
        smile=smile, mouth_open=mouth_open, squint=float(np.clip(n(1.0, 0.12), 0.55, 1.2)),
        gaze=(float(n(0, 0.025)), float(n(0, 0.015))),
        glasses=bool(rng.random() < identity.glasses_p), lipstick=lipstick, makeup=makeup,
        hat=bool(rng.random() < identity.hat_p), earrings=bool(rng.random() < identity.earrings_p),
        necklace=bool(rng.random() < identity.necklace_p), necktie=bool(rng.random() < identity.necktie_p),
        age_delta=float(n(0, v.age_delta)) if v.age_delta else 0.0, hair_jitter=float(n(0, 1)),
        hair_len_delta=int(rng.choice([-1, 1])) if rng.random() < v.restyle * (2.0 if identity.gender else 1.0) else 0,
        hair_vol=float(np.exp(n(0, 0.25 * v.restyle / 0.2))), bangs_flip=bool(rng.random() < 0.3 * v.restyle),
        part_flip=bool(rng.random() < 1.5 * v.restyle), hair_shade=float(np.exp(n(0, 0.1))),
        bg_rgb=tuple(float(c) for c in np.clip(bg, 0, 255)), bg_seed=int(rng.integers(2 ** 31)),
        clothes_rgb=tuple(float(c) for c in u(15, 235, 3)), hat_rgb=tuple(float(c) for c in u(15, 220, 3)),
        blur=float(u(1.2, 2.2)) if rng.random() < v.blur_p else 0.0, noise=float(u(*v.noise)),
        jpeg=int(rng.integers(v.jpeg[0], v.jpeg[1] + 1)), seed=int(rng.integers(2 ** 31)),
    )
    return replace(p, **overrides) if overrides else p


# --------------------------------------------------------------------------------------------------------------------
# Attributes read off the rendered parameters
# --------------------------------------------------------------------------------------------------------------------

def effective_eye_open(identity: Identity, image: ImageParams) -> float:
    """Upper-lid opening actually drawn (canonical units): identity × squint × the lid lift of a smile."""
    return identity.eye_h * image.squint * (1.0 - 0.3 * image.smile)


def effective_identity(identity: Identity, image: ImageParams) -> Identity:
    """The person as photographed: capture age (gray, bags, receding hairline, thinner lips) and the day's hairstyle
    (length, volume, bangs, parting, shade) applied to the stable identity."""
    i, m = identity, image
    ch = {}
    if m.age_delta:
        d = m.age_delta
        ch.update(age=float(max(0.5, i.age + d)), gray=float(np.clip(i.gray + d / 30.0, 0, 1)),
                  bags=float(np.clip(i.bags + 0.02 * d, 0, 1)),
                  receding=float(np.clip(i.receding + (0.03 * d if i.gender == 0 else 0.0), 0, 1)),
                  lip_up=float(np.clip(i.lip_up * (1 - 0.004 * d), 0.02, 0.2)),
                  chubby=float(np.clip(i.chubby + 0.004 * d, 0, 1)))
    if i.hair_len > 0:
        if m.hair_len_delta:
            ch["hair_len"] = int(np.clip(i.hair_len + m.hair_len_delta, 1, 3))
        if m.bangs_flip:
            ch["bangs"] = 0.0 if i.bangs > 0 else 0.5
    if m.hair_vol != 1.0:
        ch["hair_vol"] = float(np.clip(i.hair_vol * m.hair_vol, 0.03, 0.75))
    if m.part_flip:
        ch["part"] = -i.part
    if m.hair_shade != 1.0:
        ch["hair_rgb"] = tuple(float(c) for c in np.clip(np.asarray(i.hair_rgb) * m.hair_shade, 0, 255))
    return replace(i, **ch) if ch else i


def attributes(identity: Identity, image: ImageParams) -> np.ndarray:
    """The 40 CelebA attributes of a rendered face, in :data:`ATTRIBUTE_NAMES` order, as int8 in {-1, 1}."""
    m = image
    i = effective_identity(identity, image)
    a = np.zeros(40, bool)
    male = i.gender == 0
    age, gray = i.age, i.gray
    a[ATTR["5_o_Clock_Shadow"]] = i.beard == 1
    a[ATTR["Arched_Eyebrows"]] = i.brow_arch > 0.095
    a[ATTR["Bags_Under_Eyes"]] = i.bags > 0.35
    a[ATTR["Bald"]] = i.hair_len == 0 and not m.hat
    a[ATTR["Bangs"]] = i.bangs > 0 and not m.hat
    a[ATTR["Big_Lips"]] = (i.lip_up + i.lip_low) > 0.18
    a[ATTR["Big_Nose"]] = i.nose_w * i.nose_len > 0.142
    visible_hair = i.hair_len > 0 and not m.hat
    a[ATTR["Gray_Hair"]] = visible_hair and gray > 0.55
    base = HAIR_COLOURS[i.hair_colour]
    a[ATTR["Black_Hair"]] = visible_hair and base == "black" and gray <= 0.55
    a[ATTR["Blond_Hair"]] = visible_hair and base == "blond" and gray <= 0.55
    a[ATTR["Brown_Hair"]] = visible_hair and base in ("brown", "red") and gray <= 0.55
    a[ATTR["Blurry"]] = m.blur > 0
    a[ATTR["Bushy_Eyebrows"]] = i.brow_thick > 0.075
    a[ATTR["Chubby"]] = i.chubby > 0.5
    a[ATTR["Double_Chin"]] = i.double_chin
    a[ATTR["Eyeglasses"]] = m.glasses
    a[ATTR["Goatee"]] = i.beard in (2, 5)
    a[ATTR["Heavy_Makeup"]] = m.makeup
    a[ATTR["High_Cheekbones"]] = i.cheekbones + 0.6 * m.smile > 0.75
    a[ATTR["Male"]] = male
    a[ATTR["Mouth_Slightly_Open"]] = m.mouth_open > 0.4
    a[ATTR["Mustache"]] = i.beard in (4, 5)
    a[ATTR["Narrow_Eyes"]] = effective_eye_open(i, m) < 0.063
    a[ATTR["No_Beard"]] = i.beard == 0
    a[ATTR["Oval_Face"]] = (i.chin_y - i.head_w * 0.5 > 1.3) and i.chubby < 0.35
    a[ATTR["Pale_Skin"]] = i.melanin < 0.045
    a[ATTR["Pointy_Nose"]] = i.nose_pointy > 0.55
    a[ATTR["Receding_Hairline"]] = i.receding > 0.45 and i.hair_len > 0 and not m.hat
    a[ATTR["Rosy_Cheeks"]] = i.rosy > 0.5 or (m.makeup and i.rosy > 0.35)
    a[ATTR["Sideburns"]] = i.sideburns
    a[ATTR["Smiling"]] = m.smile > 0.5
    a[ATTR["Straight_Hair"]] = visible_hair and i.texture == 0 and i.hair_len >= 2
    a[ATTR["Wavy_Hair"]] = visible_hair and i.texture == 1 and i.hair_len >= 1
    a[ATTR["Wearing_Earrings"]] = m.earrings
    a[ATTR["Wearing_Hat"]] = m.hat
    a[ATTR["Wearing_Lipstick"]] = m.lipstick
    a[ATTR["Wearing_Necklace"]] = m.necklace
    a[ATTR["Wearing_Necktie"]] = m.necktie
    a[ATTR["Young"]] = age < 40
    a[ATTR["Attractive"]] = (i.attractive + 0.6 * m.makeup + 0.3 * m.smile - 0.8 * (m.blur > 0)
                             - 0.03 * max(0.0, age - 40)) > -0.1
    return np.where(a, 1, -1).astype(np.int8)


# --------------------------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------------------------

_SPLINE_BASIS: dict[int, np.ndarray] = {}
_T7, _T11, _U13 = np.linspace(0, 1, 7), np.linspace(0, 1, 11), np.linspace(-1, 1, 13)


def _spline(ctrl, n: int = 6, closed: bool = False) -> np.ndarray:
    """Uniform Catmull-Rom curve through the control points (K×2) → M×2 (n samples per segment)."""
    p = np.asarray(ctrl, float)
    p = np.concatenate([p[-1:], p, p[:2]]) if closed else np.concatenate([p[:1], p, p[-1:]])
    basis = _SPLINE_BASIS.get(n)
    if basis is None:
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        basis = 0.5 * np.concatenate([-t + 2 * t ** 2 - t ** 3, 2 - 5 * t ** 2 + 3 * t ** 3,
                                      t + 4 * t ** 2 - 3 * t ** 3, -t ** 2 + t ** 3], 1)
        _SPLINE_BASIS[n] = basis
    k = np.arange(1, len(p) - 2)
    groups = np.stack([p[k - 1], p[k], p[k + 1], p[k + 2]], 1)  # S×4×2
    out = np.einsum("nf,sfd->snd", basis, groups).reshape(-1, 2)
    return out if closed else np.concatenate([out, p[-2:-1]])


_TRIG: dict = {}


def _ellipse(cx, cy, rx, ry, ang: float = 0.0, n: int = 20, t0: float = 0.0, t1: float = 2 * math.pi) -> np.ndarray:
    key = (n, t0, t1)
    cs = _TRIG.get(key)
    if cs is None:
        t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-9)
        cs = _TRIG[key] = np.stack([np.cos(t), np.sin(t)], 1)
    if ang == 0.0:
        return cs * (rx, ry) + (cx, cy)
    c, s = math.cos(ang), math.sin(ang)
    e = cs * (rx, ry)
    return e @ np.array([[c, s], [-s, c]]) + (cx, cy)


def estimate_similarity(src, dst) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping ``src`` (N×2) onto ``dst`` (N×2) → 2×3 matrix."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    scale = float(np.trace(np.diag(sig) @ e) / (s ** 2).sum(1).mean())
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = md - scale * r @ ms
    return m


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2×3 affines: (a ∘ b)(p) = a(b(p))."""
    out = np.zeros((2, 3))
    out[:, :2] = a[:, :2] @ b[:, :2]
    out[:, 2] = a[:, :2] @ b[:, 2] + a[:, 2]
    return out


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


# --------------------------------------------------------------------------------------------------------------------
# Layouts: where the face goes in the output image
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Layout:
    """Output framing: ``template`` (5×2 output pixels) aligns the landmarks; ``box`` (loose crop) does not.

    ``box`` = (cx, cy, half_width) of the canonical-frame region mapped to the output width (detector-style crop).
    """

    size: tuple  # (H, W)
    template: tuple | None = None
    box: tuple | None = None


def layout_for(name: str, size=None) -> Layout:
    """Named layouts: ``arcface`` (112², MS1M / .bin), ``celeba`` (218×178), ``fairface025`` / ``fairface125``
    (224², dlib chips with padding 0.25 / 1.25), ``loose`` (detector box, any size: QMUL-SurvFace)."""
    if name == "arcface":
        h, w = _hw(size or 112)
        return Layout((h, w), tuple((x * w / 112, y * h / 112) for x, y in ARCFACE_TEMPLATE))
    if name == "celeba":
        h, w = _hw(size or (218, 178))
        return Layout((h, w), tuple((x * w / 178, y * h / 218) for x, y in CELEBA_TEMPLATE))
    if name in ("fairface025", "fairface125"):
        h, w = _hw(size or 224)
        pad = 0.25 if name == "fairface025" else 1.25
        return Layout((h, w), tuple(((x + pad) / (1 + 2 * pad) * w, (y + pad) / (1 + 2 * pad) * h)
                                    for x, y in DLIB_UNIT_TEMPLATE))
    if name == "loose":
        h, w = _hw(size or 112)
        return Layout((h, w), None, (0.0, 0.3, 1.25))
    raise ValueError(f"unknown layout {name!r}; expected arcface, celeba, fairface025, fairface125 or loose")


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


# Canonical landmark positions before identity geometry (used by the loose layout and as a reference).
def _landmarks_canonical(i: Identity, m: ImageParams) -> np.ndarray:
    mw, my = _mouth_corners(i, m)
    return np.array([[-i.eye_sep, i.eye_y], [i.eye_sep, i.eye_y], [0.0, i.nose_len + 0.04],
                     [-mw, my], [mw, my]])


def _mouth_corners(i: Identity, m: ImageParams) -> tuple[float, float]:
    return i.mouth_w + 0.06 * m.smile, i.mouth_y - 0.09 * m.smile + 0.02 * m.mouth_open


# --------------------------------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------------------------------

class _Painter:
    """Draws canonical-frame shapes with depth through yaw / pitch and a 2×3 similarity onto a supersampled canvas."""

    def __init__(self, i: Identity, m: ImageParams, size_hw, ss: int):
        self.i, self.m, self.ss = i, m, ss
        self.hw = size_hw
        self.cy, self.sy = math.cos(m.yaw), math.sin(m.yaw)
        self.cp, self.sp = math.cos(m.pitch), math.sin(m.pitch)
        self.W, self.H, self.D, self.yc = i.head_w * 1.02, 2.0, i.depth * i.head_w, 0.05
        # the silhouette of a rotated ellipsoid keeps its width sqrt(W²cos² + D²sin²)
        self.kx = math.sqrt(self.cy ** 2 + (self.D / self.W) ** 2 * self.sy ** 2)
        self.ky = math.sqrt(self.cp ** 2 + (self.D / self.H) ** 2 * self.sp ** 2)

    # -- projection ---------------------------------------------------------------------------------------------
    def project(self, pts, dz=0.0, sil: bool = False) -> np.ndarray:
        """Canonical N×2 (+depth offset) → projected (pre-similarity) N×2."""
        pts = np.asarray(pts, float).reshape(-1, 2)
        x, y = pts[:, 0], pts[:, 1]
        out = np.empty_like(pts)
        if sil:
            out[:, 0] = x * self.kx
            out[:, 1] = (y - self.yc) * self.ky + self.yc
            return out
        r = 1.0 - (x * (1.0 / self.W)) ** 2 - ((y - self.yc) * (1.0 / self.H)) ** 2
        z = self.D * np.sqrt(np.maximum(r, 0.0)) + dz
        out[:, 0] = x * self.cy + z * self.sy
        out[:, 1] = (y - self.yc) * self.cp - (z * self.cy - x * self.sy) * self.sp + self.yc
        return out

    def set_transform(self, a: np.ndarray) -> None:
        """Fold yaw / pitch projection and the 2×3 similarity ``a`` into matrices acting on (x, y, z, 1)."""
        # surface: X = x cy + z sy, Y = x sy sp + y cp - z cy sp + yc (1 - cp)
        proj = np.array([[self.cy, 0.0, self.sy, 0.0],
                         [self.sy * self.sp, self.cp, -self.cy * self.sp, self.yc * (1 - self.cp)],
                         [0.0, 0.0, 0.0, 1.0]])
        self.B = a @ proj  # 2×4
        sil = np.array([[self.kx, 0.0, 0.0], [0.0, self.ky, self.yc * (1 - self.ky)], [0.0, 0.0, 1.0]])
        self.S = a @ sil  # 2×3
        self.px_per_unit = float(math.sqrt(abs(np.linalg.det(a[:, :2]))))
        self.ops, self.parts, self.n = [], [], 0

    # -- display list: primitives are recorded, then every point is projected in one vectorised pass -----------
    def _add(self, pts, dz, sil) -> tuple[int, int]:
        pts = np.asarray(pts, float).reshape(-1, 2)
        start = self.n
        self.n += len(pts)
        self.parts.append((pts, float(dz), bool(sil)))
        return start, self.n

    def poly(self, pts, fill, dz=0.0, sil=False):
        self.ops.append(("poly", *self._add(pts, dz, sil), fill, 0, 0.0))

    def poly_parts(self, parts, fill):
        """One polygon whose boundary pieces use different projections: ``parts`` = [(pts, dz, sil), ...]."""
        start = self.n
        for pts, dz, sil in parts:
            self._add(pts, dz, sil)
        self.ops.append(("poly", start, self.n, fill, 0, 0.0))

    def line(self, pts, width, fill, dz=0.0, sil=False):
        self.ops.append(("line", *self._add(pts, dz, sil), fill, self.w(width), 0.0))

    def lines(self, pts, n_per: int, width, fill, dz=0.0, sil=False):
        """Several separate polylines of ``n_per`` points each (strokes: lashes, strands, hairs) as one op."""
        if len(pts):
            self.ops.append(("lines", *self._add(pts, dz, sil), fill, self.w(width), float(n_per)))

    def dot(self, x, y, r, fill, dz=0.0):
        self.dots(((x, y),), r, fill, dz)

    def dots(self, pts, r, fill, dz=0.0, outline_width: float = 0.0, sil=False):
        """Filled circles (or rings when ``outline_width`` > 0) of canonical radius ``r`` at N×2 centres."""
        if len(pts):
            self.ops.append(("dots", *self._add(pts, dz, sil), fill, self.w(outline_width) if outline_width else 0,
                             max(0.5, r * self.px_per_unit)))

    def w(self, width: float) -> int:
        return max(1, int(round(width * self.px_per_unit)))

    def flush(self) -> None:
        if not self.parts:
            return
        pts = np.concatenate([q[0] for q in self.parts])
        counts = [len(q[0]) for q in self.parts]
        dz = np.repeat([q[1] for q in self.parts], counts)
        sil = np.repeat([q[2] for q in self.parts], counts)
        x, y = pts[:, 0], pts[:, 1]
        r = 1.0 - (x * (1.0 / self.W)) ** 2 - ((y - self.yc) * (1.0 / self.H)) ** 2
        z = self.D * np.sqrt(np.maximum(r, 0.0)) + dz
        b, sm = self.B, self.S
        surf = pts @ b[:, :2].T + b[:, 3] + z[:, None] * b[:, 2]
        flat = np.where(sil[:, None], pts @ sm[:, :2].T + sm[:, 2], surf).ravel().tolist()
        for kind, s0, s1, fill, width, rr in self.ops:
            # PIL's blending path is several times slower than a plain fill: use it only for translucent ink
            draw = self.draw if len(fill) == 4 else self.draw_opaque
            xy = flat[2 * s0:2 * s1]
            if kind == "poly":
                if len(xy) >= 6:
                    draw.polygon(xy, fill=fill)
            elif kind == "line":
                draw.line(xy, fill=fill, width=width, joint="curve" if len(xy) > 4 else None)
            elif kind == "lines":
                step = 2 * int(rr)
                for k in range(0, len(xy), step):
                    draw.line(xy[k:k + step], fill=fill, width=width, joint="curve" if step > 4 else None)
            else:
                for k in range(0, len(xy), 2):
                    box = (xy[k] - rr, xy[k + 1] - rr, xy[k] + rr, xy[k + 1] + rr)
                    if width:
                        draw.ellipse(box, outline=fill, width=width)
                    else:
                        draw.ellipse(box, fill=fill)
        self.ops, self.parts, self.n = [], [], 0


def _c(rgb, a: int | None = None):
    c = _clip_rgb(rgb)
    return c if a is None else (*c, int(a))


def _shade(rgb, f: float):
    return tuple(v * f for v in rgb)


def render_face(identity: Identity, image: ImageParams | None = None, size=112, layout: str | Layout = "arcface",
                *, supersample: int | None = None, return_landmarks: bool = False):
    """Render one photograph.

    Args:
        identity: the person (:func:`sample_identity`).
        image: the photograph's parameters (:func:`sample_image_params`); None = frontal, neutral, even light.
        size: output size, an int (square) or ``(H, W)``; a layout's default framing is scaled to it.
        layout: :func:`layout_for` name or a :class:`Layout`.
        supersample: canvas oversampling for anti-aliasing (default: 2 for ≥ 96 px, more for small outputs).
        return_landmarks: also return the 5 landmarks (5×2 float, output pixels, pixel centres at integers).

    Returns:
        uint8 H×W×3 RGB array (and the landmarks when asked).
    """
    i = identity
    m = image if image is not None else ImageParams()
    lay = layout_for(layout, size) if isinstance(layout, str) else layout
    h, w = lay.size
    ss = supersample or (2 if min(h, w) >= 96 else (3 if min(h, w) >= 48 else 4))
    i = effective_identity(i, m)
    p = _Painter(i, m, (h, w), ss)

    # wild frame: projected canonical → (roll, scale, shift); then the layout's alignment
    wild = _similarity(m.roll, m.scale, m.dx, m.dy)
    lm_can = _landmarks_canonical(i, m)
    lm_proj = np.concatenate([p.project(lm_can[:2], 0.02), p.project(lm_can[2:3], 0.42 * i.nose_tip / 0.07 * 0.7),
                              p.project(lm_can[3:], 0.05)])
    lm_wild = lm_proj @ wild[:, :2].T + wild[:, 2]
    if lay.template is not None:
        align = estimate_similarity(lm_wild + np.asarray(m.det_noise), np.asarray(lay.template))
    else:
        cx, cy, hw_ = lay.box
        box_c = np.array([cx, cy]) @ wild[:, :2].T + wild[:, 2] + np.asarray(m.det_noise[2]) * 2
        sc = (w / 2) / (hw_ * m.scale)
        align = np.array([[sc, 0, w / 2 - sc * box_c[0]], [0, sc, h / 2 - sc * box_c[1]]])
    M = _compose(align, wild)
    landmarks = lm_proj @ M[:, :2].T + M[:, 2]
    # output pixel-centre coordinates u → canvas coordinates (u + 0.5) * ss - 0.5
    to_canvas = np.array([[ss, 0, 0.5 * ss - 0.5], [0, ss, 0.5 * ss - 0.5]])
    p.set_transform(_compose(to_canvas, M))
    # level of detail: textures (strands, curls, stubble, freckles) need ≥ 9 output px per inter-ocular unit, thin
    # lines (lashes, creases, wrinkles, marks) ≥ 20; below that they would be sub-pixel smudges not worth drawing
    p.detail = p.px_per_unit / ss >= 9.0
    p.fine = p.px_per_unit / ss >= 20.0
    p.img = Image.new("RGB", (w * ss, h * ss), _c(m.bg_rgb))
    p.draw = ImageDraw.Draw(p.img, "RGBA")
    p.draw_opaque = ImageDraw.Draw(p.img)
    p.bg_A = _compose(to_canvas, _compose(align, wild))

    _draw_scene(p)
    p.flush()
    img = p.img.reduce(ss) if ss > 1 else p.img
    arr = _finish(p, img, M)
    return (arr, landmarks.astype(np.float32)) if return_landmarks else arr


def _hair_rgb(i: Identity):
    return _mix(i.hair_rgb, GRAY_RGB, float(np.clip(i.gray, 0, 1)) ** 1.5)


def _draw_scene(p: _Painter):
    i, m = p.i, p.m
    rng = np.random.default_rng([m.bg_seed, 7])
    # background clutter in the wild frame (not yawed with the head)
    bgA = p.bg_A
    for _ in range(int(rng.integers(2, 8))):
        cx, cy = rng.uniform(-5, 5), rng.uniform(-5, 5)
        rx, ry = rng.uniform(0.3, 4), rng.uniform(0.3, 4)
        col = np.clip(np.asarray(m.bg_rgb) + rng.normal(0, 55, 3), 0, 255)
        kind = rng.random()
        if kind < 0.2:  # edges of furniture, frames, text lines
            ends = np.array([[cx - rx, cy], [cx + rx, cy + rng.normal(0, 1)]])
            xy = (ends @ bgA[:, :2].T + bgA[:, 2]).ravel().tolist()
            p.draw_opaque.line(xy, fill=_c(col), width=max(1, int(rng.uniform(0.03, 0.2) * p.px_per_unit)))
            continue
        pts = _ellipse(cx, cy, rx, ry, rng.uniform(0, 3.14), 12) if kind < 0.6 else \
            np.array([[cx - rx, cy - ry], [cx + rx, cy - ry], [cx + rx, cy + ry], [cx - rx, cy + ry]])
        xy = (pts @ bgA[:, :2].T + bgA[:, 2]).ravel().tolist()
        if rng.random() < 0.5:
            p.draw_opaque.polygon(xy, fill=_c(col))
        else:
            p.draw.polygon(xy, fill=_c(col, int(rng.uniform(90, 220))))

    skin = i.skin
    hair = _hair_rgb(i)
    sil = True
    hv = i.hair_vol * (1 + 0.08 * m.hair_jitter)
    top = -2.0
    # --- back hair (behind head / neck) ---------------------------------------------------------------------------
    if i.hair_len >= 2 and not m.hat:
        end = 1.25 if i.hair_len == 2 else 2.9 + 0.3 * math.tanh(m.hair_jitter)
        side = i.head_w + hv + (0.05 if i.hair_len == 2 else 0.2)
        ctrl = [[-side * 0.95, end], [-side, 0.6], [-(i.head_w + hv), -0.6], [-(i.fore_w * 0.8 + hv), -1.6],
                [0, top - hv], [i.fore_w * 0.8 + hv, -1.6], [i.head_w + hv, -0.6], [side, 0.6], [side * 0.95, end]]
        pts = _spline(ctrl, 5)
        pts = np.concatenate([pts, [[side * 0.5, end + 0.1], [-side * 0.5, end + 0.1]]])
        p.poly(pts, _c(_shade(hair, 0.82)), sil=sil)
    # --- neck and clothes -----------------------------------------------------------------------------------------
    nw = 0.55 * i.head_w + 0.1 * i.chubby + (0.06 if i.gender == 0 else 0.0)
    clothes = m.clothes_rgb
    p.poly([[-3.6, 6.0], [-3.2, 2.9], [-1.2, 2.35], [1.2, 2.35], [3.2, 2.9], [3.6, 6.0]], _c(clothes), sil=sil)
    neck = [[-nw, 1.0], [nw, 1.0], [nw * 1.05, 2.45], [0.0, 2.75], [-nw * 1.05, 2.45]]
    p.poly(neck, _c(_shade(skin, 0.82)), sil=sil)
    if i.gender == 0 and i.age >= 15 and p.fine:
        p.line(_ellipse(0.0, 1.95, 0.07, 0.09, 0, 7, 0.3, math.pi - 0.3), 0.025, _c(_shade(skin, 0.62), 150), sil=sil)
    if m.necktie:
        p.poly([[-0.55, 2.3], [0, 2.6], [0.55, 2.3], [0.5, 2.75], [0, 2.85], [-0.5, 2.75]], (235, 235, 235), sil=sil)
        tie = _c(m.hat_rgb)
        p.poly([[-0.12, 2.58], [0.12, 2.58], [0.09, 2.78], [-0.09, 2.78]], tie, sil=sil)
        p.poly([[-0.09, 2.76], [0.09, 2.76], [0.18, 3.9], [0, 4.1], [-0.18, 3.9]], tie, sil=sil)
    if m.necklace:
        col = (215, 180, 70) if (i.tex_seed % 2) else (200, 200, 210)
        p.line(_ellipse(0, 2.05, nw * 1.1, 0.45, 0, 14, 0.15, math.pi - 0.15), 0.035, col, sil=sil)
    # --- ears -----------------------------------------------------------------------------------------------------
    ex = i.head_w * 0.97
    for s in (-1, 1):
        pts = _ellipse(s * (ex + 0.06), i.ear_y, 0.14 * i.ear_size, 0.3 * i.ear_size, 0, 14)
        p.poly(pts, _c(_shade(skin, 0.93)), dz=-0.35)
        p.line(_ellipse(s * (ex + 0.07), i.ear_y, 0.08 * i.ear_size, 0.2 * i.ear_size, 0, 8,
                        -1.2 if s > 0 else 1.9, 1.2 if s > 0 else 4.4), 0.025, _c(_shade(skin, 0.7)), dz=-0.35)
        if m.earrings:
            col = (225, 190, 80) if (i.tex_seed >> 3) % 2 else (210, 210, 220)
            ey = i.ear_y + 0.3 * i.ear_size
            if (i.tex_seed >> 5) % 2:
                p.line(_ellipse(s * (ex + 0.06), ey + 0.09, 0.07, 0.09, 0, 12), 0.022, col, dz=-0.3)
            else:
                p.dot(s * (ex + 0.06), ey, 0.04, col, dz=-0.3)
    # --- face outline ----------------------------------------------------------------------------------------------
    outline = _face_outline(i)
    p.poly(outline, _c(skin), sil=sil)
    # cheeks: cheekbone hollow, rosiness, blush; nested translucent ellipses fake a soft gradient
    for s in (-1, 1):
        cx, cy = s * (i.eye_sep + 0.12), 0.48 - 0.08 * m.smile
        if i.cheekbones > 0.3 or m.smile > 0.5:
            a = int((40 * i.cheekbones + 25 * m.smile) / 2)
            for k in (1.0, 0.65):
                p.poly(_ellipse(cx + s * 0.05, cy + 0.3, 0.24 * k, 0.08 * k, -s * 0.25, 12), _c(_shade(skin, 0.8), a))
        a = int((80 * i.rosy + (50 if m.makeup else 0)) / 3)
        if a > 6:
            for k in (1.0, 0.72, 0.45):
                p.poly(_ellipse(cx, cy, 0.22 * k, 0.15 * k, 0, 14), _c((225, 95, 105), a))
    mw, my = _mouth_corners(i, m)
    if p.fine:
        _draw_marks(p, mw, my)
    _draw_beard(p, mw, my)
    _draw_mouth(p, mw, my)
    _draw_nose(p)
    _draw_eyes(p)
    _draw_brows(p)
    _draw_hair_front(p, hv)
    if m.glasses:
        _draw_glasses(p)


def _draw_marks(p: _Painter, mw: float, my: float):
    """Thin lines and small marks (≈ 0.02 inter-ocular units): wrinkles, folds, moles, cleft, dimples, freckles."""
    i, m = p.i, p.m
    skin = i.skin
    if i.double_chin:
        p.line(_ellipse(0, i.chin_y - 0.02, i.chin_w + 0.15, 0.12, 0, 10, 0.35, math.pi - 0.35), 0.025,
               _c(_shade(skin, 0.75), 150))
    # wrinkles, bags, nasolabial folds
    age = i.age
    wrinkle = _c(_shade(skin, 0.72), int(np.clip((age - 38) * 5, 0, 150)))
    if age > 40:
        for k in range(int(min(4, (age - 35) / 8))):
            y = -0.62 - 0.13 * k
            p.line(_spline([[-0.45, y + 0.02], [0, y - 0.02], [0.45, y + 0.02]], 4), 0.02, wrinkle)
        for s in (-1, 1):
            x0 = s * (i.eye_sep + i.eye_w + 0.05)
            for k in (-1, 0, 1):
                p.line([[x0, i.eye_y + 0.04 * k], [x0 + s * 0.12, i.eye_y + 0.08 * k]], 0.015, wrinkle)
    if i.bags > 0.25:
        for s in (-1, 1):
            ex0 = s * i.eye_sep
            p.line(_ellipse(ex0, i.eye_y + 0.05, i.eye_w * 0.9, 0.11, 0, 8, 0.4, math.pi - 0.4), 0.025,
                   _c(_shade(skin, 0.7), int(170 * min(1.0, i.bags))))
    fold = int(np.clip(60 * m.smile + 4 * max(0, age - 35), 0, 180))
    if fold > 15:
        for s in (-1, 1):
            p.line(_spline([[s * (i.nose_w + 0.06), i.nose_len - 0.06], [s * (i.nose_w + 0.16), i.nose_len + 0.2],
                            [s * (mw + 0.07), my + 0.08]], 4), 0.028, _c(_shade(skin, 0.7), fold))
    # moles and freckles: fine identity marks lost in thumbnails
    for (x, y, r) in i.moles:
        p.dot(x * i.head_w * 0.9, y, r, _c(_shade(skin, 0.45)))
    if i.chin_cleft:
        cy_ = i.chin_y + 0.05 * i.chubby
        p.line([[0.0, cy_ - 0.2], [0.0, cy_ - 0.06]], 0.022, _c(_shade(skin, 0.7), int(170 * i.chin_cleft)))
    if i.dimples:
        for s in (-1, 1):
            p.line(_ellipse(s * (mw + 0.1), my - 0.02, 0.03, 0.06, 0, 6, -1.2, 1.2) * [s, 1] + [0, 0], 0.02,
                   _c(_shade(skin, 0.65), int(i.dimples * (60 + 150 * m.smile))))
    if i.forehead_lines and age <= 40:
        for k in range(i.forehead_lines):
            y = -0.7 - 0.12 * k
            p.line(_spline([[-0.35, y + 0.02], [0, y - 0.015], [0.35, y + 0.02]], 3), 0.014,
                   _c(_shade(skin, 0.76), 110))
    for s in (-1, 1):  # philtrum ridges
        p.line([[s * 0.04, i.nose_len + 0.08], [s * 0.05, my - 0.1]], 0.02,
               _c(_shade(skin, 0.78), int(120 * i.philtrum)), dz=0.05)
    if i.freckles:
        fr = np.random.default_rng(i.tex_seed)
        pts = np.stack([fr.choice([-1.0, 1.0], i.freckles) * fr.uniform(0.05, 0.75, i.freckles),
                        fr.uniform(0.15, 0.7, i.freckles)], 1)
        p.dots(pts, 0.014, _c(_shade(skin, 0.7), 180))


def _face_outline(i: Identity) -> np.ndarray:
    cw = i.head_w
    chin_y = i.chin_y + 0.05 * i.chubby
    jaw = i.jaw_w
    right = [[0.0, -2.0], [i.fore_w * 0.7, -1.75], [i.fore_w, -1.0], [cw * 0.99, -0.3], [cw, 0.35],
             [(cw + jaw) / 2 + 0.02, 0.9], [jaw, chin_y - 0.5], [i.chin_w + 0.12, chin_y - 0.12],
             [i.chin_w * 0.5, chin_y - 0.01], [0.0, chin_y]]
    half = _spline(right, 6)
    left = half[::-1][1:-1] * np.array([-1.0, 1.0])
    return np.concatenate([half, left])


def _draw_beard(p: _Painter, mw: float, my: float):
    i = p.i
    col = _hair_rgb(i)
    dens = i.beard_density
    chin_y = i.chin_y + 0.05 * i.chubby
    rng = np.random.default_rng([i.tex_seed, 3])
    if i.beard == 0 and i.gender == 0 and i.age >= 18 and p.detail:
        # shaved skin still shows follicles: fine stipple only, no tint a thumbnail would keep
        pts = np.stack([rng.uniform(-i.jaw_w * 0.85, i.jaw_w * 0.85, 70), rng.uniform(my + 0.08, chin_y - 0.08, 70)], 1)
        pts = pts[np.abs(pts[:, 0]) > 0.5 * (1 - (pts[:, 1] - my) / (chin_y - my))]
        p.dots(pts, 0.006, _c(_shade(i.skin, 0.6), 170))
    if i.beard == 0 and not i.sideburns:
        return
    if i.sideburns:
        for s in (-1, 1):
            x = s * i.head_w * 0.97
            p.poly([[x + s * 0.01, -0.45], [x - s * 0.13, -0.45], [x - s * 0.1, 0.35], [x - s * 0.02, 0.5]],
                   _c(col, int(200 * dens)))
    if i.beard in (1, 3):
        outline = _face_outline(i)
        lower = outline[outline[:, 1] > 0.25]
        lower = lower[np.argsort(np.arctan2(lower[:, 1] - 0.3, lower[:, 0]))]
        inner = _spline([[-(i.head_w - 0.12), 0.3], [-(mw + 0.14), my - 0.25], [0, i.nose_len + 0.1],
                         [mw + 0.14, my - 0.25], [i.head_w - 0.12, 0.3]], 4)
        region = np.concatenate([lower * 1.02, inner])  # right → chin → left, then back along the cheeks
        if i.beard == 1:
            p.poly(region, _c(_mix(col, (60, 70, 80), 0.5), int(55 * dens)))
            if p.detail:
                pts = np.stack([rng.uniform(-i.jaw_w * 0.9, i.jaw_w * 0.9, 90),
                                rng.uniform(i.nose_len + 0.15, chin_y - 0.05, 90)], 1)
                p.dots(pts[:45], 0.008, _c(col, 150))
                p.dots(pts[45:], 0.006, _c(_shade(col, 0.7), 150))
        else:
            p.poly(region, _c(col, int(235 * dens)))
            if p.detail:
                x, y = rng.uniform(-i.jaw_w * 0.9, i.jaw_w * 0.9, 40), rng.uniform(my, chin_y, 40)
                ends = np.stack([np.stack([x, y], 1), np.stack([x + rng.normal(0, 0.03, 40), y + 0.07], 1)], 1)
                p.lines(ends.reshape(-1, 2), 2, 0.015, _c(_shade(col, 0.7), 180))
    if i.beard in (2, 5):
        p.poly(_spline([[-(mw * 0.75), my + 0.08], [-(i.chin_w + 0.08), chin_y - 0.15], [0, chin_y + 0.05],
                        [i.chin_w + 0.08, chin_y - 0.15], [mw * 0.75, my + 0.08], [0, my + 0.14]], 3, closed=True),
               _c(col, int(235 * dens)))
    if i.beard in (3, 4, 5):
        top = i.nose_len + 0.09
        p.poly([[-(mw + 0.05), my + 0.03], [-(mw * 0.6), top + 0.02], [0, top - 0.01], [mw * 0.6, top + 0.02],
                [mw + 0.05, my + 0.03], [0, my - 0.07]], _c(col, int(240 * dens)))


def _draw_mouth(p: _Painter, mw: float, my: float):
    i, m = p.i, p.m
    lipc = i.lipstick_rgb if m.lipstick else i.lip_rgb
    opening = 0.17 * max(0.0, m.mouth_open - 0.3) / 0.7
    cy = -0.09 * m.smile  # corners relative to the centre
    yc = my - cy  # mouth centre line
    xs = _U13 * mw
    t = xs / mw
    centre = yc + cy * t ** 2
    up = i.lip_up * (1 - 0.3 * m.smile)
    cupid = up * (1 - i.cupid * np.exp(-(xs / 0.07) ** 2) * 0.6) * np.sqrt(np.clip(1 - t ** 2, 0, 1)) ** 0.7
    upper_top = np.stack([xs, centre - cupid - 0.01], 1)
    upper_bot = np.stack([xs, centre], 1)
    low = i.lip_low * (1 - 0.25 * m.smile)
    lower_top = np.stack([xs, centre + opening * np.sqrt(np.clip(1 - t ** 2, 0, 1))], 1)
    lower_bot = np.stack([xs, lower_top[:, 1] + low * np.clip(1 - t ** 2, 0, 1) ** 0.6], 1)
    dz = 0.06
    if opening > 0.005:
        p.poly(np.concatenate([upper_bot, lower_top[::-1]]), _c((70, 25, 30)), dz=dz)
        teeth_h = min(opening * 0.55, 0.06) if m.smile > 0.3 or opening > 0.06 else 0.0
        if teeth_h > 0:
            tx = xs[2:-2]
            p.poly(np.concatenate([np.stack([tx, centre[2:-2]], 1),
                                   np.stack([tx, centre[2:-2] + teeth_h], 1)[::-1]]), (236, 232, 220), dz=dz)
    p.poly(np.concatenate([upper_top, upper_bot[::-1]]), _c(_shade(lipc, 0.92)), dz=dz)
    p.poly(np.concatenate([lower_top, lower_bot[::-1]]), _c(lipc), dz=dz)
    p.line(upper_bot, 0.018, _c(_shade(lipc, 0.55)), dz=dz)
    if not p.fine:
        return
    # lower-lip highlight
    p.line(np.stack([xs[4:-4], lower_top[4:-4, 1] + low * 0.4], 1), 0.02, _c(_mix(lipc, (255, 255, 255), 0.25), 120),
           dz=dz)
    if m.lipstick:  # lip liner and gloss: crisp at full resolution, gone in a thumbnail
        liner = _c(_shade(lipc, 0.6), 220)
        p.line(upper_top, 0.014, liner, dz=dz)
        p.line(lower_bot, 0.014, liner, dz=dz)
        p.dots(np.stack([xs[[4, 6, 8]], lower_top[[4, 6, 8], 1] + low * 0.45], 1), 0.018, (255, 255, 255, 170), dz=dz)
    if m.smile > 0.4:
        for s in (-1, 1):
            p.line([[s * mw, yc + cy], [s * (mw + 0.04), yc + cy - 0.03]], 0.018, _c(_shade(i.skin, 0.6), 160), dz=dz)


def _draw_nose(p: _Painter):
    i, m = p.i, p.m
    skin = i.skin
    tip_y = i.nose_len
    nw = i.nose_w
    dz_tip = 0.42 * i.nose_tip / 0.07 * 0.7
    shadow_side = 1.0 if math.cos(m.light_az) < 0 else -1.0
    # bridge: a high bridge shows as side shadows plus a highlight ridge, a low one as a faint broad root
    b = float(np.clip(i.bridge, 0.0, 1.3))
    for s in (-1, 1) if p.fine else ():
        a = int((20 + 170 * b) * (1.0 if s == shadow_side else 0.6))
        ridge = [[s * (0.1 - 0.03 * b), 0.0], [s * (0.09 - 0.02 * b), tip_y * 0.5], [s * nw * 0.55, tip_y - 0.09]]
        p.line(ridge, 0.035, _c(_shade(skin, 0.65), min(a, 255)), dz=0.3)
    if b > 0.45 and p.fine:
        p.line([[0.0, 0.12], [0.0, tip_y - 0.06]], 0.04, _c(_mix(skin, (255, 255, 255), 0.3), int(70 * b)), dz=0.35)
    # alar lobes (their width is the nose width), the tip, then the nostrils
    lobe = _c(_shade(skin, 0.9))
    for s in (-1, 1):
        p.poly(_ellipse(s * (nw - 0.06), tip_y - 0.005, 0.07, 0.06, 0, 12), lobe, dz=dz_tip * 0.5)
    for s in (-1, 1) if p.fine else ():
        p.line(_ellipse(s * (nw - 0.06), tip_y - 0.005, 0.07, 0.06, 0, 8, (-1.9 if s > 0 else 1.25),
                        (1.9 if s > 0 else 5.0)), 0.022, _c(_shade(skin, 0.62), 210), dz=dz_tip * 0.5)
    pointy = i.nose_pointy
    p.poly(_ellipse(0.0, tip_y - 0.01 + 0.02 * pointy, 0.085 - 0.025 * pointy + 0.15 * (nw - 0.2), 0.07, 0, 12),
           _c(skin), dz=dz_tip)
    tip = _spline([[-nw * 0.55, tip_y + 0.02], [0, tip_y + 0.055 + 0.03 * pointy], [nw * 0.55, tip_y + 0.02]], 3)
    if p.fine:
        p.line(tip, 0.018, _c(_shade(skin, 0.78), 150), dz=dz_tip * 0.8)
    flare = float(np.clip((nw - 0.17) / 0.13, 0, 1))  # wide noses: rounder, more horizontal nostrils
    for s in (-1, 1):
        p.poly(_ellipse(s * nw * 0.48, tip_y + 0.035, (0.03 + 0.035 * flare) * i.nostril,
                        (0.02 + 0.006 * flare) * i.nostril, s * (0.7 - 0.6 * flare), 10), _c(_shade(skin, 0.45)),
               dz=dz_tip * 0.7)
    if p.fine:
        p.dot(-0.3 * math.cos(m.light_az) * 0.05, tip_y - 0.03, 0.028, _c((255, 255, 255), 50), dz=dz_tip)


def _clip_to_opening(pts: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Clip a convex blob (N×2) to the eye opening between the lid curves (the opening is convex in y)."""
    ux, order = upper[:, 0], np.argsort(upper[:, 0])
    x = np.clip(pts[:, 0], ux.min(), ux.max())
    top = np.interp(x, ux[order], upper[order, 1])
    bottom = np.interp(x, lower[order, 0], lower[order, 1])
    return np.stack([x, np.clip(pts[:, 1], top, bottom)], 1)


def _draw_eyes(p: _Painter):
    i, m = p.i, p.m
    skin = i.skin
    open_ = effective_eye_open(i, m)
    low = open_ * 0.55 * (1 - 0.35 * m.smile) + 0.01
    t = _T11
    lid_line = _c((25, 18, 15))
    dz = 0.02
    for s in (-1, 1):
        cx, cy = s * i.eye_sep, i.eye_y
        tilt = -s * i.eye_tilt  # outer corner up for positive tilt
        xs = cx + s * (t - 0.5) * 2 * i.eye_w  # t=0 inner corner (towards the nose)
        base = cy + (t - 0.5) * 2 * i.eye_w * tilt
        epi = i.epicanthus * np.exp(-t / 0.22)
        upper = np.stack([xs, base - open_ * np.sin(np.pi * t) ** 0.75 * (1 - 0.7 * epi)], 1)
        lower = np.stack([xs, base + low * np.sin(np.pi * t) ** 0.9], 1)
        if i.socket > 0.15 and p.fine:  # deep-set eyes: shadowed orbit between lid and brow
            p.poly(_ellipse(cx + s * 0.02, cy - 0.09, i.eye_w * 1.2, 0.13, 0, 14), _c(_shade(skin, 0.72),
                   int(80 * min(1.0, i.socket))), dz=dz)
        if m.makeup:
            p.poly(np.concatenate([upper, (upper - np.stack([0 * t, 0.05 + 0.06 * np.sin(np.pi * t)], 1))[::-1]]),
                   _c(i.shadow_rgb, 110), dz=dz)
        p.poly(np.concatenate([upper, lower[::-1]]), (238, 236, 230), dz=dz)
        # iris and pupil clipped to the lids (PIL cannot clip)
        ix, iy = cx + m.gaze[0], cy + m.gaze[1] - 0.01
        p.poly(_clip_to_opening(_ellipse(ix, iy, i.iris_r, i.iris_r, 0, 16), upper, lower), _c(i.iris_rgb), dz=dz)
        p.poly(_clip_to_opening(_ellipse(ix, iy, 0.45 * i.iris_r, 0.45 * i.iris_r, 0, 12), upper, lower), (10, 8, 8),
               dz=dz)
        lw = 0.022 + 0.012 * i.lash + (0.015 if m.makeup else 0.0)
        p.line(upper, lw, lid_line, dz=dz)
        if not p.fine:
            continue
        gx, gy = ix - 0.3 * i.iris_r * math.cos(m.light_az), iy - 0.3 * i.iris_r * math.sin(m.light_az)
        if np.interp(gy, [cy - open_, cy + low], [0, 1]) not in (0.0, 1.0):
            p.dot(gx, gy, i.iris_r * 0.22, (250, 250, 250), dz=dz)
        p.line(lower[2:-1], 0.012, _c(_shade(skin, 0.65), 160), dz=dz)
        if i.crease > 0:  # double eyelid
            crease = upper[1:-1] - np.stack([0 * t[1:-1], i.crease * (0.4 + 0.6 * np.sin(np.pi * t[1:-1]))], 1)
            p.line(crease, 0.026, _c(_shade(skin, 0.45), 235), dz=dz)
        if i.epicanthus > 0:  # the fold hides the inner corner and sweeps over it
            fold = np.stack([xs[:5] - s * 0.03, upper[:5, 1] - 0.02 - 0.02 * t[:5]], 1)
            p.line(fold, 0.024, _c(_shade(skin, 0.5), int(235 * i.epicanthus)), dz=dz)
        if i.lash > 0.8 or m.makeup:  # lashes fan out from the outer half of the upper lid; eyeliner adds a wing
            ln = 0.035 + 0.03 * (i.lash - 0.8)
            roots = upper[[5, 7, 9, 10]]
            ang = -0.5 * math.pi - s * (0.25 + 0.12 * np.array([0, 2, 4, 5]))
            tips = roots + ln * np.stack([np.cos(ang), np.sin(ang)], 1)
            p.lines(np.stack([roots, tips], 1).reshape(-1, 2), 2, 0.012, lid_line, dz=dz)
            if m.makeup:
                p.line([upper[-1].tolist(), [upper[-1, 0] + s * 0.07, upper[-1, 1] - 0.045]], 0.022, lid_line, dz=dz)


def _draw_brows(p: _Painter):
    i, m = p.i, p.m
    col = _mix(_hair_rgb(i) if i.hair_len > 0 or i.gray < 0.5 else i.skin, (30, 22, 18), i.brow_dark)
    t = _T11
    peak = i.brow_peak
    k = math.log(0.5) / math.log(peak)
    shape = np.sin(np.pi * t ** k)
    raise_ = 0.03 * m.smile
    for s in (-1, 1):
        x0 = s * i.brow_inner
        span = i.brow_len + i.eye_w
        xs = x0 + s * t * span
        y0 = i.eye_y - i.eye_h - i.brow_gap - raise_
        y = y0 - i.brow_arch * shape + (0.05 - i.brow_tilt) * t ** 2
        th = i.brow_thick * (1.1 - 0.7 * t ** 1.5)
        pts = np.concatenate([np.stack([xs, y - th / 2], 1), np.stack([xs, y + th / 2], 1)[::-1]])
        p.poly(pts, _c(col, 235), dz=0.03)
        if i.brow_thick > 0.07 and p.detail:  # bushy: stray hairs break the outline
            rng = np.random.default_rng([i.tex_seed, 5, s + 1])
            k_ = rng.integers(0, 9, 10)
            roots = np.stack([xs[k_], y[k_] + 0.03], 1)
            tips = np.stack([xs[k_] + s * 0.04, y[k_] - 0.03 - 0.02 * rng.random(10)], 1)
            p.lines(np.stack([roots, tips], 1).reshape(-1, 2), 2, 0.012, _c(col), dz=0.03)


def _draw_hair_front(p: _Painter, hv: float):
    i, m = p.i, p.m
    hair = _hair_rgb(i)
    if m.hat:
        hc = _c(m.hat_rgb)
        crown = _spline([[-(i.head_w + 0.12), -0.75], [-(i.fore_w + 0.05), -1.6], [0, -2.35], [i.fore_w + 0.05, -1.6],
                         [i.head_w + 0.12, -0.75]], 4)
        p.poly(crown, hc, sil=True)
        p.line([[-(i.head_w + 0.35), -0.8], [0, -0.95], [i.head_w + 0.35, -0.8]], 0.12, _c(_shade(m.hat_rgb, 0.75)),
               sil=True)
        return
    if i.hair_len == 0:
        if i.receding < 0.9:  # fringe of short hair at the sides and back
            for s in (-1, 1):
                p.poly([[s * (i.head_w - 0.02), -0.75], [s * (i.head_w + 0.05), -0.2], [s * (i.head_w - 0.02), 0.15],
                        [s * (i.head_w - 0.12), -0.3]], _c(hair, 200), sil=True)
        return
    top = -2.0 - hv
    fw = i.fore_w
    rec = i.receding
    hl = i.hairline - 0.4 * rec
    # hairline: temples recede more than the centre (M shape)
    tx = fw * 0.78
    hairline = [[fw + 0.02, -0.45], [tx, hl - 0.05 - 0.35 * rec], [fw * 0.35, hl + 0.03 - 0.15 * rec], [0, hl + 0.05],
                [-fw * 0.35, hl + 0.03 - 0.15 * rec], [-tx, hl - 0.05 - 0.35 * rec], [-(fw + 0.02), -0.45]]
    if i.bangs > 0:
        by = hl + 0.2 + i.bangs
        hairline = [[fw + 0.02, -0.35], [fw * 0.7, by - 0.05], [0.3, by + 0.02], [i.part * 0.5, by],
                    [-0.3, by + 0.02], [-fw * 0.7, by - 0.05], [-(fw + 0.02), -0.35]]
    outer = [[-(fw + hv * 0.6), -0.45], [-(fw * 0.95 + hv), -1.35], [-fw * 0.55, top + 0.1], [0, top],
             [fw * 0.55, top + 0.1], [fw * 0.95 + hv, -1.35], [fw + hv * 0.6, -0.45]]
    if i.hair_len == 1:
        outer[0][1] = outer[-1][1] = 0.0
    # the outer boundary follows the head silhouette, the hairline lies on the skin: one polygon, two projections
    p.poly_parts([(_spline(outer, 4), 0.0, True), (_spline(hairline, 4), 0.02, False)], _c(hair))
    if i.hair_len >= 2:
        end = 1.15 if i.hair_len == 2 else 2.3
        for s in (-1, 1):
            lock = [[s * (fw + 0.02), -0.6], [s * (i.head_w - 0.06), 0.3], [s * (i.head_w - 0.02), end],
                    [s * (i.head_w + hv + 0.2), end + 0.05], [s * (i.head_w + hv + 0.05), -0.2],
                    [s * (fw + hv * 0.6), -1.0]]
            p.poly(_spline(lock, 3, closed=True), _c(_shade(hair, 0.95)), sil=True)
    if p.detail:
        _draw_hair_texture(p, hair, outer, hairline, hv)


def _draw_hair_texture(p: _Painter, hair, outer, hairline, hv: float):
    i = p.i
    rng = np.random.default_rng([i.tex_seed, 11])
    light, dark = _c(_mix(hair, (255, 255, 255), 0.22), 170), _c(_shade(hair, 0.55), 190)
    tex = TEXTURES[i.texture]
    fw = i.fore_w
    top = -2.0 - hv
    if tex in ("straight", "wavy"):
        n = 14
        u = (np.arange(n) + 0.5) / n * 2 - 1
        x_end = u * (fw + hv * 0.5)
        hx, hy = np.array([h[0] for h in hairline[::-1]]), np.array([h[1] for h in hairline[::-1]])
        y_end = np.where(np.abs(u) > 0.7, -0.55, np.interp(x_end, hx, hy) - 0.05)
        xs = i.part + (x_end[:, None] - i.part) * _T7  # n strands × 7 points, from the parting down
        ys = top + 0.1 + (y_end[:, None] - top - 0.1) * _T7
        if tex == "wavy":
            xs = xs + 0.05 * np.sin(3 * math.pi * _T7 + np.arange(n)[:, None])
        strands = np.stack([xs, ys], 2)
        p.lines(strands[1::2].reshape(-1, 2), 7, 0.022, light, sil=True)
        p.lines(strands[0::2].reshape(-1, 2), 7, 0.022, dark, sil=True)
    else:
        r = 0.065 if tex == "curly" else 0.04
        count = 70 if tex == "curly" else 110
        ang = rng.uniform(-math.pi * 0.95, -math.pi * 0.05, count)
        rad = rng.uniform(0.35, 1.0, count)
        x = np.cos(ang) * (fw + hv * 0.8) * rad
        y = -1.0 + np.sin(ang) * (1.0 + hv) * rad - 0.05
        keep = ~((y > i.hairline - 0.08) & (np.abs(x) < fw * 0.8))
        pts = np.stack([x, y], 1)[keep]
        is_light = rng.random(count)[keep] < 0.4
        p.dots(pts[is_light], r, light, outline_width=0.016, sil=True)
        p.dots(pts[~is_light], r, dark, outline_width=0.016, sil=True)


def _draw_glasses(p: _Painter):
    i = p.i
    col = _c(i.glasses_rgb)
    fr = i.glasses_frame
    lw, lh = 0.27, 0.2 if i.glasses_shape != 0 else 0.24
    dz = 0.12
    for s in (-1, 1):
        cx, cy = s * (i.eye_sep + 0.02), i.eye_y + 0.03
        if i.glasses_shape == 0:
            pts = _ellipse(cx, cy, lw * 0.92, lh, 0, 20)
        elif i.glasses_shape == 1:
            pts = _spline([[cx - lw, cy - lh], [cx + lw, cy - lh], [cx + lw, cy + lh * 0.8], [cx, cy + lh],
                           [cx - lw, cy + lh * 0.8]], 4, closed=True)
        elif i.glasses_shape == 2:
            pts = _ellipse(cx, cy, lw, lh * 0.85, 0, 20)
        else:  # aviator: drops towards the outer-lower side
            pts = _spline([[cx - s * lw, cy - lh], [cx + s * lw, cy - lh], [cx + s * lw * 0.9, cy + lh * 0.6],
                           [cx + s * lw * 0.2, cy + lh * 1.2], [cx - s * lw, cy + lh * 0.3]], 4, closed=True)
        tint = (20, 20, 25, 215) if i.sunglasses else (200, 220, 235, 35)
        p.poly(pts, tint, dz=dz)
        p.line(np.concatenate([pts, pts[:1]]), fr, col, dz=dz)
        p.line([[s * (i.eye_sep + 0.02 + lw), cy - lh * 0.6], [s * (i.head_w + 0.02), cy - 0.05]], fr * 0.8, col,
               dz=dz * 0.3)
    inner = i.eye_sep + 0.02 - lw
    p.line(_spline([[-inner, i.eye_y - 0.02], [0, i.eye_y - 0.07], [inner, i.eye_y - 0.02]], 3), fr * 0.8, col,
           dz=dz + 0.1)


def _finish(p: _Painter, img: Image.Image, M: np.ndarray) -> np.ndarray:
    """Lighting (head shading + directional field + tint), blur, noise. Returns uint8 H×W×3."""
    i, m = p.i, p.m
    h, w = p.hw
    scale_px = float(math.sqrt(abs(np.linalg.det(M[:, :2]))))
    # Lambert-ish head shading: a soft mask of the head offset towards the light darkens the far side
    lx, ly = math.cos(m.light_az), math.sin(m.light_az)
    if m.light > 0.02:
        mask = Image.new("L", (w, h), 0)
        outline = _face_outline(i) * 0.88 + np.array([lx, ly]) * 0.35
        q = p.project(outline, sil=True)
        xy = (q @ M[:, :2].T + M[:, 2]).ravel().tolist()
        ImageDraw.Draw(mask).polygon(xy, fill=255)
        mask = mask.filter(ImageFilter.BoxBlur(max(1.0, 0.35 * scale_px)))
        sh = np.asarray(mask, np.float32) / 255.0
        shading = 1.0 - m.light * 0.55 * (1.0 - sh)
    else:
        shading = None
    a = np.asarray(img, np.float32)
    xc, yc = _grid(h, w)
    k = -0.5 * m.ambient * m.light / max(h, w)
    field = (xc * (k * lx) + yc * (k * ly)) + m.ambient
    if shading is not None:
        field = field * shading
    a *= field[..., None] * (np.asarray(m.tint, np.float32) * m.contrast)
    # contrast about the image mean: (x - mean) * c + mean, with the scaling by c already folded in above
    a += float(a[::3, ::3].mean()) * (1.0 - m.contrast) / m.contrast
    sigma = m.blur * w / 178 + m.blur_px
    if sigma > 0.05:
        np.clip(a, 0, 255, out=a)
        a = np.asarray(Image.fromarray(a.astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma)), np.float32)
    if m.noise > 0:
        # sensor noise: a window of a fixed Gaussian field at a per-image offset (drawing fresh normals costs more
        # than the whole render)
        buf = _noise_field()
        rng = np.random.default_rng([m.seed, 13])
        noise = (buf[(start := int(rng.integers(0, buf.size - a.size))):start + a.size] if a.size < buf.size
                 else rng.standard_normal(a.size, np.float32)).reshape(a.shape)
        a += m.noise * noise
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


_GRIDS: dict = {}


def _grid(h: int, w: int):
    g = _GRIDS.get((h, w))
    if g is None:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        g = _GRIDS[(h, w)] = (xx - w / 2, yy - h / 2)
    return g


_NOISE: list = []


def _noise_field() -> np.ndarray:
    if not _NOISE:
        _NOISE.append(np.random.default_rng(12345).standard_normal(1 << 20).astype(np.float32))
    return _NOISE[0]


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """uint8 H×W×3 RGB → baseline JPEG bytes (4:2:0, as most face datasets are stored)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
