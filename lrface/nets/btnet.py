"""BTNet: the Branch-to-Trunk network of He et al., "Learning Unified Representations for Multi-Resolution Face
Recognition" (BMVC 2023; seed 004, §3.2, Fig. 2, App. A.2).

A trunk TNet (an :class:`~lrface.nets.iresnet.IResNet` at S = 112) and one branch BNet_r per resolution r of the
candidate set (default 7, 14, 28). BNet_r is TNet's stem and stages up to **and including block 0** of the stage whose
TNet output map is r×r, with every stride-2 convolution replaced by stride 1, so an r×r input flows through at its own
resolution (§3.2's "avoiding redundant up-sampling"); its output z_r is implanted into TNet's feature pyramid at that
block, and TNet's remaining layers T_r map it to the shared embedding.

========  ==============================  ========================  =================
input r   branch (stride 1 everywhere)    coupling map z_r           shared tail T_r
========  ==============================  ========================  =================
28        stem, layer1, layer2.0          B×C2×28×28 (layer2.0)      layer2.1 → features
14        stem, layer1, layer2, layer3.0  B×C3×14×14 (layer3.0)      layer3.1 → features
7         stem, layer1–3, layer4.0        B×C4×7×7 (layer4.0)        layer4.1 → features
========  ==============================  ========================  =================

(methods.md §1.2; the authors' ``iresnet_multi_reso_distill.py`` gets the same strides from ``r % S == 0``.) Any
pyramid size 112/2^k, k = 1..4, may be a branch (56 couples at layer1.0).

Resolution-specific BatchNorm (``share``): the tail's convolutions are TNet's, but BN statistics of an r×r stream are
not those of 112 px faces. The paper stores "only the learned branches and resolution-aware BNs" while re-using the
trunk; the authors' code instead saves one full network per resolution whose tail convolutions equal TNet's but whose
BNs differ (its ``TODO: filter out the trunk params``). Both are offered:

* ``share="bn"`` (paper, default): branch r stores its own layers plus a copy of every tail BatchNorm (``specific``);
  the tail runs TNet's convolutions, PReLUs and ``fc`` with branch r's BNs. Storage per branch: body + BNs.
* ``share="copy"`` (authors' code): branch r stores a full copy of the tail (``specific`` holds whole blocks, ``bn2``,
  ``fc``, ``features``); with ``fix_trunk`` the copied convolutions stay frozen, so the two compute the same thing
  and differ in storage (and in that ``fix_trunk=False``, the paper's Table 4 "w/o fix-trunk" row, is possible).

Which tail parameters train (:meth:`BTNet.freeze`): every BN's affine parameters and running statistics, except
``features.weight`` (fixed at 1 in IResNet). The authors' code keeps trainable only parameters whose *name* contains
``bn`` (so ``downsample.1`` and ``features.bias`` stay frozen there, though their running statistics still move in
train mode); we treat every tail BatchNorm alike, the paper's "resolution-aware BNs".

State-dict layout: ``trunk.*`` is an insightface IResNet (an official ``backbone.pth`` or our TNet run loads into it);
``branches.<r>.conv1.weight``, ``branches.<r>.layer2.0.conv2.weight`` … carry IResNet's names for the branch body;
``branches.<r>.specific.layer3.1.bn1.weight``, ``…specific.bn2.*``, ``…specific.features.*`` (and, with ``copy``,
the tail's convs / ``fc``) the resolution-specific part. :meth:`BTNet.branch_network_state_dict` assembles branch r
into a full IResNet state dict — the layout of the authors' per-resolution ``model.pt`` — and
:meth:`BTNet.load_branch_network` reads one.

The trunk is frozen and always in eval mode: BTNet trains branches only (TNet is trained as a plain recognition model,
``FeatureExtractorModule`` with multi-resolution augmentation).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from lrface.nets.iresnet import IBasicBlock, IResNet

__all__ = ["BTNet", "BranchNet", "coupling_stage", "iresnet_from_state_dict"]

SHARES = ("bn", "copy")


def coupling_stage(r: int, trunk_size: int = 112) -> int:
    """The stage (1–4) whose TNet output map is r×r: 56 → 1, 28 → 2, 14 → 3, 7 → 4 at S = 112.

    Raises:
        ValueError: r is not one of TNet's pyramid sizes S/2^k, k = 1..4.
    """
    for stage in range(1, 5):
        if trunk_size % (2 ** stage) == 0 and trunk_size // (2 ** stage) == r:
            return stage
    sizes = [trunk_size // 2 ** k for k in range(1, 5)]
    raise ValueError(f"a branch resolution must be a size of TNet's feature pyramid {sizes} (S = {trunk_size}); "
                     f"got {r}")


def iresnet_from_state_dict(state_dict: Mapping[str, torch.Tensor], **kwargs) -> IResNet:
    """Build the IResNet whose shapes fit ``state_dict`` (blocks per stage, widths, embedding size, input size)."""
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.conv1\.weight$", k))}
        if not idx:
            raise ValueError(f"not an IResNet state_dict: no layer{stage}.<i>.conv1.weight "
                             f"(first keys: {list(state_dict)[:4]})")
        blocks.append(max(idx) + 1)
    widths = tuple(int(state_dict[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    fc = state_dict["fc.weight"]
    side = int(round((fc.shape[1] / widths[-1]) ** 0.5))
    if side * side * widths[-1] != fc.shape[1]:
        raise ValueError(f"fc.weight {tuple(fc.shape)} does not fit widths {widths}: expected in_features "
                         f"{widths[-1]}·side²")
    kwargs = {"widths": widths, "num_features": int(fc.shape[0]), "input_size": side * 16, **kwargs}
    return IResNet(blocks, **kwargs)


class _BlockNorms(nn.Module):
    """The BatchNorms of one IBasicBlock (``bn1``, ``bn2``, ``bn3``, ``downsample.1``), copied from it."""

    def __init__(self, block: IBasicBlock) -> None:
        super().__init__()
        self.bn1, self.bn2, self.bn3 = (copy.deepcopy(getattr(block, n)) for n in ("bn1", "bn2", "bn3"))
        # Identity keeps the official index: the shortcut BN is ``downsample.1``.
        self.downsample = None if block.downsample is None else nn.Sequential(
            nn.Identity(), copy.deepcopy(block.downsample[1]))


def _block_with_norms(block: IBasicBlock, norms: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """IBasicBlock's computation with ``block``'s convolutions / PReLU and ``norms``' BatchNorms."""
    out = norms.bn3(block.conv2(block.prelu(norms.bn2(block.conv1(norms.bn1(x))))))
    identity = x if block.downsample is None else norms.downsample[1](block.downsample[0](x))
    return out + identity


def _set_stride_one(block: IBasicBlock) -> None:
    block.stride = 1
    block.conv2.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


class BranchNet(nn.Module):
    """BNet_r plus its resolution-specific part of the tail (see the module docstring).

    Attributes:
        resolution: r.
        stage: the coupling stage c (1–4); the body ends with ``layer{c}.0``.
        conv1, bn1, prelu, layer1 … layer{c}: the body, IResNet names, stride 1 everywhere (``layer{c}`` holds block 0).
        specific: ``ModuleDict`` ``layer{c}`` … ``layer4`` → {block index: norms or block}, ``bn2``, ``features``
            (and ``fc`` with ``share="copy"``).
    """

    def __init__(self, trunk: IResNet, resolution: int, share: str = "bn") -> None:
        super().__init__()
        if share not in SHARES:
            raise ValueError(f"share must be one of {SHARES}; got {share!r}")
        self.resolution, self.share = int(resolution), share
        self.stage = coupling_stage(self.resolution, trunk.input_size)
        for name in ("conv1", "bn1", "prelu"):
            setattr(self, name, copy.deepcopy(getattr(trunk, name)))
        for stage in range(1, self.stage + 1):
            layer = getattr(trunk, f"layer{stage}")
            blocks = [copy.deepcopy(b) for b in (layer if stage < self.stage else layer[:1])]
            for b in blocks:
                _set_stride_one(b)
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))

        specific = nn.ModuleDict()
        for stage in range(self.stage, 5):
            layer = getattr(trunk, f"layer{stage}")
            first = 1 if stage == self.stage else 0
            specific[f"layer{stage}"] = nn.ModuleDict({
                str(i): copy.deepcopy(layer[i]) if share == "copy" else _BlockNorms(layer[i])
                for i in range(first, len(layer))})
        names = ("bn2", "fc", "features") if share == "copy" else ("bn2", "features")
        for name in names:
            specific[name] = copy.deepcopy(getattr(trunk, name))
        self.specific = specific

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×r×r in [-1, 1] → the coupling map z_r, B×C_c×r×r."""
        if x.shape[-2:] != (self.resolution, self.resolution):
            raise ValueError(f"branch {self.resolution} expects B×3×{self.resolution}×{self.resolution}; "
                             f"got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in range(1, self.stage + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x

    def tail(self, trunk: IResNet, z: torch.Tensor) -> torch.Tensor:
        """T_r: the coupling map → the trunk's last-conv features (B×C_4·7·7), with this branch's BNs."""
        for stage in range(self.stage, 5):
            layer = getattr(trunk, f"layer{stage}")
            for index, part in self.specific[f"layer{stage}"].items():
                z = part(z) if self.share == "copy" else _block_with_norms(layer[int(index)], part, z)
        return torch.flatten(self.specific["bn2"](z), 1)

    def head(self, trunk: IResNet, features: torch.Tensor) -> torch.Tensor:
        """dropout → fc → features BN (fp32 always, as IResNet's head)."""
        with torch.autocast(features.device.type, enabled=trunk.fp16):
            features = trunk.dropout(features)
        fc = self.specific["fc"] if self.share == "copy" else trunk.fc
        with torch.autocast(features.device.type, enabled=False):
            return self.specific["features"](fc(features.float()))


class BTNet(nn.Module):
    """Branch-to-Trunk network (seed 004 §3.2).

    Args:
        trunk: the trained TNet (an IResNet); frozen here and kept in eval mode.
        resolutions: the candidate branch resolutions (pyramid sizes below ``trunk.input_size``).
        share: ``"bn"`` (paper) or ``"copy"`` (authors' code); see the module docstring.
        fix_trunk: freeze the copied tail convolutions (``copy`` only; ``bn`` shares them, so they are always fixed).

    Shapes:
        forward: B×3×s×s in [-1, 1] with s ∈ resolutions ∪ {trunk_size} → B×D fp32 (not normalised).
    """

    def __init__(self, trunk: IResNet, resolutions: Sequence[int] = (7, 14, 28), share: str = "bn",
                 fix_trunk: bool = True) -> None:
        super().__init__()
        resolutions = tuple(sorted(int(r) for r in resolutions))
        if len(set(resolutions)) != len(resolutions) or not resolutions:
            raise ValueError(f"resolutions must be distinct and non-empty; got {resolutions}")
        self.trunk = trunk
        self.trunk_size = int(trunk.input_size)
        self.num_features = int(trunk.num_features)
        self.resolutions = resolutions
        self.share = share
        self.branches = nn.ModuleDict({str(r): BranchNet(trunk, r, share) for r in resolutions})
        self.freeze(fix_trunk)

    @classmethod
    def from_trunk(cls, state_dict: Mapping[str, torch.Tensor], resolutions: Sequence[int] = (7, 14, 28),
                   share: str = "bn", name: str | None = None, fix_trunk: bool = True, **iresnet_kwargs) -> "BTNet":
        """A BTNet whose branches start as copies of a trained IResNet trunk (the public API).

        Args:
            state_dict: an IResNet state dict (insightface ``backbone.pth`` layout); a ``module.`` / ``backbone.``
                prefix on every key is removed.
            resolutions, share, fix_trunk: as the constructor.
            name: ``"r50"`` etc. to build by name (``iresnet_kwargs`` then give widths / sizes); None infers the
                architecture from the shapes.
            **iresnet_kwargs: more IResNet arguments (``fp16``, ``dropout``, ``grad_checkpointing``).
        """
        from lrface.nets.iresnet import get_model

        state = dict(state_dict)
        for prefix in ("module.", "backbone."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        trunk = get_model(name, **iresnet_kwargs) if name else iresnet_from_state_dict(state, **iresnet_kwargs)
        try:
            trunk.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the trunk state_dict does not fit {name or 'the inferred IResNet'}: {exc}") from None
        return cls(trunk, resolutions, share, fix_trunk)

    # -- training policy ---------------------------------------------------------------------------------------------

    def freeze(self, fix_trunk: bool = True) -> None:
        """Trainable: each branch body and every tail BN (not ``features.weight``); frozen: TNet, and the copied
        tail convolutions / fc unless ``fix_trunk=False`` (``share="copy"`` only)."""
        if not fix_trunk and self.share != "copy":
            raise ValueError("fix_trunk=False trains the tail; with share='bn' the tail is TNet itself, shared by "
                             "every branch — use share='copy'")
        self.trunk.requires_grad_(False)
        for branch in self.branches.values():
            branch.requires_grad_(True)
            for module in branch.specific.modules():
                is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
                for p in module.parameters(recurse=False):
                    p.requires_grad_(is_bn or not fix_trunk)
            branch.specific["features"].weight.requires_grad_(False)
        self.trunk.eval()

    def train(self, mode: bool = True) -> "BTNet":
        super().train(mode)
        self.trunk.eval()  # TNet is the fixed teacher: its BN statistics never move
        return self

    def branch_parameters(self, r: int) -> list[nn.Parameter]:
        """The trainable parameters of branch r."""
        return [p for p in self.branches[str(r)].parameters() if p.requires_grad]

    def stored_parameters(self, r: int | None = None) -> int:
        """Parameters stored for branch r (body + specific part; Fig. 4), or for TNet when r is None."""
        module = self.trunk if r is None else self.branches[str(r)]
        return sum(p.numel() for p in module.parameters())

    # -- inference ---------------------------------------------------------------------------------------------------

    def branch_for(self, side: int) -> int:
        """The network an input of this side runs through: a branch resolution, or ``trunk_size`` for TNet."""
        if side == self.trunk_size or side in self.resolutions:
            return int(side)
        raise ValueError(f"BTNet takes inputs of side {[*self.resolutions, self.trunk_size]} (resize to a branch "
                         f"with lrface.branch_selection first); got {side}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of one size: TNet at ``trunk_size``, branch r at r×r. B×3×s×s in [-1, 1] → B×D fp32."""
        if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"BTNet expects square B×3×s×s inputs; got {tuple(x.shape)}")
        side = self.branch_for(int(x.shape[-1]))
        return self.trunk(x) if side == self.trunk_size else self.forward_branch(x, side)

    def forward_branch(self, x: torch.Tensor, r: int, return_coupling: bool = False):
        """φ_bt at resolution r: BNet_r then T_r.

        Args:
            x: B×3×r×r in [-1, 1].
            r: a branch resolution.
            return_coupling: also return z_r (B×C_c×r×r), the map implanted into the trunk (Eq. 2's z_r).

        Returns:
            B×D fp32 embeddings (and z_r).
        """
        branch = self.branches[str(r)]
        with torch.autocast(x.device.type, enabled=self.trunk.fp16):
            z = branch.body(x)
            features = branch.tail(self.trunk, z)
        embedding = branch.head(self.trunk, features)
        return (embedding, z) if return_coupling else embedding

    def trunk_with_coupling(self, x: torch.Tensor, resolutions: Iterable[int] | None = None):
        """TNet on 112 px faces, also returning its maps z_s at every branch's coupling block (Eq. 2's teacher).

        Returns:
            (B×D fp32 embeddings, {r: B×C_c×r×r}).
        """
        wanted = {coupling_stage(r, self.trunk_size): r for r in (resolutions or self.resolutions)}
        t, maps = self.trunk, {}
        with torch.autocast(x.device.type, enabled=t.fp16):
            if x.shape[-2:] != (self.trunk_size, self.trunk_size):
                raise ValueError(f"TNet expects B×3×{self.trunk_size}×{self.trunk_size}; got {tuple(x.shape)}")
            x = t.prelu(t.bn1(t.conv1(x)))
            for stage in range(1, 5):
                for i, block in enumerate(getattr(t, f"layer{stage}")):
                    x = block(x)
                    if i == 0 and stage in wanted:
                        maps[wanted[stage]] = x
            features = torch.flatten(t.bn2(x), 1)
        return t.forward_head(features), maps

    # -- the authors' per-resolution checkpoints ---------------------------------------------------------------------

    def branch_network_state_dict(self, r: int) -> dict[str, torch.Tensor]:
        """Branch r as one full IResNet state dict (the authors' per-resolution ``model.pt`` layout)."""
        out = dict(self.trunk.state_dict())
        for key, value in self.branches[str(r)].state_dict().items():
            out[key.removeprefix("specific.")] = value
        return out

    def load_branch_network(self, r: int, state_dict: Mapping[str, torch.Tensor], atol: float = 0.0) -> None:
        """Load branch r from a full per-resolution IResNet state dict (the authors' ``model.pt``).

        With ``share="bn"`` the file's tail convolutions / fc must equal TNet's (up to ``atol``): the paper's
        sharing assumes it; a file whose tail was trained needs ``share="copy"``.
        """
        branch = self.branches[str(r)]
        state = {k.removeprefix("module."): v for k, v in state_dict.items()}
        sources = {key: key.removeprefix("specific.") for key in branch.state_dict()}
        missing = [src for src in sources.values() if src not in state]
        if missing:
            raise ValueError(f"branch {r}: the state dict lacks {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if self.share == "bn":  # what the branch does not store is TNet's: it must be TNet's
            own = set(sources.values())
            for key, value in self.trunk.state_dict().items():
                if key in own or key not in state:
                    continue
                if not torch.allclose(state[key].float(), value.float(), atol=atol, rtol=0):
                    raise ValueError(f"branch {r}: {key} differs from TNet's; share='bn' re-uses TNet's tail "
                                     "convolutions — load this file with share='copy'")
        branch.load_state_dict({key: state[src] for key, src in sources.items()}, strict=True)
