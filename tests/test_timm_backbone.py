"""TimmBackbone: IResNet's interface (shape, fp32 output, fp16 semantics) around tiny timm models, trained on CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrface.losses.margin import CosFace
from lrface.nets.timm_backbone import TimmBackbone


def _batch(n: int = 4, size: int = 112) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_interface_matches_iresnet() -> None:
    torch.manual_seed(0)
    net = TimmBackbone("resnet10t", num_features=32)
    assert net.num_features == 32 and net.input_size == 112 and net.fp16 is False
    assert net.fc.in_features == 512  # resnet10t pooled width
    assert not net.features.weight.requires_grad and torch.all(net.features.weight == 1)
    out = net(_batch())
    assert out.shape == (4, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="B×3×112×112"):
        net(torch.zeros(2, 3, 96, 96))


@pytest.mark.parametrize("fp16, body_dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_fp16_flag_controls_trunk_precision_under_autocast(fp16: bool, body_dtype: torch.dtype) -> None:
    net = TimmBackbone("mobilenetv3_small_050", num_features=16, fp16=fp16).eval()
    seen = []
    net.body.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(_batch(2))
    assert seen == [body_dtype]
    assert out.dtype == torch.float32


def test_state_dict_round_trip_and_timm_kwargs() -> None:
    torch.manual_seed(1)
    a = TimmBackbone("mobilenetv3_small_050", num_features=16).eval()
    b = TimmBackbone("mobilenetv3_small_050", num_features=16).eval()
    assert a.fc.in_features == 1024  # MobileNetV3's hidden head layer, not its 288 trunk channels
    x = _batch(2)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict(), strict=True)
    torch.testing.assert_close(a(x), b(x))
    vit = TimmBackbone("vit_tiny_patch16_224", num_features=8, input_size=64, img_size=64, depth=1)
    assert len(vit.body.blocks) == 1 and vit(_batch(2, 64)).shape == (2, 8)


@pytest.mark.parametrize("weights_kwarg", [{"pretrained": True}, {"pretrained_cfg": {}},
                                           {"pretrained_cfg_overlay": {}}, {"checkpoint_path": "/tmp/x.pth"}])
def test_refuses_every_way_to_load_weights(weights_kwarg: dict) -> None:
    with pytest.raises(ValueError, match="never loads pretrained"):
        TimmBackbone("resnet10t", **weights_kwarg)


def test_refuses_unknown_models() -> None:
    with pytest.raises(ValueError, match="unknown timm model"):
        TimmBackbone("not_a_model_xyz")


def test_learns_with_a_margin_head() -> None:
    torch.manual_seed(0)
    net = TimmBackbone("mobilenetv3_small_050", num_features=16)
    head = CosFace(16, 2, s=16.0, m=0.2)
    x = _batch(8)
    x[4:] = -x[4:]  # two visibly different "identities"
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(head(net(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
