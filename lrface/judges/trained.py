"""Loading the Table 2 / Table 3 judges (seed paper §4.2–4.3): :func:`load_judge`.

Two kinds of file are read, both with ``torch.load(..., weights_only=True)`` (a file that needs pickled code is
refused):

- a Lightning checkpoint of ``lightning_modules.judge.JudgeModule``: ``hyper_parameters`` say task / arch /
  input_size / timm_kwargs, ``state_dict`` holds the :class:`~lrface.nets.judge.FaceJudge` under ``net.``;
- a plain state_dict of the bare network, e.g. FairFace's official ``res34_fair_align_multi_7_20190809.pt`` (a
  torchvision ResNet-34 with an 18-output ``fc``), with or without DDP's ``module.`` prefix. The file does not say
  what it is, so ``task`` and ``arch`` are required; the output count is read from the classifier's weight.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from lrface.weights import load_weights_file
from lrface.nets.judge import FaceJudge

__all__ = ["load_judge"]

_HPARAM_KEYS = ("task", "arch", "input_size", "timm_kwargs")


def _strip(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _fit(module: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and lists what did not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs expected {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
        raise ValueError(f"{path}: does not fit {what}: " + "; ".join(parts)
                         + f"; expected the {len(own)} tensors of that network's state_dict")
    module.load_state_dict(state, strict=True)


def _classifier_outputs(judge: FaceJudge, state: dict, path: Path) -> int:
    name = judge.net.pretrained_cfg.get("classifier", "fc") if hasattr(judge.net, "pretrained_cfg") else "fc"
    key = f"{name}.weight"
    weight = state.get(key)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{path}: no classifier weight {key!r} for arch {judge.arch!r}; expected a plain state_dict "
                         f"of timm/torchvision {judge.arch} with a 2-D {key}")
    return int(weight.shape[0])


def load_judge(path: str | os.PathLike, task: str | None = None, arch: str | None = None, **kw) -> FaceJudge:
    """A trained :class:`FaceJudge` in eval mode with ``requires_grad=False`` everywhere.

    Args:
        path: a ``JudgeModule`` Lightning ``.ckpt`` or a plain state_dict ``.pt`` / ``.pth``.
        task: ``"race"`` or ``"attributes"``; required for a plain state_dict, checked against a checkpoint's.
        arch: timm architecture; required for a plain state_dict, checked against a checkpoint's.
        **kw: further :class:`FaceJudge` arguments (``input_size``, timm kwargs); they override a checkpoint's.

    Returns:
        the judge, on the CPU.

    Raises:
        ValueError: naming ``path``, when the file is not a weights checkpoint, lacks what is needed, or its keys /
            shapes do not fit the network.
    """
    path = Path(path)
    obj = load_weights_file(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state_dict or a Lightning checkpoint dict, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), dict):
        hp = obj.get("hyper_parameters") or {}
        if "task" not in hp or "arch" not in hp:
            raise ValueError(f"{path}: a Lightning checkpoint without task / arch in hyper_parameters; expected a "
                             "JudgeModule checkpoint (or pass a plain state_dict with task= and arch=)")
        for name, given in (("task", task), ("arch", arch)):
            if given is not None and given != hp[name]:
                raise ValueError(f"{path}: holds a {name}={hp[name]!r} judge, not {name}={given!r}")
        kwargs = dict(hp.get("timm_kwargs") or {})
        kwargs.update(task=hp["task"], arch=hp["arch"], input_size=hp.get("input_size", 224))
        kwargs.update(kw)
        state = {k[len("net."):]: v for k, v in obj["state_dict"].items() if k.startswith("net.")}
        if not state:
            raise ValueError(f"{path}: a Lightning checkpoint without net.* weights; expected a JudgeModule checkpoint")
        judge = FaceJudge(**kwargs)
        _fit(judge, state, path, f"FaceJudge(arch={judge.arch!r}, task={judge.task!r})")
    else:
        if task is None or arch is None:
            raise ValueError(f"{path}: a plain state_dict does not say what it is: pass task= ('race' | 'attributes') "
                             "and arch= (e.g. 'resnet34' for FairFace's official model)")
        if not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path}: expected a state_dict of tensors")
        state = _strip(_strip(obj, "module."), "net.")
        try:
            probe = FaceJudge(arch, task, **kw)
            outputs = _classifier_outputs(probe, state, path)
            judge = probe if outputs == probe.num_outputs else FaceJudge(arch, task, num_outputs=outputs, **kw)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from None
        _fit(judge.net, state, path, f"{arch} with {outputs} outputs (task {task!r})")
    judge.eval()
    judge.requires_grad_(False)
    return judge
