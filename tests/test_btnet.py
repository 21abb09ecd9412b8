"""BTNet (seed 004 §3.2): branch shapes per resolution, branches built from the trunk reproduce the trunk's own
computation on their path, frozen / trainable parameter sets, storage, and the authors' per-resolution layout."""

import pytest
import torch

from lrface.nets.btnet import BTNet, coupling_stage, iresnet_from_state_dict
from lrface.nets.iresnet import get_model

TINY = dict(widths=(8, 16, 16, 24), num_features=16)


def _trunk(seed=0):
    torch.manual_seed(seed)
    trunk = get_model("r18", **TINY).eval()
    # non-trivial BN statistics, so a branch that silently used fresh BNs would not match
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return trunk


def _stride_one_iresnet(trunk_state, stages):
    """An independent construction of the authors' per-resolution network: the trunk's weights, block 0 of the
    first ``stages`` stages with stride 1 (methods.md §1.2)."""
    net = iresnet_from_state_dict(trunk_state)
    net.load_state_dict(trunk_state)
    for s in range(1, stages + 1):
        block = getattr(net, f"layer{s}")[0]
        block.conv2.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return net.eval()


def test_coupling_stages_and_errors():
    assert [coupling_stage(r) for r in (56, 28, 14, 7)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="pyramid"):
        coupling_stage(21)
    with pytest.raises(ValueError, match="pyramid"):
        BTNet(_trunk(), resolutions=(7, 20))


@pytest.mark.parametrize("share", ["bn", "copy"])
def test_branch_shapes_and_trunk_reproduction(share):
    trunk = _trunk()
    state = trunk.state_dict()
    bt = BTNet.from_trunk(state, resolutions=(7, 14, 28), share=share).eval()
    x112 = torch.rand(3, 3, 112, 112) * 2 - 1
    emb_t, maps = bt.trunk_with_coupling(x112)
    torch.testing.assert_close(emb_t, trunk(x112))
    widths = {28: 16, 14: 16, 7: 24}
    for r in (7, 14, 28):
        x = torch.rand(3, 3, r, r) * 2 - 1
        emb, z = bt.forward_branch(x, r, return_coupling=True)
        assert emb.shape == (3, 16) and emb.dtype == torch.float32
        assert z.shape == (3, widths[r], r, r) and maps[r].shape == z.shape
        torch.testing.assert_close(bt(x), emb)
        # the tail T_r with the branch's (copied) BNs is exactly TNet's tail on TNet's own coupling map
        branch = bt.branches[str(r)]
        torch.testing.assert_close(branch.head(bt.trunk, branch.tail(bt.trunk, maps[r])), emb_t)
        # the whole branch equals the trunk network with its strides set to 1 up to the coupling stage
        ref = _stride_one_iresnet(state, coupling_stage(r))
        ref.input_size = r
        torch.testing.assert_close(emb, ref(x), rtol=1e-5, atol=1e-5)
    assert bt.branch_for(112) == 112
    with pytest.raises(ValueError, match="resize to a branch"):
        bt(torch.zeros(1, 3, 20, 20))


def test_trainable_sets_and_storage():
    bt = BTNet.from_trunk(_trunk().state_dict(), resolutions=(7, 14, 28), share="bn")
    assert not any(p.requires_grad for p in bt.trunk.parameters())
    for r, stage in ((28, 2), (14, 3), (7, 4)):
        branch = bt.branches[str(r)]
        names = {n for n, p in branch.named_parameters() if p.requires_grad}
        assert f"layer{stage}.0.conv2.weight" in names and "conv1.weight" in names
        assert not any(n.startswith(f"layer{stage}.1") for n in names)  # the body ends with block 0
        assert "specific.features.weight" not in names and "specific.features.bias" in names
        assert all(".bn" in n or "downsample" in n or n.startswith(("specific.bn2", "specific.features"))
                   for n in names if n.startswith("specific."))
        assert bt.stored_parameters(r) < bt.stored_parameters(None)
    # the 7 px branch holds stem..layer4.0 but only BNs of layer4.1: almost the trunk minus layer4.1's convs and fc
    copy = BTNet.from_trunk(_trunk().state_dict(), resolutions=(7,), share="copy")
    assert copy.stored_parameters(7) > bt.stored_parameters(7)
    frozen = {n for n, p in copy.branches["7"].named_parameters() if not p.requires_grad}
    assert "specific.layer4.1.conv1.weight" in frozen and "specific.fc.weight" in frozen
    copy.freeze(fix_trunk=False)
    assert copy.branches["7"].specific["fc"].weight.requires_grad
    with pytest.raises(ValueError, match="share='copy'"):
        bt.freeze(fix_trunk=False)


def test_trunk_stays_in_eval_mode():
    bt = BTNet.from_trunk(_trunk().state_dict(), resolutions=(14,))
    bt.train()
    assert bt.branches["14"].training and not bt.trunk.training
    before = bt.trunk.layer4[1].bn1.running_mean.clone()
    bt.forward_branch(torch.rand(4, 3, 14, 14), 14).sum().backward()
    torch.testing.assert_close(bt.trunk.layer4[1].bn1.running_mean, before)
    assert not torch.equal(bt.branches["14"].specific["layer4"]["1"].bn1.running_mean, before)
    assert bt.trunk.conv1.weight.grad is None and bt.branches["14"].conv1.weight.grad is not None


@pytest.mark.parametrize("share", ["bn", "copy"])
def test_authors_per_resolution_layout_round_trip(share):
    trunk = _trunk()
    bt = BTNet.from_trunk(trunk.state_dict(), resolutions=(7, 28), share=share)
    bt.train()
    for r in (7, 28):  # move the branch away from its init
        bt.forward_branch(torch.rand(4, 3, r, r), r)
        with torch.no_grad():
            bt.branches[str(r)].conv1.weight.mul_(1.1)
    bt.eval()
    state = bt.branch_network_state_dict(28)
    assert set(state) == set(trunk.state_dict())
    other = BTNet.from_trunk(trunk.state_dict(), resolutions=(7, 28), share=share).eval()
    other.load_branch_network(28, state)
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(other(x), bt(x))
    if share == "bn":
        state["layer3.1.conv1.weight"] = state["layer3.1.conv1.weight"] + 0.1
        with pytest.raises(ValueError, match="share='copy'"):
            other.load_branch_network(28, state)


@pytest.mark.parametrize("share", ["bn", "copy"])
def test_load_btnet_from_our_checkpoint_and_the_authors_files(tmp_path, share):
    from lrface.weights import load_btnet

    trunk = _trunk()
    bt = BTNet.from_trunk(trunk.state_dict(), resolutions=(7, 28), share=share)
    with torch.no_grad():
        for r in ("7", "28"):
            bt.branches[r].conv1.weight.mul_(1.2)
            bt.branches[r].specific["bn2"].running_mean.uniform_(-0.1, 0.1)
    bt.eval()
    torch.save({"state_dict": {f"btnet.{k}": v for k, v in bt.state_dict().items()}}, tmp_path / "run.ckpt")
    loaded = load_btnet(tmp_path / "run.ckpt")
    assert loaded.resolutions == (7, 28) and loaded.share == share
    x7, x28 = torch.rand(2, 3, 7, 7), torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(loaded(x7), bt(x7))
    # TNet's backbone.pth + one full per-resolution model.pt per branch (the authors' release layout)
    torch.save(trunk.state_dict(), tmp_path / "backbone.pth")
    for r in (7, 28):
        torch.save(bt.branch_network_state_dict(r), tmp_path / f"model_{r}.pt")
    authors = load_btnet(tmp_path / "backbone.pth", {7: tmp_path / "model_7.pt", 28: tmp_path / "model_28.pt"},
                         share=share)
    torch.testing.assert_close(authors(x28), bt(x28))
    with pytest.raises(ValueError, match="not a BTNetModule checkpoint"):
        load_btnet(tmp_path / "backbone.pth")


def test_cli_evaluate_multires_on_a_btnet_checkpoint(tmp_path, tiny_world):
    import json

    from lrface.cli import main

    bt = BTNet.from_trunk(_trunk().state_dict(), resolutions=(7,))
    torch.save({"state_dict": {f"btnet.{k}": v for k, v in bt.state_dict().items()}}, tmp_path / "run.ckpt")
    out = tmp_path / "r.json"
    assert main(["evaluate-multires", "--weights", str(tmp_path / "run.ckpt"), "--bin",
                 str(tiny_world / "ms1m" / "lfw.bin"), "--pairs", "112&7", "7&7", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"lfw@112&7", "lfw@7&7", "average@112&7", "average@7&7", "cost@7px", "cost@112px"}
    assert 0.0 <= results["lfw@112&7"]["accuracy"] <= 1.0
    assert results["cost@7px"]["flops_ratio"] < 0.5
