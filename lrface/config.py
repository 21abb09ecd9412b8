"""Experiment configuration: OmegaConf composition and `_target_` instantiation.

An experiment is ``experiments/<name>.yaml``: a small delta over reusable parts named in its ``base:`` list
(``defaults.yaml``, ``data/*.yaml``, ``module/*.yaml``, ``trainer/*.yaml``, ...). Composition order:

1. the bases, in order (a base may itself name ``base:``; its bases come first),
2. the experiment's own keys,
3. the command-line dotlist (``module.lr=0.01 trainer.devices=8``).

The tree is put in struct mode before the command line is merged, so a mistyped key fails at once with OmegaConf's
"Did you mean" hint. ``+key=value`` adds a key that the tree does not have yet (Hydra's spelling). The string
``None`` on the command line (what a W&B sweep renders for a null value) becomes null, as does ``null``.

Objects are described as ``{_target_: dotted.path, **kwargs}``; :func:`instantiate` builds them recursively and
``_partial_: true`` returns a ``functools.partial`` (e.g. an optimizer that is given parameters later).
"""
from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

EXPERIMENTS_DIR = Path(os.environ.get("LRFACE_EXPERIMENTS", Path(__file__).resolve().parent.parent / "experiments"))


class ConfigError(ValueError):
    """A configuration file or override that cannot be composed."""


def experiment_path(name: str, experiments_dir: Path | None = None) -> Path:
    """``quickstart`` → ``experiments/quickstart.yaml``; also accepts a path to a YAML file."""
    root = Path(experiments_dir or EXPERIMENTS_DIR)
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = root / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in root.glob("*.yaml") if p.stem != "defaults")
        raise ConfigError(f"no experiment {name!r}: {path} does not exist. Experiments: {', '.join(known)}")
    return path


def _load_with_bases(path: Path, root: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    if path in chain:
        raise ConfigError(f"{path}: circular base: {' -> '.join(map(str, chain + (path,)))}")
    if not path.exists():
        raise ConfigError(f"{chain[-1] if chain else path}: base file {path} does not exist")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level, got a {type(cfg).__name__}")
    bases = cfg.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _load_with_bases(root / base, root, chain + (path,)))
    return OmegaConf.merge(merged, cfg)


def parse_overrides(overrides: Sequence[str]) -> tuple[DictConfig, DictConfig]:
    """Splits a dotlist into (overrides of existing keys, ``+``-prefixed additions); ``None`` → null."""
    existing, added = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if value == "None":  # W&B sweeps render null as the string None
            value = "null"
        (added if key.startswith("+") else existing).append(f"{key.lstrip('+')}={value}")
    return OmegaConf.from_dotlist(existing), OmegaConf.from_dotlist(added)


def compose(name: str, overrides: Sequence[str] = (), experiments_dir: Path | None = None) -> DictConfig:
    """Builds the resolved-on-access config of experiment ``name`` with command-line ``overrides``.

    Raises:
        ConfigError: unknown experiment, missing base, malformed override.
        omegaconf.errors.ConfigKeyError: an override names a key that does not exist (message says "Did you mean").
    """
    root = Path(experiments_dir or EXPERIMENTS_DIR)
    path = experiment_path(name, root)
    cfg = _load_with_bases(path, root)
    if "name" not in cfg or cfg.name in (None, "???"):
        cfg.name = path.stem
    existing, added = parse_overrides(overrides)
    cfg = OmegaConf.merge(cfg, added)
    OmegaConf.set_struct(cfg, True)
    cfg = OmegaConf.merge(cfg, existing)
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    return OmegaConf.to_yaml(cfg, resolve=resolve)


def locate(path: str) -> Any:
    """``"package.module.attr"`` → the object (the longest importable module prefix, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and not module_name.startswith(exc.name):
                raise  # the module exists but one of its own imports is missing
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f"_target_ {path!r}: module {module_name!r} has no attribute {'.'.join(parts[i:])!r}")
        return obj
    raise ConfigError(f"_target_ {path!r}: no importable module in that path")


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """Builds objects from ``_target_`` nodes, recursively; other nodes become plain dicts / lists.

    ``kwargs`` override or extend the top-level node's arguments (e.g. parameters for a partial optimizer).
    """
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return _build(cfg, kwargs)


def _build(node: Any, extra: dict | None = None) -> Any:
    if isinstance(node, list):
        return [_build(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "_target_" not in node:
        return {k: _build(v) for k, v in node.items()}
    node = dict(node)
    target = locate(node.pop("_target_"))
    partial = node.pop("_partial_", False)
    args = [_build(a) for a in node.pop("_args_", [])]
    kwargs = {k: _build(v) for k, v in node.items()}
    kwargs.update(extra or {})
    if partial:
        return functools.partial(target, *args, **kwargs)
    try:
        return target(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"building {target.__module__}.{target.__qualname__}: {exc}") from exc
