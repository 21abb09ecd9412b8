"""IResNet: official state_dict layout (keys, shapes, counts), parameter counts, forward semantics, precision."""

import pytest
import torch
import torch.nn.functional as F

from lrface.nets import iresnet
from lrface.nets.iresnet import IBasicBlock, get_model

TINY = dict(widths=(8, 16, 32, 64), num_features=32, input_size=32)

# reference/face_recognition.md §1.1
TABLE = {
    "r18": ((2, 2, 2, 2), 24_025_600, 187, 156),
    "r34": ((3, 4, 6, 3), 34_139_328, 331, 276),
    "r50": ((3, 4, 14, 3), 43_590_848, 475, 396),
    "r100": ((3, 13, 30, 3), 65_156_160, 925, 771),
    "r200": ((6, 26, 60, 6), 118_833_920, 1807, 1506),
}


def _meta(name, **kw):
    with torch.device("meta"):
        return get_model(name, **kw)


def _expected_layout(blocks):
    """The §1.3 listing, generated from its rules (C, C_prev, C_in, downsample in block 0 of every stage)."""
    bn = lambda p, c: [(f"{p}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{p}.num_batches_tracked", ())
    ]
    out = [("conv1.weight", (64, 3, 3, 3))] + bn("bn1", 64) + [("prelu.weight", (64,))]
    c_prev = 64
    for L, (c, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for i in range(n):
            c_in = c_prev if i == 0 else c
            p = f"layer{L}.{i}"
            out += bn(f"{p}.bn1", c_in) + [(f"{p}.conv1.weight", (c, c_in, 3, 3))] + bn(f"{p}.bn2", c)
            out += [(f"{p}.prelu.weight", (c,)), (f"{p}.conv2.weight", (c, c, 3, 3))] + bn(f"{p}.bn3", c)
            if i == 0:
                out += [(f"{p}.downsample.0.weight", (c, c_prev, 1, 1))] + bn(f"{p}.downsample.1", c)
        c_prev = c
    out += bn("bn2", 512) + [("fc.weight", (512, 25088)), ("fc.bias", (512,))] + bn("features", 512)
    return out


@pytest.mark.parametrize("name", list(TABLE))
def test_counts_match_reference_table(name):
    blocks, n_params, n_entries, n_entries_no_nbt = TABLE[name]
    model = _meta(name)
    sd = model.state_dict()
    assert len(sd) == n_entries == 43 + 18 * sum(blocks)
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == n_entries_no_nbt == 36 + 15 * sum(blocks)
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("name", ["r18", "r50", "r100"])
def test_state_dict_keys_and_shapes_equal_official_listing(name):
    sd = _meta(name).state_dict()
    got = [(k, tuple(v.shape)) for k, v in sd.items()]
    assert got == _expected_layout(TABLE[name][0])
    assert sd["layer3.0.conv2.weight"].shape == (256, 256, 3, 3)
    assert sd["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert sd["bn1.num_batches_tracked"].dtype == torch.int64


def test_first_and_last_entries_r50():
    keys = list(_meta("r50").state_dict())
    assert keys[:8] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
        "prelu.weight", "layer1.0.bn1.weight",
    ]  # fmt: skip
    assert keys[-8:] == [
        "bn2.num_batches_tracked", "fc.weight", "fc.bias", "features.weight", "features.bias",
        "features.running_mean", "features.running_var", "features.num_batches_tracked",
    ]  # fmt: skip
    assert "layer3.13.bn3.weight" in keys and "layer3.14.bn1.weight" not in keys


def test_init_and_frozen_features_weight():
    torch.manual_seed(0)
    m = iresnet.iresnet18(widths=(16, 32, 64, 128), num_features=64, input_size=32, zero_init_residual=True)
    assert not m.features.weight.requires_grad
    assert torch.equal(m.features.weight, torch.ones(64))
    assert isinstance(m.features.weight, torch.nn.Parameter)
    std = m.layer2[1].conv1.weight.std().item()
    assert 0.09 < std < 0.11
    assert torch.all(m.layer1[0].bn2.weight == 0) and torch.all(m.layer1[0].bn3.weight == 1)
    assert m.fc.bias is not None and m.fc.in_features == 128 * 2 * 2
    assert isinstance(m.dropout, torch.nn.Dropout)


def test_block_forward_order_by_hand():
    torch.manual_seed(1)
    ds = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 1, stride=2, bias=False), torch.nn.BatchNorm2d(6))
    blk = IBasicBlock(4, 6, stride=2, downsample=ds).eval()
    for bn in (blk.bn1, blk.bn2, blk.bn3, ds[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    blk.prelu.weight.data.uniform_(0.1, 0.4)
    x = torch.randn(2, 4, 8, 8)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    out = bn(x, blk.bn1)
    out = F.conv2d(out, blk.conv1.weight, stride=1, padding=1)
    out = F.prelu(bn(out, blk.bn2), blk.prelu.weight)
    out = bn(F.conv2d(out, blk.conv2.weight, stride=2, padding=1), blk.bn3)
    out = out + bn(F.conv2d(x, ds[0].weight, stride=2), ds[1])
    got = blk(x)
    assert got.shape == (2, 6, 4, 4)
    torch.testing.assert_close(got, out, rtol=1e-5, atol=1e-5)


def test_official_r18_forward_shape_and_fp32():
    torch.manual_seed(0)
    m = iresnet.iresnet18().eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert y.shape == (2, 512) and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_tiny_forward_shapes_and_input_check():
    m = get_model("r34", **TINY).eval()
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 32)
    with pytest.raises(ValueError, match="32×32"):
        m(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError):
        get_model("r18", input_size=40)
    with pytest.raises(ValueError, match="unknown IResNet"):
        get_model("r101")


@pytest.mark.parametrize("fp16", [False, True])
def test_bf16_autocast_cpu_gives_fp32_embedding(fp16):
    torch.manual_seed(0)
    m = get_model("r18", fp16=fp16, **TINY).eval()
    seen = {}
    m.layer4.register_forward_hook(lambda mod, i, o: seen.__setitem__("trunk", o.dtype))
    m.fc.register_forward_hook(lambda mod, i, o: seen.__setitem__("fc", o.dtype))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        trunk_dtype = seen["trunk"]
        m.fp16 = False  # fp32 reference (fp16=True alone would autocast to bf16 on CPU too)
        ref = m(x)
    assert y.dtype == torch.float32 and seen["fc"] == torch.float32
    # fp16=False switches autocast off in the trunk (official semantics); fp16=True keeps the outer bf16.
    assert trunk_dtype == (torch.bfloat16 if fp16 else torch.float32)
    if fp16:
        assert (y - ref).abs().max() > 0
        torch.testing.assert_close(y, ref, rtol=0.1, atol=0.15 * ref.abs().max().item())
    else:
        torch.testing.assert_close(y, ref)


def test_state_dict_roundtrip_strict_identical_outputs(tmp_path):
    torch.manual_seed(0)
    a = get_model("r50", **TINY)
    a.train()
    with torch.no_grad():
        for _ in range(2):  # move BN running stats away from their init
            a(torch.randn(4, 3, 32, 32))
    a.eval()
    path = tmp_path / "backbone.pth"
    torch.save(a.state_dict(), path)
    torch.manual_seed(123)
    b = get_model("r50", **TINY)
    b.load_state_dict(torch.load(path, weights_only=True), strict=True)
    b.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert int(b.state_dict()["bn1.num_batches_tracked"]) == 2


def test_training_step_and_grad_checkpointing_match():
    torch.manual_seed(0)
    a = get_model("r18", **TINY)
    b = get_model("r18", grad_checkpointing=True, **TINY)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    for m in (a, b):
        m.train()
        m(x).square().sum().backward()
    assert a.features.weight.grad is None
    torch.testing.assert_close(a.conv1.weight.grad, b.conv1.weight.grad, rtol=1e-4, atol=1e-5)
    assert a.features.bias.grad.abs().sum() > 0
