"""MAD networks (seed 003, methods.md §4): Q / P shapes at 64 / 112 / 128, the decoder seed rule, the factor layout
(normalised heads, concat order, complements), D / D_z logits, and hand-computed parameter counts of Q and P."""

import pytest
import torch
from torch import nn

from lrface.nets.mad import (
    FACTORS,
    Z_DIM,
    Decoder,
    Disentangler,
    Encoder,
    ImageDiscriminator,
    LatentDiscriminator,
    MADNet,
    Reentangler,
    UpBlock,
    complement,
    decoder_seed,
    main,
    parameter_counts,
    split,
)

SMALL = {"encoder_widths": (4, 8, 8, 16), "decoder_widths": (16, 8, 4), "hidden": 24, "ndf": 4}


def _count(m):
    return sum(p.numel() for p in m.parameters())


def _ordered_factors(b=2):
    """Factors whose entries are their own position in f (plus 1000·row), so any misplacement shows."""
    f = torch.arange(Z_DIM, dtype=torch.float32).repeat(b, 1) + 1000 * torch.arange(b).unsqueeze(1)
    return f, {name: f[:, s].clone() for name, s in FACTORS.items()}


def test_factor_layout_covers_z_once_in_order():
    dims = {name: s.stop - s.start for name, s in FACTORS.items()}
    assert list(FACTORS) == ["pose", "identity", "style", "expression"]
    assert dims == {"pose": 3, "identity": 32, "style": 32, "expression": 32}
    covered = [i for s in FACTORS.values() for i in range(s.start, s.stop)]
    assert covered == list(range(Z_DIM)) and Z_DIM == 99


@pytest.mark.parametrize("size", [64, 112, 128])
def test_madnet_shapes(size):
    torch.manual_seed(0)
    net = MADNet(size, **SMALL)
    x = torch.rand(3, 3, size, size) * 2 - 1
    z = net.encode(x)
    assert z.shape == (3, 99)
    x_hat = net.decode(z)
    assert x_hat.shape == (3, 3, size, size)
    assert x_hat.abs().max() < 1  # tanh output
    f = net.factors(z)
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "pose": (3, 3), "identity": (3, 32), "style": (3, 32), "expression": (3, 32)}
    assert net.reentangle(f).shape == (3, 99)
    assert net.discriminator(x).shape == (3,)
    assert net.z_discriminator(z).shape == (3,)


@pytest.mark.parametrize(("size", "seed", "n"), [(128, 4, 5), (256, 4, 6), (112, 7, 4), (64, 4, 4), (96, 6, 4),
                                                 (8, 4, 1)])
def test_decoder_seed_rule(size, seed, n):
    assert decoder_seed(size) == (seed, n)
    dec = Decoder(size, (8, 4), z_dim=5)
    assert len(dec.blocks) == n - 1
    assert dec.fc.out_features == 8 * seed * seed
    assert dec(torch.randn(2, 5)).shape == (2, 3, size, size)


@pytest.mark.parametrize("size", [4, 7, 72, 100, 50])
def test_decoder_rejects_sizes_it_cannot_reach(size):
    with pytest.raises(ValueError, match="k·2\\^n"):
        decoder_seed(size)


def test_decoder_channels_follow_the_authors_layout_at_128_and_256():
    dec128 = Decoder(128)
    assert [b.conv1.out_channels for b in dec128.blocks] == [256, 128, 64, 64]
    assert dec128.to_rgb.in_channels == 64 and dec128.to_rgb.stride == (2, 2)
    dec256 = Decoder(256)
    assert [b.conv1.out_channels for b in dec256.blocks] == [256, 128, 64, 64, 64]


def test_decoder_parameter_count_by_hand():
    def up_block(cin, c):  # two 4×4 transposed convs (main + shortcut), one 3×3 conv, three BNs
        return 2 * 16 * cin * c + 9 * c * c + 3 * 2 * c

    expected = (99 * 512 * 16 + 512 * 16) + 2 * 512  # fc to the 4×4 seed + its BN
    expected += up_block(512, 256) + up_block(256, 128) + up_block(128, 64) + up_block(64, 64)
    expected += 16 * 64 * 3  # to_rgb, no bias
    assert _count(Decoder(128)) == expected == 7_273_472


def test_up_block_doubles_the_side():
    blk = UpBlock(6, 5)
    assert blk(torch.randn(2, 6, 7, 7)).shape == (2, 5, 14, 14)


def test_encoder_parameter_count_is_resnet18_trunk_plus_our_fc():
    def basic(cin, c, stride):  # two 3×3 convs + two BNs (+ 1×1 conv + BN shortcut when the shape changes)
        n = 9 * cin * c + 9 * c * c + 2 * 2 * c
        return n + (cin * c + 2 * c if stride != 1 or cin != c else 0)

    trunk = 3 * 64 * 49 + 2 * 64  # conv7×7 stem + BN
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        trunk += basic(cin, c, 1 if i == 0 else 2) + basic(c, c, 1)
        cin = c
    # torchvision resnet18 has 11,689,512 parameters, of which its fc Linear(512 → 1000) holds 513,000.
    assert trunk == 11_689_512 - 513_000
    enc = Encoder(128)
    assert _count(enc) == trunk + 512 * 99 + 99 == 11_227_299
    # torchvision module names, so an ImageNet state dict (minus fc) would load.
    names = {k for k, _ in enc.named_parameters()}
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.bias", "fc.weight"} <= names
    assert "layer1.0.downsample.0.weight" not in names


def test_encoder_is_a_real_resnet_stride_pattern():
    enc = Encoder(64, (4, 8, 8, 16), z_dim=7).eval()
    x = torch.rand(1, 3, 64, 64)
    stem = enc.maxpool(enc.relu(enc.bn1(enc.conv1(x))))
    assert stem.shape[-1] == 16
    sides = []
    h = stem
    for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
        h = layer(h)
        sides.append(h.shape[-1])
    assert sides == [16, 8, 4, 2]
    assert enc(x).shape == (1, 7)
    with pytest.raises(ValueError, match="B×3×64×64"):
        enc(torch.rand(1, 3, 32, 32))


def test_disentangler_normalises_identity_style_expression_not_pose():
    torch.manual_seed(0)
    e = Disentangler(hidden=32)
    f = e(torch.randn(6, 99) * 3)
    for name in ("identity", "style", "expression"):
        torch.testing.assert_close(f[name].norm(dim=1), torch.ones(6))
    pose_norms = f["pose"].norm(dim=1)
    assert not torch.allclose(pose_norms, torch.ones(6), atol=1e-2)
    # pose is the raw head output; the others are the raw heads divided by their norms
    z = torch.randn(4, 99)
    torch.testing.assert_close(e(z)["pose"], e.heads["pose"](e.trunk(z)))
    raw_id = e.heads["identity"](e.trunk(z))
    torch.testing.assert_close(e(z)["identity"], raw_id / raw_id.norm(dim=1, keepdim=True))


def test_concat_follows_factors_order_and_split_inverts_it():
    f, parts = _ordered_factors()
    shuffled = {k: parts[k] for k in ("expression", "identity", "pose", "style")}  # dict order must not matter
    torch.testing.assert_close(Disentangler.concat(shuffled), f, rtol=0, atol=0)
    back = split(f)
    assert list(back) == list(FACTORS)
    for name in FACTORS:
        torch.testing.assert_close(back[name], parts[name], rtol=0, atol=0)
    with pytest.raises(KeyError, match="style"):
        Disentangler.concat({k: v for k, v in parts.items() if k != "style"})
    with pytest.raises(ValueError, match="identity"):
        Disentangler.concat({**parts, "identity": parts["identity"][:, :31]})


@pytest.mark.parametrize("factor", list(FACTORS))
def test_complement_drops_exactly_the_factor(factor):
    f, _ = _ordered_factors(3)
    s = FACTORS[factor]
    rest = complement(f, factor)
    assert rest.shape == (3, 99 - (s.stop - s.start))
    kept = [i for i in range(99) if not s.start <= i < s.stop]
    torch.testing.assert_close(rest, f[:, kept], rtol=0, atol=0)


def test_complement_examples_and_errors():
    f, _ = _ordered_factors(1)
    assert complement(f, "identity")[0, :4].tolist() == [0, 1, 2, 35]
    assert complement(f, "pose")[0, 0].item() == 3
    assert complement(f, "expression")[0, -1].item() == 66
    with pytest.raises(KeyError, match="shape"):
        complement(f, "shape")
    with pytest.raises(ValueError, match="B×99"):
        complement(f[:, :98], "pose")


def test_reentangler_and_madnet_accept_dict_or_tensor():
    torch.manual_seed(0)
    net = MADNet(64, **SMALL).eval()
    z = torch.randn(5, 99)
    f = net.factors(z)
    out_dict = net.reentangle(f)
    out_tensor = net.reentangle(Disentangler.concat(f))
    torch.testing.assert_close(out_dict, out_tensor, rtol=0, atol=0)
    g = Reentangler(hidden=10)
    assert [m.out_features for m in g.net if isinstance(m, nn.Linear)] == [10, 99]
    with pytest.raises(ValueError, match="B×99"):
        g(torch.randn(2, 98))


def test_discriminators_layout_and_logits():
    d = ImageDiscriminator(128)
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 256]
    assert all(c.stride == (2, 2) and c.kernel_size == (4, 4) for c in convs)
    assert not isinstance(d.features[1], nn.BatchNorm2d)  # no BN after the first conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.features) == 4
    assert d.fc.in_features == 256
    assert d.features(torch.rand(1, 3, 128, 128)).shape == (1, 256, 4, 4)
    small = ImageDiscriminator(112, ndf=4).eval()
    logits = small(torch.rand(4, 3, 112, 112) * 2 - 1)
    assert logits.shape == (4,)
    with torch.no_grad():
        small.fc.bias.fill_(5.0)
    assert (small(torch.rand(2, 3, 112, 112)) > 1).all()  # raw logits: no sigmoid at the end
    with pytest.raises(ValueError):
        ImageDiscriminator(16, n_layers=5)
    dz = LatentDiscriminator()
    assert [m.out_features for m in dz.net if isinstance(m, nn.Linear)] == [1000, 1000, 1]
    assert dz(torch.randn(7, 99)).shape == (7,)


def test_gradients_reach_every_network():
    torch.manual_seed(0)
    net = MADNet(64, **SMALL)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = net.encode(x)
    loss = (net.decode(net.reentangle(net.factors(z))) - x).abs().mean()
    loss = loss + net.discriminator(net.decode(z)).mean() + net.z_discriminator(z).mean()
    loss.backward()
    for name in ("encoder", "decoder", "z_discriminator", "discriminator", "disentangler", "reentangler"):
        grads = [p.grad for p in getattr(net, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_main_prints_counts_at_128(capsys):
    main()
    out = capsys.readouterr().out
    assert "11,227,299" in out and "7,273,472" in out
    assert "1,102,001" in out  # D_z: 99·1000 + 1000 + 1000·1000 + 1000 + 1000 + 1
    assert "199,099" in out  # E: 99·1000 + 1000 + 1000·99 + 99 ; G the same
    counts = parameter_counts(MADNet(64, **SMALL))
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
