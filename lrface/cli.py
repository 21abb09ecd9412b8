"""The ``lrface`` command.

    lrface run NAME [key=value ...] [--print-config]     train / resume experiments/NAME.yaml
    lrface list                                          the experiments
    lrface sweep NAME [--count N]                        create a W&B sweep from experiments/sweeps/NAME.yaml + agent
    lrface slurm NAME --nodes N --gpus G [key=value ...] write (and submit) an sbatch script
    lrface data synth [--root R --scale S --seed N]      write the synthetic face world in the real formats
    lrface data pack SRC DST                             image folder → InsightFace train.rec/.idx/property
    lrface weights mtcnn [--dest DIR]                    MTCNN weights out of the facenet-pytorch wheel
    lrface weights real-photos [--dest DIR]              7 real photos out of the face-recognition sdist
    lrface embed --backbone r50 --weights W (--images DIR | --bin lfw.bin) --out emb.npy
    lrface evaluate --backbone r50 --weights W [--bin a.bin ...] [--survface ROOT] [--out results.json]
    lrface evaluate-multires --weights W [--branch 7=model_7.pt ...] [--bin ...] [--survface ROOT] [--out r.json]
                                                         BTNet / any backbone at 112&7 … 112&112, SurvFace per
                                                         branch-selection rule, FLOPs and stored parameters
    lrface upscale PHOTO ... --generator G [--features F.ckpt --reference R --race Black --attr Smiling=1] --out DIR
    lrface export-generator RUN/checkpoints/last.ckpt --out G.pt    g_ema of a StyleGAN2 training run
    lrface covariate-protocol --celeba ROOT [--simulate-scales 0.2 1] [--weights W] [--protocol-out p.npz]
                                                         RAN's TinyFace-style 1:1 covariate protocol (TAR@FAR)
    lrface mrgan-samples --weights mrgan_generator.pt --images DIR --out grid.png   Fig. 4-style MR-GAN grid
    lrface mad-evaluate RUN [key=value ...]              MAD's evaluation of a finished run again (its config, its
                                                         last.ckpt), e.g. after changing callbacks.mad_evaluation
    lrface judge-generator --generator G --features F.ckpt --celeba ROOT [--fairface ROOT] --out report

``--weights`` takes an official insightface ``backbone.pth``, a DDP-saved state_dict or one of our Lightning
checkpoints (``runs/<name>/<run>/checkpoints/*.ckpt``).

This is the one place in ``lrface`` that reaches the layers above it (the Lightning runner, the data writers). It
does so with ``importlib`` inside the sub-command, so ``import lrface`` stays free of Lightning.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def _cmd_run(args: argparse.Namespace) -> int:
    from lrface.config import compose, to_yaml

    cfg = compose(args.name, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    runner = importlib.import_module("lightning_modules.runner")
    runner.run(cfg)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from lrface.config import EXPERIMENTS_DIR

    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        if path.stem != "defaults":
            print(path.stem)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from lrface import sweep

    try:
        sweep.create_and_run(args.name, count=args.count, project=args.project, entity=args.entity)
    except sweep.SweepUnavailable as exc:
        print(f"lrface sweep: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_slurm(args: argparse.Namespace) -> int:
    from lrface.slurm import write_and_submit

    write_and_submit(args.name, args.nodes, args.gpus, args.overrides, submit=not args.no_submit,
                     partition=args.partition, time_limit=args.time, account=args.account)
    return 0


def _cmd_data(args: argparse.Namespace, rest: Sequence[str]) -> int:
    module = {"synth": "datamodules.synthetic", "pack": "datamodules.pack"}[args.what]
    return importlib.import_module(module).main(list(rest)) or 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from lrface.weights import fetch_mtcnn_weights, fetch_real_photos

    if args.what == "real-photos":
        print(fetch_real_photos(args.dest or "data/real_photos", sdist=args.wheel))
    else:
        print(fetch_mtcnn_weights(args.dest or "weights/mtcnn", wheel=args.wheel))
    return 0


def _backbone(args: argparse.Namespace):
    from lrface.weights import load_backbone, load_feature_extractor

    if args.backbone is None and args.weights and str(args.weights).endswith(".ckpt"):
        # one of our runs: the architecture (an IResNet, a timm trunk, a URLNet with its confidences) is in its config
        return load_feature_extractor(args.weights).F.backbone
    args.backbone = args.backbone or "r50"
    from lrface.nets.dlib_backbone import is_dlib_features

    if is_dlib_features(args.backbone):  # dlib's pretrained ResNet: 128-d, its .dat as --weights (default: packaged)
        return load_backbone(args.backbone, args.weights, input_size=args.image_size)
    kwargs = {"num_features": args.num_features}
    if args.widths:
        kwargs["widths"] = args.widths
    return load_backbone(args.backbone, args.weights, **kwargs)


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    evaluation = importlib.import_module("callbacks.evaluation")
    emb, names = evaluation.embed_files(_backbone(args), images=args.images, bin_path=args.bin,
                                        image_size=args.image_size, batch_size=args.batch_size, device=args.device)
    np.save(args.out, emb)
    names_path = os.path.splitext(args.out)[0] + ".names.txt"
    with open(names_path, "w") as f:
        f.write("\n".join(names) + "\n")
    print(f"{emb.shape[0]}×{emb.shape[1]} flip-sum embeddings → {args.out} (row names: {names_path})")
    return 0


def _cmd_evaluate_multires(args: argparse.Namespace) -> int:
    from lrface.weights import load_btnet

    mre = importlib.import_module("callbacks.multi_resolution_evaluation")
    branches = {}
    for item in args.branch:
        r, _, file = item.partition("=")
        if not r.isdigit() or not file:
            print(f"lrface evaluate-multires: --branch takes R=FILE (e.g. 7=model_7.pt); got {item!r}", file=sys.stderr)
            return 2
        branches[int(r)] = file
    weights = str(args.weights)
    if branches or _is_btnet_checkpoint(weights):
        model = load_btnet(weights, branches or None, share=args.share)
    else:
        model = _backbone(args)
    pairs = [tuple(int(v) for v in p.split("&")) for p in args.pairs]
    callback = mre.MultiResolutionEvaluation(args.bin, pairs, args.survface, batch_size=args.batch_size)
    results = callback.evaluate(model.to(args.device).eval(), args.device)
    return _print_results("evaluate-multires", results, mre.to_markdown, args.out)


def _cmd_covariate(args: argparse.Namespace) -> int:
    from lrface.covariate_protocol import build_covariate_protocol

    faces_mod = importlib.import_module("datamodules.covariate_faces")
    faces = faces_mod.CovariateFaces(args.celeba, split=args.split, simulate_scales=args.simulate_scales,
                                     seed=args.seed)
    protocol = build_covariate_protocol(faces.landmarks, faces.identities, low=args.low, high=args.high,
                                        positives_per_face=args.positives_per_face,
                                        negatives_per_face=args.negatives_per_face, seed=args.seed)
    print(f"{len(faces)} faces ({args.split}), {len(protocol.lr_faces)} LR faces ({args.low} < eye–mouth distance < "
          f"{args.high} px), {len(protocol.positives)} positive / {len(protocol.negatives)} negative pairs")
    if args.protocol_out:
        print(f"protocol → {protocol.save(args.protocol_out)}")
    if not args.weights:
        return 0
    metrics = faces_mod.evaluate_covariate_faces(_backbone(args).to(args.device).eval(), faces, protocol,
                                                 batch_size=args.batch_size, device=args.device)
    evaluation = importlib.import_module("callbacks.evaluation")
    return _print_results("covariate-protocol", {"tinyface_covariate": metrics}, evaluation.to_markdown, args.out)


def _cmd_mad_evaluate(args: argparse.Namespace) -> int:
    """Re-run a MAD run's end-of-fit evaluation from its ``config.yaml`` and ``checkpoints/last.ckpt`` (the overrides
    apply to that config), writing ``mad_evaluation.json`` / ``.md`` and the figures into the run directory again."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from lrface.config import instantiate

    run = Path(args.run)
    config, ckpt = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    for path in (config, ckpt):
        if not path.is_file():
            print(f"lrface mad-evaluate: {path} not found (expected a finished DisentangledAEModule run directory)",
                  file=sys.stderr)
            return 2
    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(list(args.overrides)))
    if "mad_evaluation" not in (cfg.get("callbacks") or {}):
        print(f"lrface mad-evaluate: {config} has no callbacks.mad_evaluation", file=sys.stderr)
        return 2
    cfg.module.init = None
    module = instantiate(cfg.module)
    module.load_net(ckpt)
    callback = instantiate(cfg.callbacks.mad_evaluation)
    results = callback.evaluate(module.net.to(args.device).eval(), module.hparams.phase != "ae", run)
    evaluation = importlib.import_module("callbacks.evaluation")
    print(f"MAD evaluation of {run}\n\n" + evaluation.to_markdown(results))
    return 0


def _cmd_mrgan_samples(args: argparse.Namespace) -> int:
    import torch

    from lrface.io import atomic_write_bytes
    from lrface.weights import load_mrgan_generator

    evaluation = importlib.import_module("callbacks.evaluation")
    from lrface.io import image_grid_png as grid_png
    generator = load_mrgan_generator(args.weights).to(args.device)
    from pathlib import Path

    paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in evaluation.IMAGE_SUFFIXES)
    if not paths:
        print(f"lrface mrgan-samples: {args.images}: no images", file=sys.stderr)
        return 2
    files = evaluation._ImageFiles(paths[:args.n], generator.image_size)
    faces = torch.stack([files[i]["image"] for i in range(len(files))]).to(args.device)
    index = torch.arange(len(faces), device=args.device) % len(generator.lr_sizes)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        out = generator(faces * 2 - 1, index)
    columns = [faces, (out["base"] + 1) / 2, (out["image"] + 1) / 2]
    if out.get("attention") is not None:
        columns.append(out["attention"].expand(-1, 3, -1, -1))
    grid = torch.stack(columns, 1).flatten(0, 1).clamp(0, 1).cpu()
    atomic_write_bytes(args.out, grid_png(grid, nrow=len(columns)))
    sizes = ", ".join(str(generator.lr_sizes[int(i)]) for i in index)
    print(f"{len(faces)} faces (input | down-sampled | MR-GAN{' | attention' if len(columns) == 4 else ''}; LR sides "
          f"{sizes}) → {args.out}")
    return 0


def _print_results(command: str, results: dict, to_markdown, out: str | None) -> int:
    """Print the evaluation as Markdown (and write it as JSON); 2 when there was nothing to evaluate."""
    import json

    if not results:
        print(f"lrface {command}: nothing to evaluate (give --bin and/or --survface)", file=sys.stderr)
        return 2
    print(to_markdown(results), end="")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _is_btnet_checkpoint(path: str) -> bool:
    if not path.endswith(".ckpt"):
        return False
    from lrface.weights import load_weights_file

    state = load_weights_file(path).get("state_dict") or {}
    return any(k.startswith("btnet.") for k in state)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    evaluation = importlib.import_module("callbacks.evaluation")
    backbone, results = _backbone(args), {}
    for path in args.bin:
        results[os.path.splitext(os.path.basename(path))[0]] = evaluation.evaluate_bin(
            backbone, path, image_size=args.image_size, batch_size=args.batch_size, device=args.device)
    if args.survface:
        results["qmul_survface"] = evaluation.evaluate_survface(
            backbone, args.survface, image_size=args.image_size, batch_size=args.batch_size, device=args.device,
            gallery=args.gallery)
    return _print_results("evaluate", results, evaluation.to_markdown, args.out)


def _cmd_upscale(args: argparse.Namespace) -> int:
    from lrface.upscale import upscale_main

    return upscale_main(args)


def _cmd_judge_generator(args: argparse.Namespace) -> int:
    from lrface.weights import load_feature_extractor, load_generator

    coherence = importlib.import_module("callbacks.generator_coherence")
    kwargs = {"widths": args.widths} if args.widths else {}
    nets = load_feature_extractor(args.features, backbone=args.backbone, **kwargs)
    report = coherence.generator_coherence(load_generator(args.generator), nets, args.celeba, args.fairface,
                                           n_samples=args.samples, seed=args.seed, race_conf=args.race_conf,
                                           truncation=args.truncation, device=args.device)
    print(coherence.write_report(report, args.out), end="")
    return 0


def _cmd_export_generator(args: argparse.Namespace) -> int:
    stylegan2 = importlib.import_module("lightning_modules.stylegan2")
    print(stylegan2.export_from_checkpoint(args.checkpoint, args.out))
    return 0


def _add_upscale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", nargs="+", help="photos (a face is detected and aligned) or thumbnails (used as is)")
    p.add_argument("--generator", required=True,
                   help="PULSE synthesis.pt (dir), rosinality StyleGAN2 .pt or NVlabs stylegan2-ada .pkl")
    p.add_argument("--gaussian-fit", default=None, help="PULSE's gaussian_fit.pt (default: computed)")
    p.add_argument("--fit-samples", type=int, default=100_000, help="mapping samples for the computed Gaussian fit")
    p.add_argument("--features", default=None, help="F (+ C_R, C_A): runs/<exp>/<run>/checkpoints/*.ckpt, a "
                   "backbone.pth (then give --backbone), or dlib (dlib's pretrained face ResNet; no C_R / C_A)")
    p.add_argument("--backbone", default=None, help="r18 ... r200 (overrides the run's config.yaml)")
    p.add_argument("--num-features", type=int, default=None, help="embedding size, with --backbone")
    p.add_argument("--widths", type=int, nargs=4, default=None, help="stage widths, with --backbone")
    p.add_argument("--reference", default=None, help="identity constraint L_sim: a photo of the person")
    p.add_argument("--race", default=None, help="race constraint L_race: White, Black, Latino_Hispanic, East_Asian, "
                   "Southeast_Asian, Indian, Middle_Eastern (case-insensitive)")
    p.add_argument("--attr", action="append", default=[], metavar="NAME=0|1",
                   help="attribute constraint L_att (CelebA names, repeatable): --attr Smiling=1 --attr Male=0")
    p.add_argument("--lambda-sim", type=float, default=1.0, help="λ1 of L_sim (0 switches it off)")
    p.add_argument("--lambda-race", type=float, default=1.0, help="λ2 of L_race")
    p.add_argument("--lambda-att", type=float, default=1.0, help="λ3 of L_att")
    p.add_argument("--alpha-thr", type=float, default=None, help="α_thr of Eq. 4, degrees (default: F's own: 65, the "
                   "official code's; 24.7 for dlib, its 0.6 same-person distance)")
    p.add_argument("--gamma-temp", type=float, default=None, help="γ_temp of Eq. 4, degrees (default: F's own: 10, the "
                   "official code's; 3.8 for dlib, scaled as its α_thr)")
    p.add_argument("--size", type=int, default=32, help="thumbnail side (must divide the generator resolution)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eps", type=float, default=2e-3, help="per-image stop when the downscale MSE is within eps")
    p.add_argument("--lr", type=float, default=0.4)
    p.add_argument("--restarts", type=int, default=1, help="random restarts per input (the best is kept)")
    p.add_argument("--loss", default="100*L2+0.05*GEOCROSS", help="PULSE loss string")
    p.add_argument("--seed", type=int, default=0, help="input i uses seed + i")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--out", default="upscaled", help="output directory")
    p.add_argument("--mtcnn-weights", default="weights/mtcnn", help="pnet.pt / rnet.pt / onet.pt directory")
    p.add_argument("--align", choices=["fixed", "mtcnn"], default="fixed",
                   help="how generated faces reach F: the generator's fixed template, or MTCNN landmarks")
    p.add_argument("--judges", choices=["auto", "on", "off"], default="auto",
                   help="independent judges in the metadata (dlib distance / verdict, gender kept vs the photo and "
                   "--reference): auto = when the judges extra is installed")
    p.add_argument("--judge-landmarks", choices=["template", "detect"], default="template",
                   help="where the judges see the face: known landmarks (MTCNN's, the generator's template) or "
                   "dlib's own detector (misses reported as unscored)")


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=None, help="r18 | r34 | r50 | r100 | r200 (iresnet50 also accepted) | dlib "
                   "(dlib's pretrained face ResNet, 128-d); default: the run's own architecture for our .ckpt files, "
                   "else r50")
    p.add_argument("--weights", default=None, help="backbone.pth / model.pt / a Lightning .ckpt of ours / dlib's .dat "
                   "(--backbone dlib; default: the face-recognition-models package's)")
    p.add_argument("--num-features", type=int, default=512)
    p.add_argument("--widths", type=int, nargs=4, default=None, help="stage widths if not the official ones")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrface", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train / resume an experiment")
    p.add_argument("name", help="experiments/<name>.yaml (or a path to a YAML file)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: module.lr=0.01 trainer.devices=8 (+new.key=1)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_cmd_run)

    sub.add_parser("list", help="list the experiments").set_defaults(func=_cmd_list)

    p = sub.add_parser("sweep", help="create a W&B sweep and start an agent (needs a W&B server)")
    p.add_argument("name")
    p.add_argument("--count", type=int, default=None, help="runs for this agent (default: until the sweep ends)")
    p.add_argument("--project", default=None)
    p.add_argument("--entity", default=None)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("slurm", help="write an sbatch script for multi-node DDP and submit it if sbatch exists")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node (= tasks per node = trainer.devices)")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default=None, help="SLURM time limit, e.g. 2-00:00:00")
    p.add_argument("--account", default=None)
    p.add_argument("--no-submit", action="store_true", help="only write the script")
    p.set_defaults(func=_cmd_slurm)

    p = sub.add_parser("data", help="dataset tools: synth, pack (see `lrface data synth --help`)", add_help=False)
    p.add_argument("what", choices=["synth", "pack"])
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("weights", help="fetch the pretrained parts registry packages ship")
    p.add_argument("what", choices=["mtcnn", "real-photos"])
    p.add_argument("--dest", default=None, help="default weights/mtcnn, data/real_photos")
    p.add_argument("--wheel", default=None, help="a local facenet_pytorch-*.whl (mtcnn) or "
                   "face_recognition-1.3.0.tar.gz (real-photos) instead of downloading it")
    p.set_defaults(func=_cmd_weights)

    p = sub.add_parser("embed", help="flip-sum embeddings of an image folder or a .bin set")
    _add_backbone_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a folder of face crops (searched recursively)")
    src.add_argument("--bin", help="an insightface .bin pair set (2P rows, pair order)")
    p.add_argument("--out", required=True, help="output .npy (N×D); names go to <out>.names.txt")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("evaluate", help=".bin sets and QMUL-SurvFace protocols for a backbone checkpoint")
    _add_backbone_args(p)
    p.add_argument("--bin", nargs="*", default=[], help=".bin pair sets (LFW, CFP-FP, AgeDB-30, ...)")
    p.add_argument("--survface", default=None, help="a QMUL-SurvFace release folder")
    p.add_argument("--gallery", default="prototypes", choices=["prototypes", "images"])
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("evaluate-multires", help="cross- / same-resolution pairs, SurvFace per branch selection "
                       "(BTNet or any backbone)")
    _add_backbone_args(p)
    p.add_argument("--branch", nargs="*", default=[], metavar="R=FILE",
                   help="BTNet from TNet (--weights) + the authors' per-resolution model.pt files")
    p.add_argument("--share", default="bn", choices=["bn", "copy"], help="with --branch: sharing of the tail")
    p.add_argument("--bin", nargs="*", default=[], help=".bin pair sets")
    p.add_argument("--pairs", nargs="*", default=["112&7", "112&14", "112&28", "7&7", "14&14", "28&28", "112&112"])
    p.add_argument("--survface", default=None, help="a QMUL-SurvFace release folder")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.set_defaults(func=_cmd_evaluate_multires)

    p = sub.add_parser("covariate-protocol", help="the TinyFace-style 1:1 covariate protocol (RAN supp. §3) on a "
                       "landmark-annotated CelebA-format set; with --weights, a model's TAR at FAR 1e-7 … 1e-1")
    _add_backbone_args(p)
    p.add_argument("--celeba", required=True, help="a CelebA root (aligned or in-the-wild images + landmarks)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--simulate-scales", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="shrink each image by a seeded factor in [LO, HI] first (sets whose faces are all large)")
    p.add_argument("--low", type=float, default=10.0)
    p.add_argument("--high", type=float, default=30.0)
    p.add_argument("--positives-per-face", type=int, default=20)
    p.add_argument("--negatives-per-face", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol-out", default=None, help="save the pairs (.npz)")
    p.add_argument("--out", default=None, help="also write the results as JSON")
    p.set_defaults(func=_cmd_covariate)

    p = sub.add_parser("mrgan-samples", help="a Fig. 4-style grid (input | down-sampled | MR-GAN | attention) from a "
                       "trained MR-GAN generator")
    p.add_argument("--weights", required=True, help="mrgan_generator.pt or an MR-GAN run's .ckpt")
    p.add_argument("--images", required=True, help="a folder of aligned face crops")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=_cmd_mrgan_samples)

    p = sub.add_parser("mad-evaluate", help="MAD's end-of-fit evaluation of a finished run again (its config and "
                       "last.ckpt)")
    p.add_argument("run", help="runs/<mad experiment>/<run>")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the run's config (e.g. "
                   "callbacks.mad_evaluation.n_tsne=1000)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_mad_evaluate)

    p = sub.add_parser("export-generator", help="g_ema of a stylegan2 training checkpoint → a generator .pt")
    p.add_argument("checkpoint", help="runs/<name>/<run>/checkpoints/*.ckpt of a StyleGAN2Module run")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_export_generator)

    p = sub.add_parser("judge-generator", help="how often F and a race classifier judge a generator's samples as "
                                               "coherent faces, side by side with real photographs")
    p.add_argument("--generator", required=True, help="PULSE .pt pair, rosinality .pt or NVlabs .pkl")
    p.add_argument("--features", required=True, help="F: a FeatureExtractorModule .ckpt (or backbone.pth + --backbone)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--widths", type=int, nargs=4, default=None)
    p.add_argument("--celeba", required=True, help="CelebA folder (test split: real reference and α_thr pairs)")
    p.add_argument("--fairface", default=None, help="FairFace folder (race probe when F has no race classifier)")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--race-conf", type=float, default=0.5)
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="coherence", help="report path stem (.json and .md are written)")
    p.set_defaults(func=_cmd_judge_generator)

    p = sub.add_parser("upscale", help="PULSE upscaling with identity / race / attribute constraints")
    _add_upscale_args(p)
    p.set_defaults(func=_cmd_upscale)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["data"]:
        args, rest = parser.parse_known_args(argv[:2])
        return _cmd_data(args, argv[2:])
    # overrides may come before or after options (`slurm NAME --nodes 2 k=v`): argparse's positional list stops at
    # the first option, so key=value leftovers are collected here
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from omegaconf.errors import OmegaConfBaseException

    from lrface.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, OmegaConfBaseException) as exc:  # config mistakes: a message, not a traceback
        print(f"lrface: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
