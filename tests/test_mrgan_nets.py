"""MR-GAN architectures (seed 002, supp. §5, Fig. 7–9): facial region boxes, crop / paste, the multi-resolution global
generator (the output really is an r×r face), local generators, attention merging and its ablations, discriminators."""

import pytest
import torch
import torch.nn.functional as F

from lrface.align import arcface_template
from lrface.nets.mrgan import (
    PATCH_SIZES,
    REGIONS,
    GlobalGenerator,
    LocalDiscriminator,
    LocalGenerator,
    MRGANDiscriminator,
    MRGANGenerator,
    PatchDiscriminator,
    SpatialAttention,
    crop_regions,
    main,
    parameter_counts,
    paste_regions,
    region_boxes,
    region_mask,
)

SMALL = {"global_channels": (4, 8, 8, 8), "blocks": 1, "local_channels": 4, "local_res_blocks": 1, "noise_dim": 3}


def _faces(b, size=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def _inside(box, x, y):
    t, l, h, w = box
    return l <= x <= l + w - 1 and t <= y <= t + h - 1


def _as_trained(net):
    """A stand-in for training: the last layers that start at zero (global heads, local decoders) get random weights."""
    for m in net.modules():
        if isinstance(m, GlobalGenerator):
            for head in m.heads:
                torch.nn.init.normal_(head[-1].weight, std=0.1)
        elif isinstance(m, LocalGenerator):
            torch.nn.init.normal_(m.decoder[-2].weight, std=0.1)
    return net


def test_an_untrained_generator_is_plain_down_sampling():
    torch.manual_seed(0)
    gen = MRGANGenerator(112, **SMALL)
    x, index = _faces(3), torch.tensor([0, 1, 1])
    out = gen(x, index)
    torch.testing.assert_close(out["local"], out["base"], rtol=0, atol=0)
    torch.testing.assert_close(out["global"], out["base"], rtol=0, atol=0)
    torch.testing.assert_close(out["image"], out["base"], rtol=0, atol=1e-6)


def test_patch_sizes_positions_and_landmarks_at_112():
    boxes = region_boxes(112)
    assert list(boxes) == list(REGIONS)
    assert {k: b[2:] for k, b in boxes.items()} == {"eyes": (20, 72), "nose": (32, 20), "mouth": (24, 52)}
    assert PATCH_SIZES == {k: b[2:] for k, b in boxes.items()}
    # hand-computed: top = round(cy − (h − 1)/2), left = round(cx − (w − 1)/2) from the ArcFace template
    assert boxes == {"eyes": (42, 20, 20, 72), "nose": (56, 47, 32, 20), "mouth": (81, 31, 24, 52)}
    lm = arcface_template(112).tolist()
    for (x, y), region in zip(lm, ("eyes", "eyes", "nose", "mouth", "mouth")):
        assert _inside(boxes[region], x, y), (region, x, y)
    # union = 1440 + 640 + 1248 − 6·20 (eyes ∩ nose) − 7·20 (nose ∩ mouth)
    mask = region_mask(112, boxes)
    assert mask.shape == (1, 1, 112, 112) and mask.sum().item() == 3068
    assert set(mask.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("size", [64, 112, 96])
def test_boxes_inside_and_scaled(size):
    boxes = region_boxes(size)
    for name, (t, l, h, w) in boxes.items():
        assert t >= 0 and l >= 0 and t + h <= size and l + w <= size, (name, boxes[name])
        assert h % 4 == 0 and w % 4 == 0 and h >= 4 and w >= 4
    if size == 64:  # 20·64/112 = 11.4 → 12, 72 → 41.1 → 40, 32 → 18.3 → 20, 24 → 13.7 → 12, 52 → 29.7 → 28
        assert {k: b[2:] for k, b in boxes.items()} == {"eyes": (12, 40), "nose": (20, 12), "mouth": (12, 28)}
    lm = arcface_template(size).tolist()
    for (x, y), region in zip(lm, ("eyes", "eyes", "nose", "mouth", "mouth")):
        assert _inside(boxes[region], x, y)


def test_boxes_shift_not_shrink_at_the_border():
    lm = arcface_template(112).clone()
    lm[:, 1] += 40  # mouth corners at y ≈ 132: outside a 112 image
    lm[:, 0] -= 50
    boxes = region_boxes(112, lm)
    assert boxes["mouth"] == (112 - 24, 0, 24, 52)
    assert boxes["eyes"][2:] == (20, 72) and boxes["eyes"][1] == 0
    with pytest.raises(ValueError, match="5×2"):
        region_boxes(112, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="does not fit"):
        region_boxes(3)  # the 4-pixel minimum exceeds the image


def test_crop_paste_round_trip_and_gradients():
    boxes = region_boxes(112)
    a, b = _faces(2, seed=1), _faces(2, seed=2)
    assert torch.equal(paste_regions(a, crop_regions(a, boxes), boxes), a)
    pasted = paste_regions(a, crop_regions(b, boxes), boxes)
    assert pasted is not a and pasted.data_ptr() != a.data_ptr()
    for name, patch in crop_regions(pasted, boxes).items():
        assert torch.equal(patch, crop_regions(b, boxes)[name])
    mask = region_mask(112, boxes).bool().expand_as(a)
    assert torch.equal(pasted[~mask], a[~mask]) and torch.equal(pasted[mask], b[mask])
    crops = {k: v.shape for k, v in crop_regions(a, boxes).items()}
    assert crops == {k: (2, 3, *PATCH_SIZES[k]) for k in REGIONS}

    img = a.clone().requires_grad_(True)
    patches = {k: v.clone().requires_grad_(True) for k, v in crop_regions(b, boxes).items()}
    paste_regions(img, patches, boxes).sum().backward()
    assert torch.equal(img.grad, (~mask).float())
    # the nose patch loses its rows under the mouth (pasted later): 7 of its 32 rows
    assert patches["nose"].grad[:, :, :25].eq(1).all() and patches["nose"].grad[:, :, 25:].eq(0).all()
    assert patches["mouth"].grad.eq(1).all()
    with pytest.raises(ValueError, match="box"):
        paste_regions(a, {"eyes": torch.zeros(2, 3, 20, 70)}, boxes)


def test_global_generator_streams_and_zero_heads_give_the_plain_lr_face():
    torch.manual_seed(0)
    g = _as_trained(GlobalGenerator(112, channels=(4, 8, 8, 8), blocks=1, lr_sizes=(14, 28)))
    x = _faces(3)
    streams = g.streams(x)
    assert [tuple(s.shape) for s in streams] == [(3, 4, 112, 112), (3, 8, 56, 56), (3, 8, 28, 28), (3, 8, 14, 14)]
    out = g(x, torch.tensor([0, 1, 0]))
    plain = {r: F.interpolate(F.interpolate(x, size=(r, r), mode="area"), size=(112, 112), mode="bicubic",
                              align_corners=False).clamp(-1, 1) for r in (14, 28)}
    # trained (random) heads refine the LR face: Δ ≠ 0
    assert not torch.allclose(out["image"][0], plain[14][0], atol=1e-3)
    for head in g.heads:
        torch.nn.init.zeros_(head[-1].weight)
        torch.nn.init.zeros_(head[-1].bias)
    for k, r in enumerate((14, 28)):
        out = g(x, torch.full((3,), k))
        assert torch.equal(out["image"], plain[r]) and torch.equal(out["base"], plain[r])
        assert out["index"].dtype == torch.long and out["index"].tolist() == [k] * 3
    mixed = g(x, torch.tensor([1, 0, 1]))
    assert torch.equal(mixed["image"], torch.stack([plain[28][0], plain[14][1], plain[28][2]]))
    with pytest.raises(ValueError, match="lr_sizes"):
        g(x, torch.tensor([0, 2, 0]))
    with pytest.raises(ValueError, match="112"):
        g(_faces(1, 64))


def test_global_generator_random_index_and_per_sample_consistency():
    torch.manual_seed(0)
    g = _as_trained(GlobalGenerator(32, channels=(4, 8), blocks=1, lr_sizes=(4, 8, 16)))
    x = _faces(64, 32)
    out = g(x)
    assert out["index"].shape == (64,) and set(out["index"].tolist()) == {0, 1, 2}
    assert out["image"].shape == (64, 3, 32, 32) and out["image"].abs().max() <= 1
    # instance norm is per sample, so a mixed batch gives each face what it gets alone
    for i in (0, 17, 40):
        alone = g(x[i:i + 1], out["index"][i:i + 1])
        assert torch.allclose(alone["image"][0], out["image"][i], atol=1e-6)
        assert torch.equal(alone["base"][0], out["base"][i])


def test_heads_run_only_for_present_resolutions():
    torch.manual_seed(0)
    g = GlobalGenerator(32, channels=(4, 8), blocks=1, lr_sizes=(4, 8))
    g(_faces(4, 32), torch.zeros(4, dtype=torch.long))["image"].sum().backward()
    assert all(p.grad is not None for p in g.heads[0].parameters())
    assert all(p.grad is None for p in g.heads[1].parameters())


def test_local_generator_shapes_noise_and_sizes():
    torch.manual_seed(0)
    gen = _as_trained(LocalGenerator((20, 72), channels=4, n_res=1, noise_dim=3))
    for h, w in [(20, 72), (32, 20), (24, 52), (8, 4)]:
        patch = torch.rand(2, 3, h, w) * 2 - 1
        out = gen(patch)
        assert out.shape == (2, 3, h, w) and out.abs().max() < 1
    patch = torch.rand(2, 3, 20, 72) * 2 - 1
    n1, n2 = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(gen(patch, n1), gen(patch, n1))
    assert not torch.allclose(gen(patch, n1), gen(patch, n2))
    with pytest.raises(ValueError, match="multiples of 4"):
        gen(torch.zeros(1, 3, 22, 72))
    with pytest.raises(ValueError, match="multiples of 4"):
        LocalGenerator((21, 72))


@pytest.mark.parametrize("local,attention", [(True, True), (False, True), (True, False), (False, False)])
def test_generator_ablations(local, attention):
    torch.manual_seed(0)
    gen = _as_trained(MRGANGenerator(112, local_generators=local, spatial_attention=attention, **SMALL))
    assert (gen.local_generators is None) != local and (gen.attention is None) != attention
    assert any(k.startswith("attention.") for k in gen.state_dict()) == attention
    assert any(k.startswith("local_generators.") for k in gen.state_dict()) == local
    x = _faces(2)
    out = gen(x, torch.tensor([0, 1]))
    for key in ("image", "global", "base", "local"):
        assert out[key].shape == (2, 3, 112, 112), key
        assert out[key].abs().max() <= 1
    mask = region_mask(112, gen.boxes).bool().expand(2, 3, -1, -1)
    if local:
        assert torch.equal(out["local"][~mask], out["base"][~mask])
        assert not torch.allclose(out["local"][mask], out["base"][mask])
    else:
        assert torch.equal(out["local"], out["base"])
    if attention:
        a = out["attention"]
        assert a.shape == (2, 1, 112, 112) and (a > 0).all() and (a < 1).all()
        assert torch.allclose(out["image"], a * out["local"] + (1 - a) * out["global"])
    else:
        assert out["attention"] is None
        if local:
            assert torch.equal(out["image"][~mask], out["global"][~mask])
            assert torch.equal(out["image"][mask], out["local"][mask])
        else:
            assert torch.equal(out["image"], out["global"])


def test_local_noise_changes_only_region_pixels_without_attention():
    torch.manual_seed(0)
    gen = _as_trained(MRGANGenerator(112, spatial_attention=False, **SMALL))
    x, index = _faces(2), torch.tensor([1, 0])
    a = gen(x, index, {k: torch.zeros(2, 3) for k in REGIONS})["image"]
    b = gen(x, index, {k: torch.full((2, 3), 2.0) for k in REGIONS})["image"]
    changed = (a != b).any(dim=1)  # B×H×W
    mask = region_mask(112, gen.boxes)[0, 0].bool()
    assert not changed[:, ~mask].any()
    for name, (t, l, h, w) in gen.boxes.items():
        assert changed[:, t:t + h, l:l + w].float().mean() > 0.5, name
    # only the named region's noise matters to its pixels
    c = gen(x, index, {"eyes": torch.zeros(2, 3), "nose": torch.zeros(2, 3), "mouth": torch.full((2, 3), 2.0)})
    t, l, h, w = gen.boxes["eyes"]
    assert torch.equal(c["image"][..., t:t + h, l:l + w], a[..., t:t + h, l:l + w])


def test_spatial_attention_shape():
    att = SpatialAttention(hidden=8)
    a = att(torch.rand(3, 6, 20, 24))
    assert a.shape == (3, 1, 20, 24) and (a > 0).all() and (a < 1).all()


def test_discriminator_shapes():
    torch.manual_seed(0)
    x = _faces(2)
    assert PatchDiscriminator(8, 3)(x).shape == (2, 1, 12, 12)  # 112 → 56 → 28 → 14 → 13 → 12
    assert PatchDiscriminator(8, 2)(x).shape == (2, 1, 26, 26)
    local = LocalDiscriminator(8)
    expected = {"eyes": (5, 18), "nose": (8, 5), "mouth": (6, 13)}
    for name, (h, w) in PATCH_SIZES.items():
        assert local(torch.rand(2, 3, h, w)).shape[-2:] == expected[name]
    d = MRGANDiscriminator(112, channels=8, local_channels=8)
    out = d(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "global": (2, 1, 12, 12), "eyes": (2, 1, 5, 18), "nose": (2, 1, 8, 5), "mouth": (2, 1, 6, 13)}
    # each local D sees its own crop: changing pixels outside the eyes box leaves the eyes logits alone
    y = x.clone()
    y[..., 100:, :] = 0
    assert torch.equal(d(y)["eyes"], out["eyes"]) and not torch.equal(d(y)["mouth"], out["mouth"])
    out64 = MRGANDiscriminator(64, channels=8, local_channels=8)(_faces(1, 64))
    assert out64["eyes"].shape[-2:] == (3, 10) and out64["nose"].shape[-2:] == (5, 3)
    assert list(MRGANDiscriminator(112, 8, local_discriminators=False)(x)) == ["global"]


def test_parameter_counts_by_hand_and_main(capsys):
    # LocalDiscriminator(64): 3·64·16 + 64 + 64·128·16 + 128 + 128·9 + 1; SpatialAttention(32): 1760 + 9248 + 33
    assert sum(p.numel() for p in LocalDiscriminator(64).parameters()) == 135_489
    assert sum(p.numel() for p in SpatialAttention(32).parameters()) == 11_041
    # PatchGAN(64, 3): 3136 + 131200 + 524544 + 2097664 + 8193
    assert sum(p.numel() for p in PatchDiscriminator(64, 3).parameters()) == 2_764_737
    gen, disc = MRGANGenerator(), MRGANDiscriminator()
    counts = parameter_counts(gen, disc)
    assert counts["generator.total"] == sum(p.numel() for p in gen.parameters()) == (
        counts["generator.global"] + counts["generator.attention"]
        + sum(counts[f"generator.local.{k}"] for k in REGIONS))
    assert counts["discriminator.total"] == 2_764_737 + 3 * 135_489
    main()
    text = capsys.readouterr().out
    assert f"{counts['generator.total']:,d}" in text and "'nose': (1, 1, 8, 5)" in text


def test_fusion_runs_high_to_low_only():
    torch.manual_seed(0)
    g = GlobalGenerator(32, channels=(4, 4, 4, 4), blocks=1, lr_sizes=(8,))
    assert sorted(g.stages[3].fuse) == ["0_1", "0_2", "0_3", "1_2", "1_3", "2_3"]
    assert [len(g.stages[3].fuse[f"{i}_3"]) for i in range(3)] == [3, 2, 1]  # chains of stride-2 convs
    streams = g.streams(_faces(2, 32))
    streams[0].sum().backward(retain_graph=True)
    # the full-resolution stream never receives lower-resolution information
    assert all(p.grad is None for p in g.transitions.parameters())
    assert all(p.grad is None for p in g.stages[3].fuse.parameters())
    g.zero_grad(set_to_none=True)
    streams[-1].sum().backward()
    # M, the lowest stream, aggregates every stream of the last stage directly
    for name in ("0_3", "1_3", "2_3"):
        assert all(p.grad is not None for p in g.stages[3].fuse[name].parameters()), name
