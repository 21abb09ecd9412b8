"""θ_A (URL supp. B): the four-layer VariationCNN, its training on CelebA attributes, and the frozen labeller."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lrface.labels import CELEBA_ATTRIBUTES
from lrface.nets.variation_cnn import VariationCNN
from lrface.variation_labeler import VARIATION_ATTRIBUTES, load_variation_labeler, variation_targets

SMALL = (8, 16, 32, 64)


def test_variation_cnn_is_the_papers_four_layers():
    net = VariationCNN()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512]
    assert all(c.kernel_size == (3, 3) for c in convs) and convs[0].in_channels == 3
    assert len([m for m in net.modules() if isinstance(m, nn.Linear)]) == 1 and net.fc.in_features == 512
    net.eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, 112, 112) * 2 - 1).shape == (2, 3)
        small = VariationCNN(num_outputs=2, widths=SMALL, input_size=32).eval()
        x = torch.rand(3, 3, 64, 64) * 2 - 1  # resized to 32 inside
        expected = small(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True))
        torch.testing.assert_close(small(x), expected)
        assert small(x).shape == (3, 2)
    with pytest.raises(ValueError, match="four conv layers"):
        VariationCNN(widths=(8, 16, 32))


def test_variation_targets_map_celeba_attributes():
    attrs = torch.zeros(3, 40)
    male, young, smiling = (CELEBA_ATTRIBUTES.index(VARIATION_ATTRIBUTES[k]) for k in ("gender", "age", "smiling"))
    attrs[0, male] = 1  # a young-flagged 0 → old
    attrs[1, young] = 1
    attrs[2, [male, young, smiling]] = 1
    t = variation_targets(attrs, ("gender", "age", "smiling"))
    assert t.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 1]]  # age 1 = not Young
    assert variation_targets(attrs, ("smiling",)).tolist() == [[0], [0], [1]]
    with pytest.raises(ValueError, match="variations"):
        variation_targets(attrs, ("pose",))


class _Losses(pl.Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_training_learns_and_the_checkpoint_round_trips(tiny_world: Path, tmp_path: Path):
    from datamodules.celeba import CelebADataModule
    from lightning_modules.variation_labeler import VariationLabelerModule

    pl.seed_everything(0, workers=True)
    dm = CelebADataModule(str(tiny_world / "celeba"), batch_size=16, image_size=32, align=True, val_pairs=0)
    module = VariationLabelerModule(widths=SMALL, input_size=32, lr=1e-2, weight_decay=0.0, scheduler="none")
    losses = _Losses()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=60, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[losses])
    trainer.fit(module, dm)
    first, last = np.mean(losses.values[:5]), np.mean(losses.values[-5:])
    assert first > 0.5 and last < 0.6 * first, losses.values  # BCE starts near ln 2
    metrics = trainer.callback_metrics
    per = [float(metrics[f"val/acc_{n}"]) for n in ("gender", "age", "smiling")]
    assert float(metrics["val/accuracy"]) == pytest.approx(np.mean(per), abs=1e-5)

    # the training split, in eval mode: well above always answering the majority class
    items = [dm.train_set[i] for i in range(len(dm.train_set))]
    images, attrs = torch.stack([it["image"] for it in items]), torch.stack([it["attributes"] for it in items])
    target = variation_targets(attrs, module.names)
    module.eval()
    with torch.no_grad():
        logits = module(images)
    accuracy = ((logits > 0).float() == target).float().mean(0)
    majority = torch.maximum(target.mean(0), 1 - target.mean(0))
    assert float(accuracy.mean()) > float(majority.mean()) + 0.1, (accuracy, majority)

    path = tmp_path / "theta_a.ckpt"
    trainer.save_checkpoint(path)
    labeler = load_variation_labeler(path)
    assert labeler.names == ("gender", "age", "smiling") and not labeler.training
    assert not any(p.requires_grad for p in labeler.parameters())
    assert labeler.net.widths == SMALL and labeler.net.input_size == 32
    x = torch.rand(5, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(labeler(x), module(x), atol=0, rtol=0)
        fresh = VariationLabelerModule(widths=SMALL, input_size=32).eval()
        assert not torch.allclose(labeler(x), fresh(x))
    labels = labeler.labels(x)
    assert list(labels) == ["gender", "age", "smiling"]
    assert torch.equal(torch.stack(list(labels.values()), 1), (module(x) > 0).float())


def test_load_variation_labeler_rejects_other_files(tiny_world: Path, tmp_path: Path):
    from lightning_modules.variation_labeler import VariationLabelerModule

    plain = tmp_path / "plain.pt"
    torch.save(VariationCNN(widths=SMALL).state_dict(), plain)
    judge = tiny_world / "weights" / "judge_attributes_tiny.ckpt"  # a JudgeModule checkpoint
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"obj": nn.ReLU()}}, pickled)
    for path, match in ((plain, "not a Lightning checkpoint"), (judge, "variations"), (text, "not a plain weights"),
                        (pickled, "not a plain weights")):
        with pytest.raises(ValueError, match=match) as err:
            load_variation_labeler(path)
        assert str(path) in str(err.value)

    module = VariationLabelerModule(variations=("smiling",), widths=SMALL, input_size=32)
    good = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**good, "hyper_parameters": {**good["hyper_parameters"], "widths": [8, 16, 32, 32]}},
               tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="wrong shapes") as err:
        load_variation_labeler(tmp_path / "wrong.ckpt")
    assert str(tmp_path / "wrong.ckpt") in str(err.value)
    torch.save(good, tmp_path / "good.ckpt")
    assert load_variation_labeler(tmp_path / "good.ckpt").names == ("smiling",)
