"""Alg. 2 of the seed paper (``seeds/000_*.txt`` Appendix A) around Alg-F training: the lookalike refresh callback.

Training runs ``meta_epochs`` meta-epochs of ``epochs_per_meta_epoch`` epochs (paper: 5 × 100). Before meta-epoch k
(its first epoch is k·E) the callback

1. recomputes α_thr (Alg. 1's ``calc-best-angle-threshold``) with the current F on CelebA-train same / different
   identity pairs (:class:`datamodules.celeba.CelebAPairs`, :func:`lrface.metrics.angles.best_angle_threshold`) and
   sets ``pl_module.alpha_thr`` — at epoch 0 too;
2. for k ≥ 1 generates ``identities_per_meta_epoch`` lookalike triples with the current F
   (:func:`lrface.lookalike.generate_lookalikes`: PULSE with L_SR + λ·L_sim(i_LR)) and adds them to the set on disk
   (:func:`lrface.lookalike.write_lookalikes` format; the set only grows);
3. sets ``pl_module.siam_enabled = k >= 1`` (L_siam is 0 in the first meta-epoch) and calls ``refresh()`` on the
   lookalike member ``trainer.datamodule.datamodules["lookalike"]`` when there is one.

When: the train loader of an epoch is (re)built before ``on_train_epoch_start``, so a new set must exist by then; the
preparation of meta-epoch k ≥ 1 therefore runs in ``on_train_epoch_end`` of epoch k·E − 1 (and reaches the loader
through ``reload_dataloaders_every_n_epochs: 1``), that of meta-epoch 0 in ``on_train_start``. The values are logged
at the start of the epochs they govern (``lookalike/alpha_thr``, ``lookalike/meta_epoch``, ``lookalike/count``,
and after a generation ``lookalike/generated``, ``lookalike/mean_angle_to_gt``, ``lookalike/mean_L_sim``,
``lookalike/mean_downscale_loss``).

DDP: every rank computes the angles of its share of the α_thr pairs (gathered to all ranks, so all derive the same
α_thr) and generates ``pairs[rank::world_size]`` in rounds of ``gather_every`` pairs; each round's records (images as
PNG bytes) are gathered to rank 0, which writes their PNGs; rank 0 writes the index once the meta-epoch is complete,
then a barrier, then every rank refreshes its reader. Rank 0 prints progress.

Resume: ``state_dict`` keeps the prepared meta-epochs and their α_thr; the index on disk also tells which meta-epochs
were written (an index line exists only once its meta-epoch is complete). On ``on_train_start`` the callback
re-applies α_thr / ``siam_enabled`` of the current meta-epoch and regenerates nothing that is on disk. Only a
meta-epoch lost in a crash between generation and its index is generated again, at once, and the train loader is
rebuilt so the epoch sees it.

F is ``pl_module.backbone`` behind :class:`lrface.weights.FaceFeatures` (aligned faces in [0, 1] → embeddings), in
eval mode during α_thr and generation (each submodule's mode restored after). The module needs only the attributes
``backbone``, ``alpha_thr`` and ``siam_enabled``.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from lrface.lookalike import (
    IMAGE_FIELDS,
    INDEX_FIELDS,
    add_to_index,
    choose_identity_pairs,
    encode_png,
    eval_mode,
    generate_lookalikes,
    read_index,
    write_record_images,
)
from lrface.losses.identity import GAMMA_TEMP
from lrface.metrics.angles import angles_deg, best_angle_threshold, separation_accuracy

_STAT_KEYS = ("angle_to_gt", "angle_to_gt_prime", "L_sim", "L_sim_prime", "downscale_loss", "downscale_loss_prime")


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


class LookalikeRefresh(pl.Callback):
    """Drives Alg. 2's meta-epochs: α_thr per meta-epoch, lookalike generation for k ≥ 1, ``siam_enabled``.

    Args:
        dir: folder of the lookalike set; default ``<trainer.default_root_dir>/lookalikes`` (the run directory
            under ``lrface run``). The lookalike DataModule must read the same folder: one whose ``root`` is None
            gets this folder in ``setup`` (then ``refresh()``), another folder is warned about.
        generator: StyleGAN checkpoint (``lrface.weights.load_generator``) or module; FFHQ framing.
        celeba_root: CelebA folder (train split: identities for Alg. 2 and the α_thr pairs).
        epochs_per_meta_epoch: E, Alg-F epochs per meta-epoch (paper 100).
        meta_epochs: number of meta-epochs (paper 5); after the last one training continues on the last set.
        identities_per_meta_epoch: lookalike triples generated before each meta-epoch k ≥ 1.
        thumbnail_size: side of i_LR (paper 32 for a 1024 px generator; 16 for the 64 px embedded one).
        search: ``lrface.pulse.PulseSearch`` kwargs (``steps``, ``eps``, ``lr``, ``restarts``, ...).
        lambda_sim: λ of L_sim(i_LR) in the search (paper: 1).
        gamma_temp: γ_temp of Eq. 4 in degrees (the search's L_sim).
        pairs_for_alpha: CelebA-train same and as many different identity pairs for α_thr (paper: 3,000 each).
        seed: seed of the identity / image choice, the search seeds and the α_thr pair lists.
        gaussian_fit: PULSE ``gaussian_fit.pt`` of the generator; None → computed once (``fit_samples`` draws).
        fit_samples: mapping draws of a computed Gaussian fit.
        batch_size: pairs per PULSE search (2 thumbnails each).
        gather_every: pairs per rank generated between two gathers to rank 0 (bounds rank 0's memory); default
            4·batch_size.
        alpha_batch_size: pairs per F forward for α_thr.
        num_workers: DataLoader workers for the α_thr pairs.
    """

    def __init__(self, dir: str | os.PathLike | None = None, *, generator: str | os.PathLike | nn.Module,
                 celeba_root: str | os.PathLike, epochs_per_meta_epoch: int = 100, meta_epochs: int = 5,
                 identities_per_meta_epoch: int = 1000, thumbnail_size: int = 32,
                 search: Mapping[str, Any] | None = None, lambda_sim: float = 1.0, gamma_temp: float = GAMMA_TEMP,
                 pairs_for_alpha: int = 3000, seed: int = 0, gaussian_fit: str | os.PathLike | None = None,
                 fit_samples: int = 100_000, batch_size: int = 8, gather_every: int | None = None,
                 alpha_batch_size: int = 64, num_workers: int = 0):
        if epochs_per_meta_epoch < 1 or meta_epochs < 1:
            raise ValueError(f"need epochs_per_meta_epoch >= 1 and meta_epochs >= 1, got {epochs_per_meta_epoch}, "
                             f"{meta_epochs}")
        if identities_per_meta_epoch < 0 or pairs_for_alpha < 1 or batch_size < 1:
            raise ValueError("need identities_per_meta_epoch >= 0, pairs_for_alpha >= 1 and batch_size >= 1")
        if gaussian_fit is not None and not Path(gaussian_fit).is_file():
            raise FileNotFoundError(f"gaussian_fit: {gaussian_fit} does not exist (or set it to null to compute it)")
        self.dir = Path(dir) if dir is not None else None
        self.generator_source = generator
        self.celeba_root = Path(celeba_root)
        self.epochs_per_meta_epoch, self.meta_epochs = int(epochs_per_meta_epoch), int(meta_epochs)
        self.identities_per_meta_epoch = int(identities_per_meta_epoch)
        self.thumbnail_size = int(thumbnail_size)
        self.search = dict(search or {})
        self.lambda_sim, self.gamma_temp = float(lambda_sim), float(gamma_temp)
        self.pairs_for_alpha, self.seed = int(pairs_for_alpha), int(seed)
        self.gaussian_fit_path, self.fit_samples = gaussian_fit, int(fit_samples)
        self.batch_size = int(batch_size)
        self.gather_every = int(gather_every) if gather_every else 4 * self.batch_size
        self.alpha_batch_size, self.num_workers = int(alpha_batch_size), int(num_workers)
        # state (checkpointed)
        self.prepared: set[int] = set()
        self.alpha_thrs: dict[int, float] = {}
        # runtime
        self.generations = 0  # meta-epochs generated by this instance (tests and logs)
        self.refreshes = 0
        self.count = 0
        self._pending: dict[str, float] = {}
        self._generator: nn.Module | None = None
        self._fit: dict[str, torch.Tensor] | None = None
        self._gt_set = None
        self._alpha_pairs = None

    # -- checkpointed state --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"prepared": sorted(self.prepared), "alpha_thr": {int(k): float(v) for k, v in self.alpha_thrs.items()},
                "dir": str(self.dir) if self.dir is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.prepared = {int(k) for k in state_dict.get("prepared", ())}
        self.alpha_thrs = {int(k): float(v) for k, v in (state_dict.get("alpha_thr") or {}).items()}

    # -- helpers -------------------------------------------------------------------------------------------------------

    def meta_epoch_of(self, epoch: int) -> int:
        """The meta-epoch an epoch belongs to (the last one for epochs beyond the schedule)."""
        return min(int(epoch) // self.epochs_per_meta_epoch, self.meta_epochs - 1)

    @property
    def generator(self) -> nn.Module:
        if self._generator is None:
            if isinstance(self.generator_source, nn.Module):
                self._generator = self.generator_source
            else:
                from lrface.weights import load_generator

                self._generator = load_generator(self.generator_source)
            self._generator.eval().requires_grad_(False)
        return self._generator

    def _gaussian(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self._fit is None:
            if self.gaussian_fit_path is not None:
                from lrface.upscale import load_gaussian_fit

                self._fit = load_gaussian_fit(self.gaussian_fit_path)
            else:
                from lrface.pulse import gaussian_fit

                # seeded: every rank computes the same fit without a broadcast
                self._fit = gaussian_fit(self.generator.to(device), n_samples=self.fit_samples,
                                         batch=min(10_000, self.fit_samples), seed=0, device=device)
        return self._fit

    @staticmethod
    def _features(pl_module: pl.LightningModule):
        from lrface.weights import FaceFeatures, FeatureNets

        backbone = pl_module.backbone
        return FeatureNets(FaceFeatures(backbone, int(getattr(backbone, "input_size", 112))), None, None)

    @staticmethod
    def _reader(trainer: pl.Trainer) -> Any:
        members = getattr(getattr(trainer, "datamodule", None), "datamodules", None)
        return members.get("lookalike") if isinstance(members, Mapping) else None

    def _refresh_reader(self, trainer: pl.Trainer) -> None:
        reader = self._reader(trainer)
        if reader is not None and callable(getattr(reader, "refresh", None)):
            reader.refresh()
            self.refreshes += 1

    @staticmethod
    def _all_gather(obj: list, trainer: pl.Trainer) -> list:
        dist = _dist()
        if dist is None:
            return list(obj)
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return [x for part in out for x in part]

    @staticmethod
    def _gather_to_zero(obj: list, trainer: pl.Trainer) -> list | None:
        dist = _dist()
        if dist is None:
            return list(obj)
        out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(obj, out, dst=0)
        return [x for part in out for x in part] if out is not None else None

    def _say(self, trainer: pl.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(f"[lookalike] {text}", flush=True)

    def _disk_meta_epochs(self, trainer: pl.Trainer) -> dict[int, float]:
        """{meta-epoch: α_thr} of the meta-epochs in the index on disk (read on rank 0, broadcast)."""
        found: dict[int, float] = {}
        if trainer.is_global_zero:
            for line in read_index(self.dir):
                found.setdefault(int(line["meta_epoch"]), float(line["alpha_thr"]))
        return trainer.strategy.broadcast(found, src=0)

    # -- Alg. 1: calc-best-angle-threshold -----------------------------------------------------------------------------

    def _pairs_for_alpha(self):
        if self._alpha_pairs is None:
            from datamodules.celeba import CelebADataset, CelebAPairs

            ds = CelebADataset(self.celeba_root, "train", align=True, image_size=self._input_size)
            self._alpha_pairs = (CelebAPairs(ds, self.pairs_for_alpha, same=True, seed=self.seed),
                                 CelebAPairs(ds, self.pairs_for_alpha, same=False, seed=self.seed + 1))
        return self._alpha_pairs

    def compute_alpha_thr(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """α_thr of the current F (degrees) with its pooled accuracy and the mean same / different angles."""
        from datamodules.errors import skip_collate

        nets = self._features(pl_module)
        self._input_size = nets.F.input_size
        device = pl_module.device
        rank, world = trainer.global_rank, trainer.world_size
        rows: list[tuple[int, int, float]] = []
        with eval_mode(nets.F), torch.no_grad():
            for label, pairs in zip((1, 0), self._pairs_for_alpha()):
                share = Subset(pairs, list(range(rank, len(pairs), world)))
                loader = DataLoader(share, batch_size=self.alpha_batch_size, num_workers=self.num_workers,
                                    collate_fn=skip_collate)
                for batch in loader:
                    f1 = nets.F(batch["image1"].to(device).float())
                    a = angles_deg(f1, nets.F(batch["image2"].to(device).float()))
                    rows += [(label, int(i), float(v)) for i, v in zip(batch["index"].tolist(), a.cpu().tolist())]
        rows = sorted(self._all_gather(rows, trainer))
        same = np.array([v for lab, _, v in rows if lab == 1])
        diff = np.array([v for lab, _, v in rows if lab == 0])
        alpha = best_angle_threshold(same, diff)
        return {"alpha_thr": alpha, "accuracy": separation_accuracy(same, diff, alpha),
                "same_mean": float(same.mean()) if same.size else math.nan,
                "diff_mean": float(diff.mean()) if diff.size else math.nan}

    # -- Alg. 2 --------------------------------------------------------------------------------------------------------

    def _ground_truth_set(self, resolution: int):
        if self._gt_set is None:
            from datamodules.celeba import CelebADataset

            self._gt_set = CelebADataset(self.celeba_root, "train", align="ffhq", image_size=resolution)
        return self._gt_set

    def plan(self, k: int, identities) -> tuple[list[tuple[int, int, int]], list[int], list[str]]:
        """Meta-epoch k's draws, the same on every rank: ``(identity, i_GT index, i'_GT index)`` per lookalike
        (:func:`lrface.lookalike.choose_identity_pairs` on the CelebA-train identities), search seeds in [0, 2³¹)
        and ids ``m{k:02d}-{j:06d}``."""
        n = self.identities_per_meta_epoch
        rng = np.random.default_rng([self.seed, int(k)])
        chosen = choose_identity_pairs(identities, n, rng)
        seeds = [int(s) for s in rng.integers(0, 2**31, size=n)]
        return chosen, seeds, [f"m{int(k):02d}-{j:06d}" for j in range(n)]

    def generate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, k: int, alpha_thr: float
                 ) -> dict[str, float]:
        """Meta-epoch k's lookalikes (this rank's share), gathered to and written by rank 0; returns its statistics."""
        from lrface.align import generator_resolution

        n = self.identities_per_meta_epoch
        rank, world = trainer.global_rank, trainer.world_size
        device = pl_module.device
        gen = self.generator
        res = generator_resolution(gen)
        if res % self.thumbnail_size:
            raise ValueError(f"generator resolution {res} is not a multiple of thumbnail_size={self.thumbnail_size}")
        gt_set = self._ground_truth_set(res)
        chosen, seeds, ids = self.plan(k, gt_set.identities)
        mine = list(range(rank, n, world))
        rounds = math.ceil(math.ceil(n / world) / self.gather_every) if n else 0
        self._say(trainer, f"meta-epoch {k}: generating {n} lookalikes (i and i' each; {world} rank(s), "
                           f"α_thr {alpha_thr:.2f}°, λ_sim {self.lambda_sim:g}) into {self.dir} ...")
        start = time.perf_counter()
        nets = self._features(pl_module)
        fit = self._gaussian(device)
        lines: list[dict[str, Any]] = []
        stats: dict[str, list[float]] = {key: [] for key in _STAT_KEYS}
        try:
            for r in range(rounds):
                sel = mine[r * self.gather_every:(r + 1) * self.gather_every]
                pairs = [(chosen[j][0], gt_set[chosen[j][1]]["image"], gt_set[chosen[j][2]]["image"]) for j in sel]
                records = generate_lookalikes(
                    nets, gen, fit, pairs, self.thumbnail_size, self.search, self.lambda_sim, alpha_thr,
                    self.gamma_temp, [seeds[j] for j in sel], device, meta_epoch=k, ids=[ids[j] for j in sel],
                    batch_size=self.batch_size) if sel else []
                payload = [self._payload(rec) for rec in records]
                gathered = self._gather_to_zero(payload, trainer)
                if gathered is not None:
                    for rec in gathered:
                        lines.append(write_record_images(self.dir, rec))
                        for key in _STAT_KEYS:
                            if rec.get(key) is not None:
                                stats[key].append(float(rec[key]))
                    self._say(trainer, f"meta-epoch {k}: {len(lines)}/{n} lookalikes "
                                       f"({time.perf_counter() - start:.1f} s)")
        finally:
            gen.to("cpu")  # frees the accelerator for training; the next meta-epoch moves it back
        total = 0
        if trainer.is_global_zero:
            lines.sort(key=lambda line: line["id"])
            total = len(add_to_index(self.dir, lines))
        summary = {
            "generated": float(len(lines)),
            "count": float(total),
            "mean_angle_to_gt": _mean(stats["angle_to_gt"] + stats["angle_to_gt_prime"]),
            "mean_L_sim": _mean(stats["L_sim"] + stats["L_sim_prime"]),
            "mean_downscale_loss": _mean(stats["downscale_loss"] + stats["downscale_loss_prime"]),
        }
        summary = trainer.strategy.broadcast(summary, src=0)
        self._say(trainer, f"meta-epoch {k}: wrote {int(summary['generated'])} lookalikes, set size "
                           f"{int(summary['count'])}, mean θ(i, i_GT) {summary['mean_angle_to_gt']:.2f}°, "
                           f"mean L_sim {summary['mean_L_sim']:.4f} ({time.perf_counter() - start:.1f} s)")
        self.generations += 1
        return summary

    @staticmethod
    def _payload(record: Mapping[str, Any]) -> dict[str, Any]:
        """What crosses ranks: the index fields with PNG-encoded images, plus the statistics."""
        out: dict[str, Any] = {}
        for key in INDEX_FIELDS:
            value = record.get(key)
            out[key] = encode_png(value) if key in IMAGE_FIELDS and value is not None else value
        for key in _STAT_KEYS:
            out[key] = record.get(key)
        return out

    # -- one meta-epoch ------------------------------------------------------------------------------------------------

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, k: int) -> None:
        """Alg. 2 before meta-epoch k: α_thr, then (k ≥ 1) the lookalikes; barrier; ``siam_enabled``; refresh."""
        t0 = time.perf_counter()
        _sync_buffers(pl_module.backbone)
        result = self.compute_alpha_thr(trainer, pl_module)
        alpha = float(result["alpha_thr"])
        pl_module.alpha_thr = alpha
        self._say(trainer, f"meta-epoch {k}: α_thr = {alpha:.2f}° (CelebA-train same {result['same_mean']:.2f}° / "
                           f"diff {result['diff_mean']:.2f}°, accuracy {100 * result['accuracy']:.1f}%, "
                           f"{time.perf_counter() - t0:.1f} s)")
        self._pending = {"alpha_accuracy": result["accuracy"]}
        if k >= 1 and self.identities_per_meta_epoch > 0:
            summary = self.generate(trainer, pl_module, k, alpha)
            self.count = int(summary.pop("count"))
            self._pending.update(summary)
        trainer.strategy.barrier("lookalike_written")
        self.prepared.add(k)
        self.alpha_thrs[k] = alpha
        self._apply(trainer, pl_module, k, alpha)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, k: int, alpha: float) -> None:
        pl_module.alpha_thr = float(alpha)
        pl_module.siam_enabled = k >= 1
        self._refresh_reader(trainer)

    # -- Lightning hooks -----------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.dir is None:
            self.dir = Path(trainer.default_root_dir) / "lookalikes"
        for name in ("backbone", "alpha_thr", "siam_enabled"):
            if not hasattr(pl_module, name):
                raise AttributeError(f"LookalikeRefresh needs pl_module.{name} (see callbacks/lookalike.py)")
        self._input_size = int(getattr(pl_module.backbone, "input_size", 112))
        reader = self._reader(trainer)
        if reader is None:
            return
        if trainer.reload_dataloaders_every_n_epochs != 1:
            warnings.warn("LookalikeRefresh: set trainer.reload_dataloaders_every_n_epochs=1, otherwise a refreshed "
                          "lookalike set never reaches the train loader", stacklevel=2)
        root = getattr(reader, "root", "")
        if root is None:  # a reader left without a folder reads the callback's (the run directory's by default)
            reader.root = Path(self.dir)
            self._refresh_reader(trainer)
        elif root and Path(root).resolve() != self.dir.resolve():
            warnings.warn(f"LookalikeRefresh writes {self.dir} but the lookalike DataModule reads {root}",
                          stacklevel=2)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        k = self.meta_epoch_of(trainer.current_epoch)
        disk = self._disk_meta_epochs(trainer)
        if disk:
            self.count = trainer.strategy.broadcast(len(read_index(self.dir)) if trainer.is_global_zero else 0, src=0)
        self.prepared |= set(disk)
        for j, alpha in disk.items():
            self.alpha_thrs.setdefault(j, alpha)
        if k in self.alpha_thrs and (k == 0 or k in self.prepared):
            self._apply(trainer, pl_module, k, self.alpha_thrs[k])
            return
        if k >= 1:
            self._say(trainer, f"meta-epoch {k}: its lookalikes are missing (interrupted generation?); generating "
                               "them now")
        self.prepare(trainer, pl_module, k)
        if k >= 1:
            _rebuild_train_loader(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        k = self.meta_epoch_of(trainer.current_epoch)
        values = {"alpha_thr": float(pl_module.alpha_thr), "meta_epoch": float(k), "count": float(self.count),
                  **self._pending}
        self._pending = {}
        for key, value in values.items():
            pl_module.log(f"lookalike/{key}", value, on_step=False, on_epoch=True, batch_size=1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        following = trainer.current_epoch + 1
        if following % self.epochs_per_meta_epoch:
            return
        k = following // self.epochs_per_meta_epoch
        if k >= self.meta_epochs or k in self.prepared:
            return
        max_epochs = trainer.max_epochs
        if (max_epochs is not None and 0 <= max_epochs <= following) or trainer.should_stop:
            return  # no epoch left to train on it
        self.prepare(trainer, pl_module, k)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def _sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP keeps parameters equal, but each rank's last forward updated its own running statistics; F in eval mode
    would differ per rank. DDP itself broadcasts rank 0's buffers before the next forward, so this changes nothing
    for training and makes α_thr and every rank's lookalikes come from the one F that the checkpoint stores.
    """
    dist = _dist()
    if dist is None:
        return
    with torch.no_grad():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def _rebuild_train_loader(trainer: pl.Trainer) -> None:
    """Makes the fit loop build the train loader again before the coming epoch (it was built before
    ``on_train_start``, i.e. before a set generated there existed)."""
    loop = trainer.fit_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    if fetcher is not None:
        fetcher.teardown()
        loop._data_fetcher = None
    if hasattr(loop, "_combined_loader"):
        loop._combined_loader = None
